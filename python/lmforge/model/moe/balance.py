"""Load balancing: the auxiliary losses of the Switch / DeepSeek line and the loss-free bias.

Notation: ``N`` tokens (``B`` sequences of ``T``), ``E`` routed experts, ``k`` experts per token,
``p_{t,i}`` the router's distribution over experts for token ``t`` (softmax probabilities, or
DeepSeek-V3's normalised sigmoid affinities ``s_{t,i} / Σ_j s_{t,j}``), ``count_i`` how many
tokens picked expert ``i`` (before any capacity dropping), ``P_i = (1/N) Σ_t p_{t,i}``.

* :func:`load_balance_loss` — Switch Transformer (Fedus et al. 2022, eq. 4–6), ``E · Σ_i f_i ·
  P_i`` with ``f_i = count_i / (N·k)`` the fraction of assignments. DeepSeekMoE's expert-level
  loss (Dai et al. 2024, eq. 12–14) is ``Σ_i f'_i P_i`` with ``f'_i = E · count_i / (k·N)``:
  the same number, so one function serves both. It is 1 when the load is uniform (whatever
  ``p``) and ``E`` when one expert takes every token with probability 1.
* :func:`device_balance_loss` — DeepSeek-V2 (eq. 23–25): experts split into ``G`` contiguous
  groups (devices); ``Σ_g f''_g P''_g`` with ``f''_g`` the mean of ``f'_i`` over the group and
  ``P''_g`` the sum of ``P_i`` over it. Balances devices while leaving experts within a device
  free.
* :func:`sequence_balance_loss` — DeepSeek-V3 (eq. 17–20): the expert-level loss computed per
  sequence and averaged, so no single sequence collapses onto a few experts.
* :func:`router_z_loss` — ST-MoE (Zoph et al. 2022, eq. 5): ``mean_t (log Σ_i exp z_{t,i})²``
  keeps router logits small, where float32 exponentials stay accurate.
* :func:`update_expert_bias` — auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3
  §2.1.2): ``b_i ← b_i + γ · sign(mean_j load_j − load_i)``; no gradient, no interference with
  the LM loss.
* :func:`batch_balance_offsets` — in-batch balancing (``MoEConfig.batch_load_cap``, in the
  spirit of BASE layers, Lewis et al. 2021: a balanced assignment in training, greedy top-k in
  inference): per-expert offsets to the selection scores, found on the current batch, that
  bring each expert's load within ``[mean/cap, cap·mean]``; no token is dropped. The bias
  corrects what persists from batch to batch; the offsets what one batch's documents add.

The counts carry no gradient; the losses reach the router through ``P``, as in the papers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmforge.kernels import moe_counts, use_triton
from lmforge.kernels.balance_histograms import MAX_EXPERTS, balance_histograms, thresholds

__all__ = [
    "device_balance_loss",
    "balance_histograms_reference",
    "batch_balance_offsets",
    "expert_counts",
    "load_balance_loss",
    "router_z_loss",
    "sequence_balance_loss",
    "update_expert_bias",
]


def expert_counts(experts: Tensor, n_experts: int) -> Tensor:
    """How many times each expert appears in ``experts`` (any shape of int64 ids).

    Returns:
        int64 ``(n_experts,)``.
    """
    flat = experts.reshape(-1)
    # per-block histograms (no atomics queueing on E global counters) for up to 1,024 bins;
    # beyond that (expert-choice counting N > 1,024 tokens) the scatter-add
    if n_experts <= moe_counts.MAX_BINS and use_triton(flat):
        return moe_counts.expert_counts(flat, n_experts)
    counts = torch.zeros(n_experts, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def load_balance_loss(probs: Tensor, experts: Tensor, counts: Tensor | None = None) -> Tensor:
    """Switch auxiliary loss = DeepSeek expert-level balance loss (unweighted).

    Args:
        probs: ``(N, E)`` router distribution.
        experts: int64 ``(N, k)`` selected experts.
        counts: int64 ``(E,)`` assignments per expert to use instead of counting ``experts``
            (under in-batch balancing, the loads before the offsets: those the router's own
            choices would give, which is what the loss should balance).

    Returns:
        A scalar, 1 at perfect balance.
    """
    n, k = experts.shape
    n_experts = probs.shape[-1]
    if counts is None:
        counts = expert_counts(experts, n_experts)
    f = counts.to(probs.dtype) / (n * k)
    return n_experts * (f * probs.mean(dim=0)).sum()


def device_balance_loss(
    probs: Tensor, experts: Tensor, n_groups: int, counts: Tensor | None = None
) -> Tensor:
    """DeepSeek device-level balance loss over ``n_groups`` contiguous groups (unweighted).

    Args:
        probs: ``(N, E)`` router distribution.
        experts: int64 ``(N, k)`` selected experts.
        n_groups: devices; must divide ``E``.
        counts: as in :func:`load_balance_loss`.

    Returns:
        A scalar.
    """
    n, k = experts.shape
    n_experts = probs.shape[-1]
    if counts is None:
        counts = expert_counts(experts, n_experts)
    f = n_experts * counts.to(probs.dtype) / (k * n)
    f_group = f.view(n_groups, -1).mean(dim=1)
    p_group = probs.mean(dim=0).view(n_groups, -1).sum(dim=1)
    return (f_group * p_group).sum()


def sequence_balance_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """DeepSeek-V3 sequence-wise balance loss, averaged over sequences (unweighted).

    Args:
        probs: ``(B, T, E)`` router distribution.
        experts: int64 ``(B, T, k)`` selected experts.

    Returns:
        A scalar.
    """
    b, t, k = experts.shape
    n_experts = probs.shape[-1]
    flat = experts.reshape(b, t * k)
    counts = torch.zeros(b, n_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=probs.dtype))
    f = n_experts * counts / (k * t)
    return (f * probs.mean(dim=1)).sum(dim=-1).mean()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss ``mean_t logsumexp(z_t)²`` (unweighted) of ``(N, E)`` logits."""
    return torch.logsumexp(logits, dim=-1).square().mean()


