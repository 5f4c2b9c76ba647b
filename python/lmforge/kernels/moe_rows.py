"""The Mixture-of-Experts row gathers, each one pass over the rows it reads.

The reference is :mod:`lmforge.model.moe.permute` in plain PyTorch. Compiled by Inductor its
gather-and-sum runs at a quarter of the memory bandwidth (one H200, ``gpt2-124M`` with 64
experts top-8: 0.55 ms per layer for the combine, 0.50 ms for the gather's gradient, where the
bytes take ~0.15 ms) because the reduction over a token's ``k`` rows is laid out along the
wrong axis. Here one program takes one token and a block of columns and reads the ``k`` rows
it needs, contiguous along the columns (``k`` a compile-time constant, so that the loads of all
``k`` rows are issued together: on an H200 at ``N = 32768``, ``d = 768`` the gather-and-sum moves
4.1 TB/s at ``k = 8`` either way, and 3.8 against 3.0 TB/s at ``k = 2``,
``benches/results/moe-h200-20261129g/rows-bench.json``):

* :func:`gather_sum` — ``out[t] = Σ_j w[t, j] · src[idx[t, j]]`` (``w`` optional: 1), float32
  sums, written in ``src``' dtype: the combine's forward and the gather's gradient.
* :func:`combine_backward` — for each token ``t`` and choice ``j`` with ``r = idx[t, j]``:
  ``dhs[r] = g[t, j] · dy[t]`` and ``dg[t, j] = ⟨hs[r], dy[t]⟩`` in one pass that reads
  ``dy[t]`` and ``hs[r]`` once and writes ``dhs[r]`` once.

Both are custom operators (``lmforge::moe_gather_sum``, ``lmforge::moe_combine_backward``), so
``torch.compile`` calls them as opaque kernels.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["combine_backward", "gather_sum"]


@functools.cache
def _kernels():  # built on first use: importing Triton costs a second, and CPUs never need it
    import triton
    import triton.language as tl

    @triton.jit
    def gather_sum_rows(
        SRC, IDX, W, OUT, d, K: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr
    ):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < d
        # the first row starts the sum (not +0, so that with k = 1 the row is copied exactly,
        # the sign of a zero included)
        r0 = tl.load(IDX + t * K).to(tl.int64)
        acc = tl.load(SRC + r0 * d + cols, mask=inside, other=0.0).to(tl.float32)
        if HAS_W:
            acc = acc * tl.load(W + t * K).to(tl.float32)
        for j in tl.static_range(1, K):  # unrolled: the k rows' loads are all in flight at once
            r = tl.load(IDX + t * K + j).to(tl.int64)
            row = tl.load(SRC + r * d + cols, mask=inside, other=0.0).to(tl.float32)
            if HAS_W:
                row = row * tl.load(W + t * K + j).to(tl.float32)
            acc += row
        tl.store(OUT + t * d + cols, acc.to(OUT.dtype.element_ty), mask=inside)

    @triton.jit
    def combine_bwd_rows(HS, G, IDX, DY, DHS, DG, d, k, BLOCK: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        for j in range(k):
            r = tl.load(IDX + t * k + j).to(tl.int64)
            g = tl.load(G + t * k + j).to(tl.float32)
            dot = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, d, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                inside = cols < d
                dy = tl.load(DY + t * d + cols, mask=inside, other=0.0).to(tl.float32)
                h = tl.load(HS + r * d + cols, mask=inside, other=0.0).to(tl.float32)
                tl.store(DHS + r * d + cols, (g * dy).to(DHS.dtype.element_ty), mask=inside)
                dot += h * dy
            tl.store(DG + t * k + j, tl.sum(dot, axis=0).to(DG.dtype.element_ty))

    return gather_sum_rows, combine_bwd_rows


def _block(d: int, cap: int) -> int:
    return min(cap, max(16, 1 << (d - 1).bit_length()))


@torch.library.custom_op("lmforge::moe_gather_sum", mutates_args=())
def gather_sum(src: Tensor, idx: Tensor, weights: Tensor | None) -> Tensor:
    """``out[t] = Σ_j weights[t, j] · src[idx[t, j]]`` (float32 sums, ``src``' dtype).

    Args:
        src: ``(R, d)`` rows.
        idx: int64 ``(N, k)`` row indices into ``src``.
        weights: ``(N, k)``, or ``None`` for plain sums.

    Returns:
        ``(N, d)`` in ``src``' dtype.
    """
    n, k = idx.shape
    d = src.shape[1]
    src, idx = src.contiguous(), idx.contiguous()
    weights = weights.contiguous() if weights is not None else None
    out = src.new_empty(n, d)
    if n == 0 or d == 0:
        return out
    if k == 0:
        return out.zero_()
    block = _block(d, 1024)
    grid = (n, -(-d // block))
    w = weights if weights is not None else idx  # unread when HAS_W is false
    _kernels()[0][grid](src, idx, w, out, d, K=k, HAS_W=weights is not None, BLOCK=block)
    return out


@gather_sum.register_fake
def _(src: Tensor, idx: Tensor, weights: Tensor | None) -> Tensor:
    return src.new_empty(idx.shape[0], src.shape[1])


@torch.library.custom_op("lmforge::moe_combine_backward", mutates_args=())
def combine_backward(hs: Tensor, gates: Tensor, idx: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of ``y[t] = Σ_j gates[t, j] · hs[idx[t, j]]``.

    Args:
        hs: ``(N·k, d)`` rows; ``idx`` a permutation of them.
        gates: ``(N, k)``.
        idx: int64 ``(N, k)``.
        grad: ``(N, d)``, d(loss)/dy.

    Returns:
        ``(d hs, d gates)``: ``(N·k, d)`` in ``hs``' dtype and ``(N, k)`` in ``gates``' dtype.
    """
    n, k = idx.shape
    d = hs.shape[1]
    hs, gates, idx, grad = (t.contiguous() for t in (hs, gates, idx, grad))
    dhs = torch.empty_like(hs)
    dg = torch.empty_like(gates)
    if n == 0:
        return dhs, dg
    if d == 0:
        return dhs, dg.zero_()
    _kernels()[1][(n,)](hs, gates, idx, grad, dhs, dg, d, k, BLOCK=_block(d, 2048))
    return dhs, dg


@combine_backward.register_fake
def _(hs: Tensor, gates: Tensor, idx: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(hs), torch.empty_like(gates)
