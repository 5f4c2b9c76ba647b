"""How many assignments each expert received, and where each lands in expert order.

The reference is ``balance.expert_counts``: ``zeros(E).scatter_add_(0, experts, ones)``. On a
GPU every one of the ``N·k`` assignments then adds to one of ``E`` counters, and the atomic adds
queue up on them (one H200, 64 experts top-8 at ``gpt2-124M`` batch 32: 61 µs a layer for 1 MB
of ids). Here each program counts a block of ids into a histogram of its own (``tl.histogram``:
atomics in the program's shared memory, not on global counters), writes it as one row of a
``(blocks, E)`` table, and the table's column sums are the counts — deterministic, and one
small reduction. Ids must lie in ``[0, E)`` (a router's output): others are dropped, where
the scatter-add would raise.

:func:`route_sort` goes on from the same table to a stable counting sort of the assignments by
expert, the dispatch's permutation: an assignment's row is its expert's first row, plus the
rows its expert got in earlier blocks (prefix sums over the table's columns), plus its rank
among the same expert's assignments in its own block. It replaces ``torch.argsort(stable=True)``
(a radix sort of eight passes: 64 µs a layer at 64 experts top-8) and the scatter that inverted
it. The ranks in a block are ``E`` prefix sums over the block: cheap for tens of experts, but
their cost grows with ``E`` (estimated on par with the radix sort near 250 experts), so the
dispatch uses it up to :data:`SORT_MAX_EXPERTS`.

The ops are ``lmforge::expert_counts`` and ``lmforge::route_sort``, opaque to ``torch.compile``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["MAX_BINS", "SORT_MAX_EXPERTS", "expert_counts", "route_sort"]

_BLOCK = 4096

MAX_BINS = 1024
"""The most experts the kernels count (a program's histogram has a bin for each)."""

SORT_MAX_EXPERTS = 128
"""The most experts for which the dispatch sorts with :func:`route_sort` rather than ``argsort``."""


@functools.cache
def _kernel():  # built on first use
    import triton
    import triton.language as tl

    @triton.jit
    def block_histograms(X, H, n, e, BLOCK: tl.constexpr, BINS: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ids = tl.load(X + offs, mask=offs < n, other=0).to(tl.int32)
        # positions past the end count into the last bin, which no expert has (BINS > e)
        ids = tl.where(offs < n, ids, BINS - 1)
        counts = tl.histogram(ids, BINS)
        bins = tl.arange(0, BINS)
        tl.store(H + pid.to(tl.int64) * e + bins, counts, mask=bins < e)

    @triton.jit
    def place_rows(X, BASE, INV, TOK, n, e, n_tokens, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        ids = tl.load(X + offs, mask=inside, other=0).to(tl.int32)
        ids = tl.where(inside, ids, -1)  # past the end: no expert
        rank = tl.zeros([BLOCK], dtype=tl.int32)
        for expert in range(e):
            hit = ids == expert
            rank = tl.where(hit, tl.cumsum(hit.to(tl.int32), 0) - 1, rank)
        base = tl.load(BASE + pid.to(tl.int64) * e + ids, mask=inside, other=0)
        row = base + rank.to(tl.int64)
        tl.store(INV + offs, row, mask=inside)
        tl.store(TOK + row, offs % n_tokens, mask=inside)

    return block_histograms, place_rows


def _check(n_experts: int, op: str) -> None:
    if not 1 <= n_experts <= MAX_BINS:
        raise ValueError(f"{op} takes 1 to {MAX_BINS} experts, got {n_experts}")


def _histograms(flat: Tensor, n_experts: int, block: int) -> Tensor:
    """Each ``block`` ids' counts per expert, int32 ``(blocks, E)``; ``flat`` non-empty."""
    blocks = -(-flat.numel() // block)
    table = torch.empty(blocks, n_experts, dtype=torch.int32, device=flat.device)  # all written
    bins = 1 << n_experts.bit_length()  # a power of two above n_experts - 1: one spare bin
    _kernel()[0][(blocks,)](flat, table, flat.numel(), n_experts, BLOCK=block, BINS=bins)
    return table


@torch.library.custom_op("lmforge::expert_counts", mutates_args=())
def expert_counts(experts: Tensor, n_experts: int) -> Tensor:
    """How many times each of ``n_experts`` experts appears in ``experts``.

    Args:
        experts: int64 ids in ``[0, n_experts)``, any shape.
        n_experts: ``E``.

    Returns:
        int64 ``(E,)``.

    Raises:
        ValueError: more than :data:`MAX_BINS` experts.
    """
    _check(n_experts, "expert_counts")
    flat = experts.reshape(-1).contiguous()
    if flat.numel() == 0:
        return torch.zeros(n_experts, dtype=torch.int64, device=flat.device)
    return _histograms(flat, n_experts, _BLOCK).sum(dim=0, dtype=torch.int64)


@expert_counts.register_fake
def _(experts: Tensor, n_experts: int) -> Tensor:
    return experts.new_empty(n_experts, dtype=torch.int64)


_SORT_BLOCK = 1024


@torch.library.custom_op("lmforge::route_sort", mutates_args=())
def route_sort(experts: Tensor, n_experts: int, n_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """The stable sort by expert of choice-major assignments, as the dispatch needs it.

    Args:
        experts: int64 ``(N·k,)``, the expert of assignment ``a = j·N + t`` (token ``t``'s
            ``j``-th choice), each in ``[0, E)`` (a router's output; not checked on the GPU).
        n_experts: ``E`` (at most :data:`MAX_BINS`).
        n_tokens: ``N``.

    Returns:
        ``(token_of_row, row_of_assignment, counts)``: int64 ``(N·k,)`` the token of each sorted
        row, int64 ``(N·k,)`` the sorted row of each assignment (``argsort``'s inverse), int64
        ``(E,)`` assignments per expert. Rows of one expert keep the assignments' order.

    Raises:
        ValueError: more than :data:`MAX_BINS` experts.
    """
    _check(n_experts, "route_sort")
    flat = experts.reshape(-1).contiguous()
    n = flat.numel()
    token_of_row = torch.empty(n, dtype=torch.int64, device=flat.device)
    rows = torch.empty(n, dtype=torch.int64, device=flat.device)
    if n == 0:
        return token_of_row, rows, torch.zeros(n_experts, dtype=torch.int64, device=flat.device)
    table = _histograms(flat, n_experts, _SORT_BLOCK)
    counts = table.sum(dim=0, dtype=torch.int64)
    base = table.cumsum(dim=0, dtype=torch.int64)
    base -= table  # rows each expert got in the blocks before this one
    base += counts.cumsum(0) - counts  # and the rows of the experts before it
    grid = (table.shape[0],)
    _kernel()[1][grid](flat, base, rows, token_of_row, n, n_experts, n_tokens, BLOCK=_SORT_BLOCK)
    return token_of_row, rows, counts


@route_sort.register_fake
def _(experts: Tensor, n_experts: int, n_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    n = experts.numel()
    return (
        experts.new_empty(n, dtype=torch.int64),
        experts.new_empty(n, dtype=torch.int64),
        experts.new_empty(n_experts, dtype=torch.int64),
    )
