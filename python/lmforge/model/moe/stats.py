"""From the MoE layers' :class:`~lmforge.model.moe.layer.MoEStats` to losses and metrics.

After a forward pass the model calls :func:`collect_moe_stats`, which pops each MoE layer's
stats and returns

* the **weighted balance losses** summed over layers (each layer has its own loss, as in Switch
  and DeepSeek), to be added to the LM loss, and their detached parts by name for
  ``ModelOutput.losses``: ``moe_aux`` (Switch = DeepSeek expert-level), ``moe_device``,
  ``moe_seq_aux``, ``moe_z`` — only the ones with a weight > 0;
* **metrics** (detached 0-d tensors, and one 1-D ``load``; no host sync), per MoE layer ``i``
  under ``moe/L{i}/``: ``max_load_ratio`` (the busiest expert's assignments over the mean; 1
  is perfect balance), ``unbalanced_max_load_ratio`` (the same before in-batch balancing, when
  ``batch_load_cap`` is set), ``dropped`` (fraction over capacity), ``router_entropy`` (mean
  over tokens of the router
  distribution's entropy, nats; ``log E`` is uniform), the unweighted ``aux_loss`` and
  ``z_loss`` (and ``device_loss``/``seq_aux_loss`` when weighted), ``bias_min``/``bias_max`` of
  the loss-free bias, and each expert's share of the assignments ``load`` — one ``(E,)``
  tensor (``log_expert_load``), which the metrics log writes as ``load/0``, ``load/1``, ...; as
  ``E`` separate 0-d tensors it made a compiled forward return ~800 outputs at 64 experts and
  12 layers, each handled on the host every step. Over all layers ``moe/max_load_ratio`` (the
  worst; ``moe/unbalanced_max_load_ratio`` likewise) and ``moe/dropped`` (the mean).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.model.moe.balance import (
    device_balance_loss,
    load_balance_loss,
    router_z_loss,
    sequence_balance_loss,
)
from lmforge.model.moe.config import MoEConfig
from lmforge.model.moe.layer import MoE, MoEStats
from lmforge.model.moe.routers import BiasedRouter, TokenRouting

__all__ = ["LOSS_NAMES", "collect_moe_stats"]

LOSS_NAMES = {
    "aux_loss": ("aux_loss_weight", "moe_aux"),
    "device_loss": ("device_loss_weight", "moe_device"),
    "seq_aux_loss": ("seq_aux_loss_weight", "moe_seq_aux"),
    "z_loss": ("z_loss_weight", "moe_z"),
}
"""Unweighted term → (its ``MoEConfig`` weight field, its name in ``ModelOutput.losses``)."""


def _terms(stats: MoEStats, moe: MoEConfig) -> dict[str, Tensor]:
    """The unweighted balance losses this routing has (with gradients)."""
    r = stats.routing
    terms: dict[str, Tensor] = {}
    if isinstance(r, TokenRouting) and r.probs is not None:
        # under in-batch balancing the expert- and device-level losses balance the router's own
        # choices (the loads before the offsets), not the capped ones, which are even by design;
        # the sequence-wise loss reads the routed experts (its per-sequence counts before the
        # offsets are not kept)
        before = r.unbalanced_counts
        terms["aux_loss"] = load_balance_loss(r.probs, r.experts, before)
        if moe.n_expert_groups > 1:
            terms["device_loss"] = device_balance_loss(
                r.probs, r.experts, moe.n_expert_groups, before
            )
        if moe.seq_aux_loss_weight:
            b, t = stats.batch
            probs, experts = r.probs.view(b, t, -1), r.experts.view(b, t, -1)
            terms["seq_aux_loss"] = sequence_balance_loss(probs, experts)
    if r.logits is not None:
        terms["z_loss"] = router_z_loss(r.logits)
    return terms


def _max_over_mean(counts: Tensor) -> Tensor:
    """The busiest expert's assignments over the mean (1 is perfect balance)."""
    counts = counts.float()
    return counts.max() / counts.mean().clamp_min(1e-9)


@torch.no_grad()
def _metrics(stats: MoEStats, terms: dict[str, Tensor], module: MoE) -> dict[str, Tensor]:
    prefix = f"moe/L{stats.layer_idx}/"
    counts = stats.counts.float()
    out = {
        "max_load_ratio": _max_over_mean(stats.counts),
        "dropped": stats.dropped.detach().float(),
    }
    routing = stats.routing
    if isinstance(routing, TokenRouting) and routing.unbalanced_counts is not None:
        out["unbalanced_max_load_ratio"] = _max_over_mean(routing.unbalanced_counts)
    probs = routing.probs
    if probs is not None:
        out["router_entropy"] = torch.special.entr(probs.detach()).sum(dim=-1).mean()
    for name, value in terms.items():
        if name in ("aux_loss", "z_loss") or getattr(module.moe, LOSS_NAMES[name][0]) > 0:
            out[name] = value.detach()
    router = module.router
    if isinstance(router, BiasedRouter) and router.expert_bias is not None:
        out["bias_min"], out["bias_max"] = router.expert_bias.min(), router.expert_bias.max()
    if module.moe.log_expert_load:
        out["load"] = counts / counts.sum().clamp_min(1.0)
    return {prefix + k: v for k, v in out.items()}


def collect_moe_stats(
    model: nn.Module, *, with_losses: bool = True
) -> tuple[Tensor | None, dict[str, Tensor], dict[str, Tensor]]:
    """Pop every MoE layer's stats and turn them into the balance loss and metrics.

    Args:
        model: the model whose forward pass just ran.
        with_losses: compute the losses and metrics; ``False`` only clears the stats (a forward
            pass without targets).

    Returns:
        ``(loss, losses, metrics)``: the weighted sum to add to the LM loss (``None`` when no
        weight is set or there is no MoE layer), its detached parts by name, and the metrics.
    """
    total: Tensor | None = None
    losses: dict[str, Tensor] = {}
    metrics: dict[str, Tensor] = {}
    ratios, unbalanced, dropped = [], [], []
    for module in model.modules():
        if not isinstance(module, MoE):
            continue
        stats = module.pop_stats()
        if stats is None or not with_losses:
            continue
        terms = _terms(stats, module.moe)
        for name, value in terms.items():
            field, key = LOSS_NAMES[name]
            weight = getattr(module.moe, field)
            if weight > 0:
                total = weight * value if total is None else total + weight * value
                part = weight * value.detach()
                losses[key] = losses[key] + part if key in losses else part
        layer = _metrics(stats, terms, module)
        metrics.update(layer)
        prefix = f"moe/L{stats.layer_idx}/"
        ratios.append(layer[prefix + "max_load_ratio"])
        dropped.append(layer[prefix + "dropped"])
        if prefix + "unbalanced_max_load_ratio" in layer:
            unbalanced.append(layer[prefix + "unbalanced_max_load_ratio"])
    if ratios:
        metrics["moe/max_load_ratio"] = torch.stack(ratios).max()
        metrics["moe/dropped"] = torch.stack(dropped).mean()
    if unbalanced:
        metrics["moe/unbalanced_max_load_ratio"] = torch.stack(unbalanced).max()
    return total, losses, metrics
