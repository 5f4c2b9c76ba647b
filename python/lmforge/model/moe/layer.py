"""``MoE``: the Mixture-of-Experts MLP that replaces a block's SwiGLU, and ``build_mlp``.

``y = Σ_{e ∈ routed(x)} g_e(x) · expert_e(x) + shared(x)`` (DeepSeekMoE, Dai et al. 2024, eq. 9
with ``n_shared_experts`` always-on experts): a router (:mod:`.routers`) decides, the grouped
experts (:mod:`.experts`, :mod:`.dispatch`) compute, and the shared experts — ``n_shared``
SwiGLUs of width ``expert_d_ff``, stored as one SwiGLU of width ``n_shared · expert_d_ff``,
which is the same function — add their part.

The layer returns only its output, so a block's signature does not change. What the balance
losses and metrics need (the routing, the counts, the dropped fraction) is left in
:class:`MoEStats` on the layer and collected by the model after the forward pass
(:func:`~lmforge.model.moe.stats.collect_moe_stats`), which turns it into weighted losses and
metrics only when a loss is wanted. The tensors stay in the autograd graph, so the losses'
gradients reach the router, also through activation checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmforge.model.layers import SwiGLU
from lmforge.model.moe.balance import expert_counts
from lmforge.model.moe.config import MoEConfig
from lmforge.model.moe.experts import GroupedExperts
from lmforge.model.moe.routers import BiasedRouter, ExpertRouting, TokenRouting, build_router

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig

__all__ = ["MoE", "MoEStats", "build_mlp"]


@dataclass
class MoEStats:
    """What one forward pass of one MoE layer leaves for the losses and metrics.

    Attributes:
        layer_idx: the block's index.
        routing: the router's decision (its ``probs``/``logits`` carry gradients).
        counts: int64 ``(E,)`` assignments per expert, before capacity dropping.
        dropped: 0-d fraction of assignments (token-choice) or tokens (expert-choice) dropped.
        batch: the ``(batch, seq)`` shape of the tokens (for the sequence-wise loss).
    """

    layer_idx: int
    routing: TokenRouting | ExpertRouting
    counts: Tensor
    dropped: Tensor
    batch: tuple[int, int]


class MoE(nn.Module):
    """A Mixture-of-Experts MLP (routed SwiGLU experts plus optional shared ones).

    Args:
        config: the model config (``config.moe`` must be set).
        layer_idx: the block's index (names its metrics).
        out_init_scale: ``init_scale`` of the down projections.
        device: where to allocate.
        dtype: the weights' dtype.

    Raises:
        ValueError: ``config.moe`` is ``None``.
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_idx: int,
        *,
        out_init_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if config.moe is None:
            raise ValueError("MoE needs config.moe (an MoEConfig)")
        assert config.d_ff is not None
        moe: MoEConfig = config.moe
        self.moe, self.layer_idx = moe, layer_idx
        width = moe.expert_width(config.d_ff)
        self.router = build_router(
            moe, config.d_model, config.vocab_size, config.init_std, device, dtype
        )
        self.experts = GroupedExperts(
            moe.n_routed_experts,
            config.d_model,
            width,
            out_init_scale=out_init_scale,
            device=device,
            dtype=torch.bfloat16 if moe.expert_dtype == "bfloat16" else dtype,
        )
        self.shared: SwiGLU | None = None
        if moe.n_shared_experts:
            self.shared = SwiGLU(
                config.d_model,
                moe.n_shared_experts * width,
                out_init_scale=out_init_scale,
                device=device,
                dtype=dtype,
            )
        self.stats: MoEStats | None = None

    def forward(self, x: Tensor, token_ids: Tensor | None = None) -> Tensor:
        """``x: (batch, seq, d_model)`` → the same shape; ``token_ids: (batch, seq)`` for hash
        routing. Leaves :class:`MoEStats` in ``self.stats``."""
        batch = (x.shape[0], x.shape[1]) if x.ndim == 3 else (1, x.shape[0])
        flat = x.reshape(-1, x.shape[-1])
        ids = None if token_ids is None else token_ids.reshape(-1)
        routing = self.router(flat, ids)
        if isinstance(routing, TokenRouting):
            capacity = self.moe.capacity(flat.shape[0])
            counts = expert_counts(routing.experts, self.moe.n_routed_experts)
        else:
            capacity = None
            counts = torch.full_like(routing.tokens[:, 0], routing.tokens.shape[1])
        y, dropped = self.experts(
            flat, routing, capacity, counts if isinstance(routing, TokenRouting) else None
        )
        if self.shared is not None:
            y = y + self.shared(flat)
        if isinstance(self.router, BiasedRouter) and self.training and torch.is_grad_enabled():
            unbalanced = routing.unbalanced_counts if isinstance(routing, TokenRouting) else None
            self.router.record_load(counts if unbalanced is None else unbalanced)
        self.stats = MoEStats(self.layer_idx, routing, counts, dropped, batch)
        return y.to(x.dtype).view_as(x)

    def pop_stats(self) -> MoEStats | None:
        """The last forward pass's :class:`MoEStats` (then forgotten)."""
        stats, self.stats = self.stats, None
        return stats


def build_mlp(
    config: ModelConfig,
    layer_idx: int,
    *,
    out_init_scale: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Block ``layer_idx``'s MLP: an :class:`MoE` where ``config.moe`` puts one, else SwiGLU."""
    assert config.d_ff is not None
    if config.moe is not None and config.moe.is_moe_layer(layer_idx):
        return MoE(config, layer_idx, out_init_scale=out_init_scale, device=device, dtype=dtype)
    return SwiGLU(
        config.d_model, config.d_ff, out_init_scale=out_init_scale, device=device, dtype=dtype
    )
