"""Routers: which experts see which tokens, and with what gate. One small class per scheme.

A router maps the flattened tokens ``x: (N, d_model)`` of a batch to a routing decision:

* :class:`TokenRouting` (token-choice, sigmoid, hash): each token picks ``k`` distinct experts,
  ``experts: (N, k)`` with ``gates: (N, k)``;
* :class:`ExpertRouting` (expert-choice): each expert picks ``C`` tokens, ``tokens: (E, C)``.

Design choices:

* **Router math in float32** (autocast off; float64 stays float64): the logits decide discrete
  choices and feed exponentials, where bf16's 8 bits of mantissa flip selections and bias the
  balance losses (Switch Transformer §2.4 "selective precision"; DeepSeek-V3 keeps the gate in
  fp32). The weight stays float32 too when the rest is stored in bf16 (``keeps_float32``).
* **Token-choice** (Shazeer et al. 2017; GShard): softmax over experts, top-k, gates = the
  selected probabilities, optionally renormalised to sum to 1 (Mixtral), times ``route_scale``.
* **Sigmoid affinities** (DeepSeek-V3, §2.1.2): ``s = sigmoid(logits)``; experts are *selected*
  on ``s + b`` (the load-balancing bias) but *gated* with the raw ``s``, normalised over the
  selected experts and times ``route_scale``, so the bias steers load without distorting the
  mixture. The balance losses read ``s / Σ s`` (DeepSeek-V3 eq. 19).
* **Auxiliary-loss-free bias** (Wang et al. 2024): token-choice and sigmoid routers with
  ``bias_update_rate > 0`` hold a persistent buffer ``expert_bias`` (checkpointed) and count the
  tokens each expert received during the training forward passes of a step. The model's
  ``after_optimizer_step`` hook all-reduces those counts over data-parallel ranks and moves the
  bias by ``γ · sign(mean load − load)`` (:func:`~lmforge.model.moe.balance.update_expert_bias`).
  Counting happens only in training mode with gradients on, so evaluation never moves it;
  activation checkpointing counts every token twice, which the sign ignores. Under DDP every
  rank computes the same update from the same summed counts, so the bias stays equal on all
  ranks (DDP's own buffer broadcast runs only at the first forward pass after a synchronised
  step, when the counters have just been zeroed, so it never clobbers a partial count).
* **In-batch balancing** (``MoEConfig.batch_load_cap``; BASE layers, Lewis et al. 2021, in
  spirit): in training forward passes, per-expert offsets found on the batch keep each
  expert's load near the mean (:func:`~lmforge.model.moe.balance.batch_balance_offsets`);
  selection only, like the bias. Non-causal in training (a token's experts depend on the
  batch); evaluation and generation route with the bias alone, and ``generate`` warns. The
  bias counts the loads before the offsets (``TokenRouting.unbalanced_counts``), the routing
  inference will see.
* **Expert-choice** (Zhou et al. 2022): each expert takes its ``C`` highest-scoring tokens of the
  *whole batch*. That is non-causal in a decoder: whether token ``t`` gets an expert depends on
  tokens after it (and on the other sequences). Training is fine as a research baseline, but a
  model trained this way sees different routing in generation; ``generate`` warns.
* **Hash routing** (Roller et al. 2021): a fixed random table maps each token id to ``k``
  distinct experts (gates ``1/k``); no learned router, the classic baseline.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.kernels import use_triton
from lmforge.kernels.route_topk import route_topk
from lmforge.model.functional import at_least_float32
from lmforge.model.layers import trunc_normal_
from lmforge.model.moe.balance import batch_balance_offsets, update_expert_bias
from lmforge.model.moe.config import MoEConfig

__all__ = [
    "BiasedRouter",
    "ExpertChoiceRouter",
    "ExpertRouting",
    "HashRouter",
    "Router",
    "SigmoidRouter",
    "TokenChoiceRouter",
    "TokenRouting",
    "build_router",
    "warn_if_noncausal",
]


@dataclass
class TokenRouting:
    """Each token's ``k`` experts.

    Attributes:
        experts: int64 ``(N, k)``, distinct experts per row, in rank order.
        gates: ``(N, k)`` gate values (router dtype, float32 or wider).
        logits: ``(N, E)`` router logits (``None`` for hash routing), for the z-loss.
        probs: ``(N, E)`` the distribution the balance losses read (``None`` for hash routing).
        unbalanced_counts: int64 ``(E,)`` tokens per expert before in-batch balancing
            (``MoEConfig.batch_load_cap``; ``None`` when it did not run): what the loss-free
            bias and the balance losses learn from, since inference routes without the cap.
            Above 16,384 tokens an estimate: counted on the balancing's strided sample of
            ~8,192 and scaled to the batch.
    """

    experts: Tensor
    gates: Tensor
    logits: Tensor | None
    probs: Tensor | None
    unbalanced_counts: Tensor | None = None

    def assignments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(token, expert, gate)`` of every assignment, flattened choice-major: all first
        choices, then all second choices, ... (the priority order of capacity dropping)."""
        n, k = self.experts.shape
        tokens = torch.arange(n, device=self.experts.device).repeat(k)
        return tokens, self.experts.t().reshape(-1), self.gates.t().reshape(-1)


