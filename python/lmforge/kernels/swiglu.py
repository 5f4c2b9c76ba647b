"""The experts' SwiGLU on stacked ``[gate | up]`` rows, and its gradient, one pass each.

The reference is ``dispatch._swiglu``: ``silu(gate) * up`` of the two halves of each row of
``h13`` (the output of the experts' stacked ``w1``/``w3`` GEMM). Compiled by Inductor its
forward runs at memory bandwidth, but its backward, which must write the gradient of both
halves into one ``(rows, 2·d_ff)`` tensor, ran at half of it (one H200, 64 experts top-8 or 8
experts top-2 at ``gpt2-124M`` batch 32: 275 µs a layer for 670 MB, where the dense MLP's
backward moves as many bytes in 157 µs). Here each program takes a tile of rows and columns of
``d_ff``, loads the gate, the up value and the output gradient once, and writes both halves of
the input gradient:

``h = g·σ(g)·u``; ``dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))``, ``du = dh·g·σ(g)``, in float32.

The op is ``lmforge::swiglu`` with its own backward (``lmforge::swiglu_backward``), opaque to
``torch.compile``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["swiglu"]


@functools.cache
def _kernels():  # built on first use
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_fwd(H13, H, rows, f, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = (r[:, None] < rows) & (c[None, :] < f)
        base = H13 + r[:, None] * (2 * f) + c[None, :]
        g = tl.load(base, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(base + f, mask=inside, other=0.0).to(tl.float32)
        h = g * tl.sigmoid(g) * u
        tl.store(H + r[:, None] * f + c[None, :], h.to(H.dtype.element_ty), mask=inside)

    @triton.jit
    def swiglu_bwd(H13, DH, D13, rows, f, ROWS: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = (r[:, None] < rows) & (c[None, :] < f)
        at = r[:, None] * (2 * f) + c[None, :]
        g = tl.load(H13 + at, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(H13 + at + f, mask=inside, other=0.0).to(tl.float32)
        dh = tl.load(DH + r[:, None] * f + c[None, :], mask=inside, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        dg = dh * u * s * (1.0 + g * (1.0 - s))
        du = dh * g * s
        tl.store(D13 + at, dg.to(D13.dtype.element_ty), mask=inside)
        tl.store(D13 + at + f, du.to(D13.dtype.element_ty), mask=inside)

    return swiglu_fwd, swiglu_bwd


def _check(h13: Tensor) -> None:
    if h13.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"swiglu computes in float32: float32/16 or bfloat16, not {h13.dtype}")
    width = h13.shape[-1]
    if width < 2 or width % 2:
        raise ValueError(f"swiglu needs [gate | up] rows of even width >= 2, got {width}")


def _grid(rows: int, f: int) -> tuple[tuple[int, int], int, int]:
    block = min(1024, max(16, 1 << (f - 1).bit_length()))
    tile_rows = max(1, 2048 // block)
    return (-(-rows // tile_rows), -(-f // block)), tile_rows, block


@torch.library.custom_op("lmforge::swiglu", mutates_args=())
def swiglu(h13: Tensor) -> Tensor:
    """``silu(gate) * up`` of ``h13 = [gate | up]`` along the last dimension.

    Args:
        h13: ``(..., 2·d_ff)``, float32, float16 or bfloat16 (the arithmetic is float32).

    Returns:
        ``(..., d_ff)`` in ``h13``'s dtype.

    Raises:
        ValueError: an odd or zero last dimension, or another dtype.
    """
    _check(h13)
    f = h13.shape[-1] // 2
    flat = h13.contiguous().view(-1, 2 * f)
    out = flat.new_empty(flat.shape[0], f)
    if flat.shape[0] and f:
        grid, tile_rows, block = _grid(flat.shape[0], f)
        _kernels()[0][grid](flat, out, flat.shape[0], f, ROWS=tile_rows, BLOCK=block)
    return out.view(*h13.shape[:-1], f)


@swiglu.register_fake
def _(h13: Tensor) -> Tensor:
    return h13.new_empty(*h13.shape[:-1], h13.shape[-1] // 2)


@torch.library.custom_op("lmforge::swiglu_backward", mutates_args=())
def swiglu_backward(h13: Tensor, grad: Tensor) -> Tensor:
    """The gradient of :func:`swiglu` with respect to ``h13``, both halves in one pass
    (contiguous, in ``h13``'s dtype)."""
    _check(h13)
    f = h13.shape[-1] // 2
    flat = h13.contiguous().view(-1, 2 * f)
    dh = grad.contiguous().view(-1, f)
    out = torch.empty_like(flat)
    if flat.shape[0] and f:
        grid, tile_rows, block = _grid(flat.shape[0], f)
        _kernels()[1][grid](flat, dh, out, flat.shape[0], f, ROWS=tile_rows, BLOCK=block)
    return out.view(h13.shape)


@swiglu_backward.register_fake
def _(h13: Tensor, grad: Tensor) -> Tensor:
    return h13.new_empty(h13.shape)  # contiguous, as the op's output


def _setup(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx: Any, grad: Tensor) -> Tensor:
    (h13,) = ctx.saved_tensors
    return swiglu_backward(h13, grad)


swiglu.register_autograd(_backward, setup_context=_setup)
