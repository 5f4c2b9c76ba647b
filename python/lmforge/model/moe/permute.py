"""Moving token rows into expert order and back, with backward passes that need no atomics.

Token-choice dispatch sorts the ``A = N·k`` assignments by expert. Two maps describe the sort:
``token_of_row`` (``(A,)``: the token of each sorted row) and its inverse ``rows_of_token``
(``(N, k)``: the sorted row of each token's ``j``-th choice). Each token appears in exactly
``k`` rows, so every gradient is a gather too:

* :func:`gather_rows` — ``xs = x[token_of_row]``; its gradient is ``Σ_j dxs[rows_of_token[t, j]]``
  (a gather and a sum over ``k``), where autograd's own would be a scatter-add (``index_add``,
  atomics on bf16 rows).
* :func:`combine_rows` — ``y_t = Σ_j g_{t,j} · hs[rows_of_token[t, j]]``, accumulated in float32;
  its gradients are ``dhs[r] = g_r · dy[token_of_row[r]]`` (a gather) and ``dg_{t,j} = ⟨hs[rows_of_
  token[t, j]], dy_t⟩``.

On CUDA both run as Triton kernels (:mod:`lmforge.kernels.moe_rows`, one program per token
reading its ``k`` rows along the columns), and so does the gather itself (the same kernel with
one row per output: Inductor's indexing kernel for it ran at ~2 TB/s, 194 µs a layer at
``gpt2-124M`` with 64 experts top-8). Elsewhere each is one expression of indexing,
multiplication and a sum, which ``torch.compile`` (Inductor) turns into one kernel that reads
the gathered rows once and never stores the ``(N, k, d)`` gathered tensor (per MoE layer at
``gpt2-124M`` batch 32 × 1024 with top-8, that tensor is 400 MB in bf16). Eagerly (no
compiler) the sums are batched matmuls over the gathered rows, which PyTorch cannot fuse but
which at least accumulate in float32 without a float32 copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.kernels import moe_rows, use_triton

__all__ = ["combine_rows", "gather_rows", "sort_maps"]


def sort_maps(order: Tensor, n_tokens: int, k: int) -> tuple[Tensor, Tensor]:
    """The two maps of a sort of choice-major assignments (``a = j·N + t``).

    Args:
        order: int64 ``(N·k,)``, ``order[r]`` the assignment that lands in sorted row ``r``.
        n_tokens: ``N``.
        k: choices per token.

    Returns:
        ``(token_of_row, rows_of_token)``: int64 ``(N·k,)`` and ``(N, k)``.
    """
    token_of_row = order % n_tokens
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return token_of_row, inverse.view(k, n_tokens).t().contiguous()


def sum_dtype(values: torch.dtype, gates: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype the weighted sums accumulate in: float32, or wider when an input is."""
    return torch.promote_types(torch.promote_types(values, torch.float32), gates)


def _kernel_ok(rows: Tensor, gates: Tensor | None = None) -> bool:
    """Whether :mod:`lmforge.kernels.moe_rows` takes these tensors (CUDA, Triton on; float32
    sums, so float64 stays on the PyTorch path)."""
    if rows.dtype == torch.float64 or (gates is not None and gates.dtype != torch.float32):
        return False
    return use_triton(rows)


def _fused() -> bool:
    """Whether the compiler is tracing (then the gather-and-sum forms fuse into one kernel)."""
    return torch.compiler.is_compiling()


def _sum_rows(src: Tensor, rows_of_token: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``Σ_j src[rows_of_token[t, j]]`` per token, accumulated in float32 (or wider)."""
    if _kernel_ok(src):
        return moe_rows.gather_sum(src, rows_of_token, None).to(out_dtype)
    acc = sum_dtype(src.dtype)
    if _fused():
        return src[rows_of_token].to(acc).sum(1).to(out_dtype)
    ones = src.new_ones(rows_of_token.shape[0], 1, rows_of_token.shape[1])
    return torch.bmm(ones, src[rows_of_token]).squeeze(1).to(out_dtype)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, token_of_row: Tensor, rows_of_token: Tensor) -> Tensor:
        ctx.save_for_backward(rows_of_token)
        if _kernel_ok(x):  # the row kernel with one row per output: a copy (exact)
            return moe_rows.gather_sum(x, token_of_row.unsqueeze(1), None)
        return x[token_of_row]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (rows_of_token,) = ctx.saved_tensors
        return _sum_rows(grad, rows_of_token, grad.dtype), None, None


class _CombineRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hs: Tensor, gates: Tensor, token_of_row: Tensor, rows_of_token: Tensor
    ) -> Tensor:
        ctx.save_for_backward(hs, gates, token_of_row, rows_of_token)
        if _kernel_ok(hs, gates):
            return moe_rows.gather_sum(hs, rows_of_token, gates)
        acc = sum_dtype(hs.dtype, gates.dtype)
        if _fused():
            y = (hs[rows_of_token].to(acc) * gates.to(acc).unsqueeze(-1)).sum(1)
        else:
            y = torch.bmm(gates.to(hs.dtype).unsqueeze(1), hs[rows_of_token]).squeeze(1)
        return y.to(hs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hs, gates, token_of_row, rows_of_token = ctx.saved_tensors
        if _kernel_ok(hs, gates):
            dhs, dg = moe_rows.combine_backward(hs, gates, rows_of_token, grad)
            return dhs, dg, None, None
        acc = sum_dtype(hs.dtype, gates.dtype)
        grad_hs = grad_gates = None
        if ctx.needs_input_grad[0]:
            gate_of_row = torch.empty_like(gates.reshape(-1))
            gate_of_row[rows_of_token.reshape(-1)] = gates.reshape(-1)
            grad_hs = (grad[token_of_row].to(acc) * gate_of_row.to(acc).unsqueeze(-1)).to(hs.dtype)
        if ctx.needs_input_grad[1]:
            if _fused():
                prod = hs[rows_of_token].to(acc) * grad.to(acc).unsqueeze(1)
                grad_gates = prod.sum(-1).to(gates.dtype)
            else:
                rows = hs[rows_of_token]  # (N, k, d) · (N, d, 1)
                grad_gates = torch.bmm(rows, grad.to(rows.dtype).unsqueeze(-1)).squeeze(-1)
                grad_gates = grad_gates.to(gates.dtype)
        return grad_hs, grad_gates, None, None


def gather_rows(x: Tensor, token_of_row: Tensor, rows_of_token: Tensor) -> Tensor:
    """``x[token_of_row]``: ``(N, d)`` tokens into ``(N·k, d)`` expert order.

    Args:
        x: ``(N, d)``.
        token_of_row: int64 ``(N·k,)`` (:func:`sort_maps`).
        rows_of_token: int64 ``(N, k)``, its inverse.
    """
    return _GatherRows.apply(x, token_of_row, rows_of_token)


def combine_rows(hs: Tensor, gates: Tensor, token_of_row: Tensor, rows_of_token: Tensor) -> Tensor:
    """``y_t = Σ_j gates[t, j] · hs[rows_of_token[t, j]]`` in ``hs``' dtype (float32 sums).

    Args:
        hs: ``(N·k, d)`` the experts' outputs in sorted order.
        gates: ``(N, k)`` each token's gates (float32 or wider; receives a gradient).
        token_of_row: int64 ``(N·k,)`` (:func:`sort_maps`).
        rows_of_token: int64 ``(N, k)``.
    """
    return _CombineRows.apply(hs, gates, token_of_row, rows_of_token)
