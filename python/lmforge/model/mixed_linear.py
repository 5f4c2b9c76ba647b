"""``mixed_linear``: ``F.linear`` under bf16 autocast, its weight gradient written in float32.

With float32 master weights under CUDA autocast, ``F.linear(x, w)`` casts ``x`` and ``w`` to
bf16 and multiplies. In the backward pass the weight gradient ``dW = dyᵀ x`` is a bf16 GEMM
output (float32 accumulation, rounded to bf16 when stored) that autograd then casts to float32
for ``w.grad``: one more pass over every weight gradient each step (read bf16, write float32),
and the gradient rounded to 8 bits of mantissa on the way.

Here the same tensor-core GEMM writes ``dW`` in float32 directly (``torch.mm(..., out_dtype=
torch.float32)``): no cast pass, and no rounding of the gradient. The output and the input's
gradient are autocast's own operations (bf16 GEMMs; the input's gradient cast back to the
input's dtype), and the saved tensors are the same bf16 copies autocast saves, so memory does
not change. Measured on one H200 (``gpt2-124M``, batch 32 × 1,024, compiled, one call,
alternated runs): 64.4 → 63.7 ms a step; nothing measurable at the ``1B`` shape.

Only the CUDA bf16 autocast case with a float32 weight that needs a gradient takes this path,
on a PyTorch whose ``torch.mm`` has ``out_dtype`` (2.8 and later; a CUDA kernel); everything else
is ``F.linear``. So FSDP with bf16 parameters in compute (the weight is bf16 there) and
``LoRALinear`` (its own forward; its base weight is frozen) keep autocast's path. The backward
pass is not itself differentiable (``create_graph=True`` through it gives gradients that
cannot be differentiated again: an error, not a wrong value).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["mixed_linear"]

_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()
"""Whether ``torch.mm`` takes ``out_dtype`` (PyTorch 2.8 and later)."""


def _mm_float32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of bf16 matrices accumulated and written in float32."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())  # the same exact products, for CPU tests


class _MixedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            ctx.save_for_backward(xc, wc)
            ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
            return F.linear(xc, wc)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        xc, wc = ctx.saved_tensors
        grad = grad.to(wc.dtype)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = (grad @ wc).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            g2, x2 = grad.reshape(-1, grad.shape[-1]), xc.reshape(-1, xc.shape[-1])
            dw = _mm_float32(g2.t(), x2).to(ctx.w_dtype)
        return dx, dw, None


def mixed_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x Wᵀ``: :class:`_MixedLinear` under CUDA bf16 autocast for a float32 weight that
    needs a gradient, else ``F.linear``.

    Args:
        x: ``(..., d_in)``.
        weight: ``(d_out, d_in)``.
    """
    if (
        _MM_OUT_DTYPE
        and x.is_cuda
        and weight.dtype == torch.float32
        and weight.requires_grad
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled("cuda")
        and torch.get_autocast_dtype("cuda") == torch.bfloat16
    ):
        return _MixedLinear.apply(x, weight, torch.bfloat16)
    return F.linear(x, weight)
