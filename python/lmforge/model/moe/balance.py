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

The counts carry no gradient; the losses reach the router through ``P``, as in the papers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.kernels import moe_counts, use_triton

__all__ = [
    "device_balance_loss",
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


def load_balance_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """Switch auxiliary loss = DeepSeek expert-level balance loss (unweighted).

    Args:
        probs: ``(N, E)`` router distribution.
        experts: int64 ``(N, k)`` selected experts.

    Returns:
        A scalar, 1 at perfect balance.
    """
    n, k = experts.shape
    n_experts = probs.shape[-1]
    f = expert_counts(experts, n_experts).to(probs.dtype) / (n * k)
    return n_experts * (f * probs.mean(dim=0)).sum()


def device_balance_loss(probs: Tensor, experts: Tensor, n_groups: int) -> Tensor:
    """DeepSeek device-level balance loss over ``n_groups`` contiguous groups (unweighted).

    Args:
        probs: ``(N, E)`` router distribution.
        experts: int64 ``(N, k)`` selected experts.
        n_groups: devices; must divide ``E``.

    Returns:
        A scalar.
    """
    n, k = experts.shape
    n_experts = probs.shape[-1]
    f = n_experts * expert_counts(experts, n_experts).to(probs.dtype) / (k * n)
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
