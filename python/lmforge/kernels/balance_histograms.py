"""One round of in-batch balancing's measurements: each row's top-k and how far each expert is
from entering or leaving it, as per-expert histograms, in one pass over the scores.

The reference is :func:`lmforge.model.moe.balance.balance_histograms_reference` (a stable sort,
``torch.bucketize`` and a scatter-add); with ``torch.topk`` at ~100 µs a layer for the 8 MB of
scores of 32K tokens × 64 experts (one H200, see :mod:`.route_topk`) and a column-wise
``kthvalue`` at ~150 µs, three rounds of the exact PyTorch version took 2.4 ms a layer. Here
one program takes a tile of rows, picks each row's ``k`` best experts by repeated maxima (the
rows fit in registers, as in :mod:`.route_topk`), and adds every ``(row, expert)``'s bin to
one global ``(E, B)`` table of int32 counters (integer atomics: the result is deterministic and
equals the reference bin for bin): 59 µs for the 8,192 rows the rounds sample, 120 µs for 32K
(one H200, GPU time under CUDA graphs, ``benches/bench_balance.py``). A first version kept a
histogram per program (``tl.histogram`` over ``E·B`` = 4,096 bins a tile) and took 190 µs for
8,192 rows and 644 µs for 32K: ``tl.histogram``'s cost grows with its bins.

The op is ``lmforge::balance_histograms``, opaque to ``torch.compile``; its outputs are counts.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "LOG2_FIRST",
    "MAX_EXPERTS",
    "N_THRESHOLDS",
    "PER_OCTAVE",
    "balance_histograms",
    "thresholds",
]

MAX_EXPERTS = 64
"""The most experts the kernel takes (a tile of rows holds every expert's score in registers; 64
is the largest run on a GPU); beyond that the PyTorch reference runs."""

LOG2_FIRST = -20
PER_OCTAVE = 3
N_THRESHOLDS = 62
"""The bins' edges: ``t_j = 2^(LOG2_FIRST + j / PER_OCTAVE)`` for ``j < N_THRESHOLDS``, from
~1e-6 to ~1.26 in steps of 26%: sigmoid scores and softmax probabilities alike."""


def thresholds(device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """The bin edges, ascending, ``(N_THRESHOLDS,)``."""
    j = torch.arange(N_THRESHOLDS, device=device, dtype=torch.float64)
    return torch.exp2(LOG2_FIRST + j / PER_OCTAVE).to(dtype)


@functools.cache
def _kernel():  # built on first use
    import triton
    import triton.language as tl

    @triton.jit
    def band_tables(
        S,
        OFF,
        TH,
        TM,
        TG,
        n,
        e,
        LOG2_T0: tl.constexpr,
        PER: tl.constexpr,
        NT: tl.constexpr,
        K: tl.constexpr,
        E_PAD: tl.constexpr,
        ROWS: tl.constexpr,
        NB: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, E_PAD)
        off = tl.load(OFF + cols, mask=cols < e, other=0.0).to(tl.float32)
        rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
        real = (rows[:, None] < n) & (cols[None, :] < e)
        s = tl.load(S + rows[:, None] * e + cols[None, :], mask=real, other=0.0)
        s = s.to(tl.float32) + off[None, :]
        s = tl.where(s != s, float("inf"), s)  # NaN first, as torch.topk ranks it
        alive = real
        kth = tl.zeros([ROWS], dtype=tl.float32)
        for _ in tl.static_range(K):
            cand = tl.where(alive, s, float("-inf"))
            kth = tl.max(cand, axis=1)
            hit = alive & (cand == kth[:, None])
            pick = tl.min(tl.where(hit, cols[None, :], E_PAD), axis=1)
            alive = alive & (cols[None, :] != pick[:, None])
        rejected = tl.max(tl.where(alive, s, float("-inf")), axis=1)
        picked = real & (alive == 0)
        # picked: how far above the best unpicked; unpicked: how far below the k-th picked
        v = tl.where(picked, s - rejected[:, None], kth[:, None] - s)
        # its bin, how many edges are <= v (0..NT): guessed from log2, then corrected against
        # the edges themselves, so that it is exactly torch.bucketize(v, TH, right=True)
        guess = tl.floor((tl.log2(tl.maximum(v, 1e-30)) - LOG2_T0) * PER) + 1.0
        b = tl.minimum(tl.maximum(guess, 0.0), NT * 1.0).to(tl.int32)
        below = tl.load(TH + tl.maximum(b - 1, 0))
        b = tl.where((b > 0) & (v < below), b - 1, b)
        above = tl.load(TH + tl.minimum(b, NT - 1))
        b = tl.where((b < NT) & (v >= above), b + 1, b)
        b = tl.where(v != v, NT, b)  # NaN (from inf - inf) last, as torch.bucketize puts it
        where = cols[None, :] * NB + b
        ones = tl.full([ROWS, E_PAD], 1, dtype=tl.int32)
        tl.atomic_add(TM + where, ones, mask=picked)
        tl.atomic_add(TG + where, ones, mask=real & alive)

    return band_tables


@torch.library.custom_op("lmforge::balance_histograms", mutates_args=())
def balance_histograms(
    scores: Tensor, offsets: Tensor, edges: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Per expert, histograms of the picked rows' margins and the unpicked rows' gaps.

    Rows pick the top ``k`` of ``scores + offsets`` (as ``torch.topk``: ties to the lower
    index, NaN first). A picked ``(row, expert)``'s *margin* is its score minus the row's best
    unpicked score; an unpicked one's *gap* is the row's ``k``-th picked score minus its score.
    Both are binned by how many of the edges are at most the value
    (``torch.bucketize(v, edges, right=True)``).

    Args:
        scores: float32 ``(N, E)``.
        offsets: float32 ``(E,)``.
        edges: :func:`thresholds` (float32, on the scores' device).
        k: experts per row, ``1 <= k < E``.

    Returns:
        ``(margins, gaps)``: int64 ``(E, N_THRESHOLDS + 1)`` each, rows picked (unpicked) per
        expert and bin; a row's sum over the bins of ``margins`` is the expert's load.

    Raises:
        ValueError: scores not float32, ``k`` out of range, more than :data:`MAX_EXPERTS`
            experts, or edges that are not :func:`thresholds`' shape.
    """
    if scores.dtype != torch.float32:
        raise ValueError(f"balance_histograms takes float32 scores, got {scores.dtype}")
    n, e = scores.shape
    if not 1 <= k < e:
        raise ValueError(f"balance_histograms needs 1 <= k < {e} experts, got k={k}")
    if e > MAX_EXPERTS:
        raise ValueError(f"balance_histograms takes at most {MAX_EXPERTS} experts, got {e}")
    if edges.shape != (N_THRESHOLDS,):
        raise ValueError(f"balance_histograms needs the {N_THRESHOLDS} edges of thresholds()")
    e_pad = max(16, 1 << (e - 1).bit_length())
    nb = N_THRESHOLDS + 1
    rows = max(1, min(64, 4096 // e_pad))
    tm = torch.zeros(e_pad * nb, dtype=torch.int32, device=scores.device)
    tg = torch.zeros_like(tm)
    _kernel()[(max(1, -(-n // rows)),)](
        scores.contiguous(),
        offsets.float().contiguous(),
        edges.float().contiguous(),
        tm,
        tg,
        n,
        e,
        LOG2_T0=float(LOG2_FIRST),
        PER=float(PER_OCTAVE),
        NT=N_THRESHOLDS,
        K=k,
        E_PAD=e_pad,
        ROWS=rows,
        NB=nb,
    )
    margins = tm.view(e_pad, nb)[:e].to(torch.int64)
    gaps = tg.view(e_pad, nb)[:e].to(torch.int64)
    return margins.contiguous(), gaps.contiguous()


@balance_histograms.register_fake
def _(scores: Tensor, offsets: Tensor, edges: Tensor, k: int) -> tuple[Tensor, Tensor]:
    shape = (scores.shape[1], N_THRESHOLDS + 1)
    return scores.new_empty(shape, dtype=torch.int64), scores.new_empty(shape, dtype=torch.int64)