@dataclass
class ExpertRouting:
    """Each expert's ``C`` tokens.

    Attributes:
        tokens: int64 ``(E, C)``, distinct tokens per row.
        gates: ``(E, C)`` gate values.
        logits: ``(N, E)`` router logits.
        probs: ``(N, E)`` softmax over experts (each expert ranks tokens by its column).
    """

    tokens: Tensor
    gates: Tensor
    logits: Tensor
    probs: Tensor

    def assignments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(token, expert, gate)`` of every assignment, expert by expert."""
        e, c = self.tokens.shape
        experts = torch.arange(e, device=self.tokens.device).repeat_interleave(c)
        return self.tokens.reshape(-1), experts, self.gates.reshape(-1)


class Router(nn.Module):
    """A learned linear router: ``logits = x Wᵀ`` in float32, ``W: (E, d_model)``.

    Args:
        d_model: input width.
        moe: the MoE config.
        init_std: std of the truncated-normal init of ``weight``.
        device: where to allocate.
        dtype: the weight's dtype.
    """

    param_kind = "other"
    keeps_float32 = True
    """The weight stays float32 when the model's weights are stored in bf16
    (``train.param_dtype``; :func:`lmforge.model.layers.cast_parameters_`): the gate in fp32, as
    DeepSeek-V3 keeps it."""

    def __init__(
        self,
        d_model: int,
        moe: MoEConfig,
        init_std: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.moe, self.init_std = moe, init_std
        self.n_experts, self.top_k = moe.n_routed_experts, moe.top_k
        self.weight = nn.Parameter(torch.empty(self.n_experts, d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal with ``init_std`` (small: routing starts near uniform)."""
        trunc_normal_(self.weight, self.init_std)

    def logits(self, x: Tensor) -> Tensor:
        """Router logits ``(N, E)`` in float32 (or wider), autocast off."""
        with torch.autocast(x.device.type, enabled=False):
            xf = at_least_float32(x)
            return F.linear(xf, self.weight.to(xf.dtype))

    def extra_repr(self) -> str:
        return f"d_model={self.weight.shape[1]}, n_experts={self.n_experts}, top_k={self.top_k}"


