"""Mixture-of-Experts: the MoE MLP, its routers, balancing, dispatch and upcycling.

:class:`MoEConfig` (``ModelConfig.moe``) turns a block's SwiGLU into an :class:`MoE`
(:func:`build_mlp`): a router (:mod:`.routers`: token-choice, sigmoid, expert-choice, hash),
grouped SwiGLU experts (:mod:`.experts`, dispatched by :mod:`.dispatch` with a grouped GEMM),
optional shared experts; the balance losses and the loss-free bias (:mod:`.balance`) and the
metrics (:mod:`.stats`) reach the trainer through the model's output and its
``after_optimizer_step`` hook. :func:`upcycle` builds an MoE model from a dense one.
"""

from lmforge.model.moe.balance import (
    batch_balance_offsets,
    device_balance_loss,
    expert_counts,
    load_balance_loss,
    router_z_loss,
    sequence_balance_loss,
    update_expert_bias,
)
from lmforge.model.moe.config import ROUTERS, MoEConfig
from lmforge.model.moe.dispatch import (
    dispatch_expert_choice,
    dispatch_token_choice,
    expert_swiglu,
    grouped_mm_supported,
    reference_moe,
)
from lmforge.model.moe.experts import GroupedExperts
from lmforge.model.moe.layer import MoE, MoEStats, build_mlp
from lmforge.model.moe.routers import (
    BiasedRouter,
    ExpertChoiceRouter,
    ExpertRouting,
    HashRouter,
    Router,
    SigmoidRouter,
    TokenChoiceRouter,
    TokenRouting,
    build_router,
    warn_if_noncausal,
)
from lmforge.model.moe.stats import collect_moe_stats
from lmforge.model.moe.upcycle import upcycle

__all__ = [
    "ROUTERS",
    "BiasedRouter",
    "ExpertChoiceRouter",
    "ExpertRouting",
    "GroupedExperts",
    "HashRouter",
    "MoE",
    "MoEConfig",
    "MoEStats",
    "Router",
    "SigmoidRouter",
    "TokenChoiceRouter",
    "TokenRouting",
    "build_mlp",
    "build_router",
    "collect_moe_stats",
    "device_balance_loss",
    "dispatch_expert_choice",
    "dispatch_token_choice",
    "batch_balance_offsets",
    "expert_counts",
    "expert_swiglu",
    "grouped_mm_supported",
    "load_balance_loss",
    "reference_moe",
    "router_z_loss",
    "sequence_balance_loss",
    "update_expert_bias",
    "upcycle",
    "warn_if_noncausal",
]