@torch.no_grad()
def update_expert_bias(bias: Tensor, load: Tensor, rate: float) -> None:
    """In place: ``bias += rate · sign(mean(load) − load)``.

    Args:
        bias: ``(E,)`` float selection bias.
        load: ``(E,)`` tokens each expert received over the step (all ranks).
        rate: γ, the update speed.
    """
    load = load.to(bias.dtype)
    bias.add_(torch.sign(load.mean() - load), alpha=rate)


def balance_histograms_reference(
    scores: Tensor, offsets: Tensor, edges: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """PyTorch reference of :func:`lmforge.kernels.balance_histograms.balance_histograms`: per
    expert, histograms (bins: how many ``edges`` are at most the value) of the margins of the
    rows that pick it among the top ``k`` of ``scores + offsets`` (score minus the row's best
    unpicked) and of the gaps of the rows that do not (the row's ``k``-th picked minus score).

    Returns:
        ``(margins, gaps)``: int64 ``(E, len(edges) + 1)`` each.
    """
    n_experts = scores.shape[1]
    shifted = scores + offsets
    shifted = torch.where(torch.isnan(shifted), float("inf"), shifted)
    # a stable sort: ties to the lower index, as the kernel (torch.topk's order among ties is
    # not specified)
    values, experts = shifted.sort(dim=-1, descending=True, stable=True)
    values, experts = values[:, : k + 1], experts[:, : k + 1]
    picked = torch.zeros_like(shifted, dtype=torch.bool).scatter_(1, experts[:, :k], True)
    bins = edges.numel() + 1
    column = torch.arange(n_experts, device=scores.device) * bins
    spare = n_experts * bins

    def histogram(value: Tensor, counted: Tensor) -> Tensor:
        where = torch.bucketize(value, edges, right=True) + column
        where = torch.where(counted, where, spare).reshape(-1)
        hist = torch.zeros(spare + 1, dtype=torch.int64, device=scores.device)
        hist.scatter_add_(0, where, torch.ones_like(where))
        return hist[:spare].view(n_experts, bins)

    margins = histogram(shifted - values[:, k:], picked)
    gaps = histogram(values[:, k - 1 : k] - shifted, ~picked)
    return margins, gaps


def _band_step(
    margins: Tensor, gaps: Tensor, edges: Tensor, high: int, low: int
) -> tuple[Tensor, Tensor]:
    """One round's offset change from the histograms, and each expert's load.

    An expert over ``high`` moves down by the smallest edge ``t`` at which at most ``high`` of
    its picked rows have a margin ``>= t`` (those keep it); one under ``low`` moves up by the
    smallest edge at which at least ``low`` rows are picked or have a gap ``< t`` (those join).
    Each is the smallest edge that reaches its target, so it moves at least the rows needed
    (up to the edges' 26% resolution more)."""
    load = margins.sum(dim=1)
    last = edges.numel() - 1
    at_least = margins.flip(1).cumsum(1).flip(1)[:, 1:]  # [:, j]: margin >= edges[j]
    cut = edges[(at_least > high).sum(dim=1).clamp_max(last)]
    closer = gaps.cumsum(1)[:, :-1]  # [:, j]: gap < edges[j]
    lift = edges[(load[:, None] + closer < low).sum(dim=1).clamp_max(last)]
    zero = torch.zeros_like(cut)
    step = torch.where(load > high, -cut, torch.where(load < low, lift, zero))
    return step, load


@torch.no_grad()
def batch_balance_offsets(
    scores: Tensor, top_k: int, cap: float, rounds: int = 2, sample_rows: int | None = 8192
) -> tuple[Tensor, Tensor]:
    """Per-expert offsets that bring every expert's share of the rows' top-k near ``[mean/cap,
    cap·mean]`` (``mean = N·k/E``).

    Each round takes the top-``k`` of ``scores + offsets`` per row. An expert chosen by more
    than ``ceil(cap·mean)`` rows has its offset lowered so that about that many rows keep it —
    those whose score for it is furthest above their best unselected expert; the others move
    to their next choice. An expert chosen by fewer than ``floor(mean/cap)`` rows has its
    offset raised so that about that many rows choose it — those closest to having chosen it,
    each dropping its ``k``-th choice. The distances are binned on a geometric grid
    (:func:`lmforge.kernels.balance_histograms.thresholds`, 26% steps), and each move is the
    smallest edge that reaches its target. Rows that move can push another expert out of the
    band; the next round corrects that from the new loads. Every row keeps ``k`` distinct
    experts, so nothing is dropped. Raising the idle experts is what makes a few rounds
    enough: capping alone moves rows onto the next-most-popular experts and needs many rounds
    when many experts are near the cap.

    The rounds read every ``N // sample_rows``-th row only (all of them when ``N <
    2·sample_rows``), starting mid-stride: the offsets are per expert, and a strided sample
    keeps every document's mix of experts, so the whole batch lands near the band too — on 32K
    rows of 32 documents (64 experts, top-8, ``cap`` 1.2) 1.20–1.21 from 8,192 sampled rows
    against 1.19 from all of them, at a quarter of the cost (4,096 rows: 1.22–1.29).

    Measured on skewed synthetic batches of 64 experts, top-8, ``cap`` 1.2
    (``tests/model/test_moe_batch_balance.py``): a collapsed router (one direction shared by
    every row; max/mean 3.0) comes to 1.35 / 1.23 / 1.21 after one / two / three rounds,
    documents that favour their own experts (2.28) to 1.22 / 1.20 / 1.20; on 32K rows through
    the sample, documents (max/mean 1.34–1.51) to 1.20–1.21 after one round already, unchanged
    by more, and a collapsed router (4.1) to 1.32 / 1.24 / 1.24. Two rounds are the default.

    On CUDA each round is one pass of a Triton kernel
    (:mod:`lmforge.kernels.balance_histograms`) and a few small ops; elsewhere the PyTorch
    reference (:func:`balance_histograms_reference`), which gives the same histograms.

    Args:
        scores: float ``(N, E)`` selection scores (already with the loss-free bias).
        top_k: experts per row.
        cap: the band's width (>= 1).
        rounds: rounds of correction.
        sample_rows: about how many rows the rounds read (``None``: all).

    Returns:
        ``(offsets, counts)``: float ``(E,)`` offsets to add to ``scores`` before the top-k,
        and int64 ``(E,)`` rows per expert of the plain top-k of ``scores`` (before any offset:
        what the loss-free bias learns from), counted on the sampled rows and scaled to ``N``.
    """
    n, n_experts = scores.shape
    offsets = torch.zeros(n_experts, dtype=scores.dtype, device=scores.device)
    if top_k >= n_experts:  # every row takes every expert: nothing to move
        return offsets, torch.full((n_experts,), n, dtype=torch.int64, device=scores.device)
    stride = max(1, n // sample_rows) if sample_rows else 1
    sample = scores[stride // 2 :: stride]  # mid-stride: not every sequence's first position
    m = sample.shape[0]
    mean = m * top_k / n_experts
    high = min(math.ceil(cap * mean), m)
    low = max(math.floor(mean / cap), 1)  # at least one row each, also when mean < cap
    edges = thresholds(scores.device, scores.dtype)
    fast = scores.dtype == torch.float32 and n_experts <= MAX_EXPERTS and use_triton(scores)
    histograms = balance_histograms if fast else balance_histograms_reference
    unbalanced: Tensor | None = None
    for _ in range(rounds):
        margins, gaps = histograms(sample, offsets, edges, top_k)
        step, load = _band_step(margins, gaps, edges, high, low)
        unbalanced = load if unbalanced is None else unbalanced
        offsets = offsets + step
    assert unbalanced is not None  # rounds >= 1
    if stride > 1:  # the sample's loads, scaled to the batch
        unbalanced = torch.round(unbalanced * (n / m)).to(torch.int64)
    return offsets, unbalanced