class BiasedRouter(Router):
    """A top-k router (token-choice, sigmoid) with the optional auxiliary-loss-free bias."""

    expert_bias: Tensor | None
    expert_load: Tensor | None

    def __init__(
        self,
        d_model: int,
        moe: MoEConfig,
        init_std: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, moe, init_std, device, dtype)
        self.bias_update_rate = float(moe.bias_update_rate or 0.0)
        on = self.bias_update_rate > 0
        bias = torch.zeros(self.n_experts, device=device) if on else None
        load = torch.zeros(self.n_experts, dtype=torch.int64, device=device) if on else None
        self.register_buffer("expert_bias", bias, persistent=True)  # checkpointed
        self.register_buffer("expert_load", load, persistent=False)  # zero after every step

    def select(self, scores: Tensor) -> tuple[Tensor, Tensor | None]:
        """The ``top_k`` experts of each row of ``scores`` (plus the bias, when on), best first,
        and the counts before in-batch balancing (``None`` unless it ran).

        In-batch balancing (``moe.batch_load_cap``) runs in training forward passes with
        gradients on: :func:`~lmforge.model.moe.balance.batch_balance_offsets` adds per-expert
        offsets to the biased scores. On CUDA (float32 scores) one Triton pass
        (:mod:`lmforge.kernels.route_topk`) adds the bias and selects; elsewhere
        ``torch.topk``, which it equals."""
        bias = None if self.expert_bias is None else self.expert_bias.to(scores.dtype)
        cap = self.moe.batch_load_cap if self.training and torch.is_grad_enabled() else None
        unbalanced = None
        if cap is not None:
            biased = scores.detach() if bias is None else scores.detach() + bias
            offsets, unbalanced = batch_balance_offsets(biased, self.top_k, cap)
            bias = offsets if bias is None else bias + offsets
        if scores.dtype == torch.float32 and use_triton(scores):
            return route_topk(scores, bias, self.top_k), unbalanced
        if bias is not None:
            scores = scores + bias
        return scores.topk(self.top_k, dim=-1).indices, unbalanced

    def finish_gates(self, gates: Tensor) -> Tensor:
        if self.moe.normalize_gates:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return gates * self.moe.route_scale

    def record_load(self, counts: Tensor) -> None:
        """Add one forward pass's tokens per expert to the step's load (training only)."""
        if self.expert_load is not None:
            self.expert_load.add_(counts)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Move the bias toward balance with the step's load, all-reduced over ranks."""
        if self.expert_bias is None or self.expert_load is None:
            return
        load = self.expert_load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        update_expert_bias(self.expert_bias, load, self.bias_update_rate)  # no-op on no load
        load.zero_()


class TokenChoiceRouter(BiasedRouter):
    """Softmax over experts, each token's top-k (GShard; Mixtral with normalised gates)."""

    def forward(self, x: Tensor, token_ids: Tensor | None = None) -> TokenRouting:
        """``x: (N, d_model)`` → :class:`TokenRouting`; ``token_ids`` is unused."""
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        experts, unbalanced = self.select(probs)
        gates = self.finish_gates(probs.gather(1, experts))
        return TokenRouting(experts, gates, logits, probs, unbalanced)


class SigmoidRouter(BiasedRouter):
    """DeepSeek-V3 gating: sigmoid affinities, select on ``s + b``, gate with ``s``."""

    def forward(self, x: Tensor, token_ids: Tensor | None = None) -> TokenRouting:
        """``x: (N, d_model)`` → :class:`TokenRouting`; ``token_ids`` is unused."""
        logits = self.logits(x)
        scores = torch.sigmoid(logits)
        experts, unbalanced = self.select(scores)
        gates = self.finish_gates(scores.gather(1, experts))
        probs = scores / scores.sum(dim=-1, keepdim=True)
        return TokenRouting(experts, gates, logits, probs, unbalanced)


class ExpertChoiceRouter(Router):
    """Expert-choice routing (Zhou et al. 2022): each expert takes its top-``C`` tokens.

    **Non-causal.** The ``C`` tokens an expert takes are chosen among all ``N`` tokens of the
    batch, so a token's routing depends on later tokens of its own sequence (and on the other
    sequences). A decoder trained this way leaks a little information from the future through
    routing, and in generation (one token at a time) routes differently than in training:
    :func:`~lmforge.model.generate.generate` warns. ``C = ceil(capacity_factor · N · top_k /
    E)``; gates are the softmax probabilities (times ``route_scale``), not renormalised.
    """

    def __init__(
        self,
        d_model: int,
        moe: MoEConfig,
        init_std: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if moe.capacity_factor is None:
            raise ValueError("expert-choice routing needs moe.capacity_factor (default 1.0)")
        super().__init__(d_model, moe, init_std, device, dtype)

    def forward(self, x: Tensor, token_ids: Tensor | None = None) -> ExpertRouting:
        """``x: (N, d_model)`` → :class:`ExpertRouting`; ``token_ids`` is unused."""
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        capacity = self.moe.capacity(x.shape[0])
        assert capacity is not None  # checked in __init__
        gates, tokens = probs.topk(capacity, dim=0)  # (C, E): each column an expert's choice
        return ExpertRouting(tokens.t(), gates.t() * self.moe.route_scale, logits, probs)


class HashRouter(nn.Module):
    """Hash routing (Roller et al. 2021): token id → ``k`` fixed random distinct experts.

    The table is drawn from ``hash_seed`` with torch's CPU generator (the same on every
    machine), kept as a non-persistent buffer: it is rebuilt, not checkpointed.

    Args:
        vocab_size: rows of the table.
        moe: the MoE config.
        device: where to keep the table.
    """

    param_kind = "other"
    table: Tensor

    def __init__(self, vocab_size: int, moe: MoEConfig, device: torch.device | str | None) -> None:
        super().__init__()
        self.vocab_size, self.moe = vocab_size, moe
        self.n_experts, self.top_k = moe.n_routed_experts, moe.top_k
        table = torch.empty(vocab_size, self.top_k, dtype=torch.int64, device=device)
        self.register_buffer("table", table, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Rebuild the table from the seed: a random permutation of the experts per token id,
        of which the first ``k`` are taken."""
        g = torch.Generator().manual_seed(self.moe.hash_seed)
        noise = torch.rand(self.vocab_size, self.n_experts, generator=g)
        table = noise.argsort(dim=1)[:, : self.top_k]
        if self.table.device.type != "meta":
            self.table.copy_(table)

    def forward(self, x: Tensor, token_ids: Tensor | None = None) -> TokenRouting:
        """``x: (N, d_model)``, ``token_ids: (N,)`` → :class:`TokenRouting`.

        Raises:
            ValueError: without ``token_ids``.
        """
        if token_ids is None:
            raise ValueError("hash routing needs the token ids: call the MoE layer with token_ids")
        experts = self.table[token_ids.reshape(-1)]
        gate = self.moe.route_scale / self.top_k
        gates = torch.full(experts.shape, gate, dtype=at_least_float32(x).dtype, device=x.device)
        return TokenRouting(experts, gates, None, None)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, n_experts={self.n_experts}, top_k={self.top_k}"


def build_router(
    moe: MoEConfig,
    d_model: int,
    vocab_size: int,
    init_std: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The router ``moe.router`` names.

    Args:
        moe: the MoE config.
        d_model: the model width.
        vocab_size: the vocabulary (hash routing's table).
        init_std: the model's ``init_std`` (used unless ``moe.router_init_std`` is set).
        device: where to allocate.
        dtype: the router weight's dtype.
    """
    std = moe.router_init_std if moe.router_init_std is not None else init_std
    if moe.router == "hash":
        return HashRouter(vocab_size, moe, device)
    cls = {
        "token_choice": TokenChoiceRouter,
        "sigmoid": SigmoidRouter,
        "expert_choice": ExpertChoiceRouter,
    }[moe.router]
    return cls(d_model, moe, std, device, dtype)


def warn_if_noncausal(moe: MoEConfig | None) -> None:
    """Warn that expert-choice routing or in-batch balancing does not route in generation as in
    training."""
    if moe is None:
        return
    if moe.router == "expert_choice":
        warnings.warn(
            "this model uses expert-choice routing, which picks tokens over the whole batch "
            "(non-causal): in generation each step routes only the new tokens, so outputs "
            "differ from what training saw",
            stacklevel=3,
        )
    elif moe.batch_load_cap is not None:
        warnings.warn(
            "this model was trained with in-batch balancing (moe.batch_load_cap), which capped "
            "each expert's load over the whole batch (non-causal): generation routes with the "
            "bias alone, as evaluation does",
            stacklevel=3,
        )
