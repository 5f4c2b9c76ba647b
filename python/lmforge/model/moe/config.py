"""``MoEConfig``: the Mixture-of-Experts options of a model (``ModelConfig.moe``).

One frozen dataclass inside :class:`~lmforge.model.config.ModelConfig`, validated on
construction and saved with it. Every design choice of the Switch / GShard / DeepSeekMoE /
OLMoE line is a field here, so a run's ``config.json`` says exactly which MoE it trained.

Design choices and defaults:

* **Experts replace the MLP** (Shazeer et al. 2017; GShard, Lepikhin et al. 2020): SwiGLU
  experts of width ``expert_d_ff`` (default: the model's ``d_ff``). **Fine-grained
  segmentation** (DeepSeekMoE, Dai et al. 2024, §3.1) is ``expert_d_ff = d_ff / m`` with ``m``×
  more experts and ``m``× larger ``top_k``: the same FLOPs, far more combinations.
  ``n_shared_experts`` always-on experts sit beside the routed ones (DeepSeekMoE §3.2).
* **Which layers**: the first ``first_dense_layers`` blocks keep a dense MLP (DeepSeek-V3 keeps
  3); after them every ``moe_every``-th block is MoE (GShard and Switch interleave with 2):
  block ``i`` is MoE iff ``i >= first_dense_layers`` and ``(i - first_dense_layers) %
  moe_every == 0``.
* **Routers** (:mod:`.routers`): ``token_choice`` (softmax, top-k), ``sigmoid`` (DeepSeek-V3:
  select on score + bias, gates from the raw scores), ``expert_choice`` (Zhou et al. 2022; each
  expert takes its top tokens — non-causal, see its docstring), ``hash`` (Roller et al. 2021).
* **Balancing** (:mod:`.balance`), each with its own weight: ``aux_loss_weight`` is the
  Switch-Transformer auxiliary loss (Fedus et al. 2022, eq. 4), which is also DeepSeekMoE's
  expert-level balance loss (Dai et al. 2024, eq. 12–14: the same number, ``E/(K·T)`` folded
  into ``f_i``); ``device_loss_weight`` the DeepSeek device-level loss over ``n_expert_groups``
  contiguous groups of experts (DeepSeek-V2, eq. 23–25); ``seq_aux_loss_weight`` the
  sequence-wise loss of DeepSeek-V3 (eq. 17–20); ``z_loss_weight`` the router z-loss (ST-MoE,
  Zoph et al. 2022, eq. 5); ``bias_update_rate`` the auxiliary-loss-free bias (Wang et al. 2024;
  DeepSeek-V3 §2.1.2: ``b_i += γ·sign(mean load − load_i)`` after every step, used for
  selection only).
* **Router-dependent defaults** (``None`` resolves on construction, and the resolved value is
  what is saved): ``token_choice`` balances with the Switch loss at 0.01; ``sigmoid`` follows
  DeepSeek-V3 (sequence-wise loss 1e-4, no other loss) except for the bias rate, 0.01 rather
  than its 0.001; the others use none. Both routers collapse at initialisation (every token on
  the same ``k`` experts within ~25 steps: the router input is soon dominated by one direction
  shared by every position), and the bias rate sets how fast the load recovers. At the
  ``gpt2-124M`` shape with 64 experts top-8 (``benches/bench_moe.py``, one H200) the worst
  layer's max/mean load was 1.9 after 100 steps at γ = 0.01 against 2.35 after 400 at 0.001,
  with an equal or lower loss (``benches/NOTES-model.md``); DeepSeek-V3's rate suits runs of
  hundreds of thousands of steps.
  ``normalize_gates`` defaults to ``top_k > 1`` (with one expert a normalised gate is always 1
  and the router would get no gradient from the LM loss).
* **In-batch balancing** (``batch_load_cap``, off by default): the bias balances the load
  summed over steps, but one batch's documents still favour their own experts (at the
  ``gpt2-124M`` shape with 64 experts top-8, 32 × 1024 tokens a step: 1.07 max/mean summed over
  30 steps, 2.09 in the worst single step and layer). With a cap ``c``, each training forward
  pass adds per-expert offsets to the selection scores that bring every expert's load near
  ``[mean/c, c·mean]`` (:func:`~lmforge.model.moe.balance.batch_balance_offsets`: two rounds
  of lowering the overloaded and raising the idle experts, read on a strided sample of 8,192
  tokens; dropless). With ``c = 1.2`` at that shape the worst step and layer was 1.20–1.26
  (1.83–1.92 without it in the same calls), for 1.3 ms a step (83.3 against 82.0 ms, 35.7%
  MFU), and the stories-moe preset's validation loss 3.5576 against 3.5597 after one epoch of
  160 MB (one H200, ``benches/NOTES-model.md``). It stays off by default: like BASE layers
  (Lewis et al. 2021: a balanced assignment in training, greedy routing in inference), it is
  **non-causal in training** — a token's experts depend on the batch — while evaluation and
  generation route with the bias alone; the bias learns from the loads before the offsets,
  which is what inference sees.
* **Capacity**: ``capacity_factor=None`` is dropless (MegaBlocks, Gale et al. 2023); a number
  ``c`` caps each expert at ``ceil(c · tokens · top_k / n_routed_experts)`` assignments, first
  choices before second ones (GShard's priority), and the rest pass through the residual.
  Expert-choice always has a capacity (default ``c = 1``: ``top_k`` experts per token on
  average).
* **Expert weight storage**: ``expert_dtype = "bfloat16"`` stores the routed experts' weights
  in bfloat16 — the dtype the grouped GEMM computes in under bf16 autocast — and the optimizer
  keeps their float32 master weights (AdamW and Adam do; the others refuse bfloat16
  parameters). Each step then skips casting every expert weight to bfloat16 and every expert
  gradient back to float32 (1.5 ms of an 87 ms step at the ``gpt2-124M`` shape with 64
  experts on an H200, ``benches/NOTES-model.md``), and, with one micro-batch a step and no data
  parallelism, trains to the same numbers as float32 storage would from the same (rounded)
  initial weights, but for the rounding of gradient clipping's norm (summed over the
  parameters in another order). Its costs: the data-parallel gradient reduction averages the
  experts' gradients in bfloat16 (over micro-batches the trainer sums them in float32,
  ``lmforge.train.grad_sums``, 4 bytes a weight while it runs); the model's ``state_dict``
  holds the rounded weights (the masters are in the optimizer's state, which resumes
  exactly); FSDP is not supported. The default, ``"float32"``, has none of these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["EXPERT_DTYPES", "ROUTERS", "MoEConfig"]

ROUTERS = ("token_choice", "sigmoid", "expert_choice", "hash")
"""The values of :attr:`MoEConfig.router`."""

EXPERT_DTYPES = ("float32", "bfloat16")
"""The values of :attr:`MoEConfig.expert_dtype`."""

_LOSS_FIELDS = ("aux_loss_weight", "device_loss_weight", "seq_aux_loss_weight")


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """The Mixture-of-Experts MLP of a Transformer (see the module docstring for the papers).

    Attributes:
        n_routed_experts: routed experts per MoE layer.
        top_k: experts per token (token-choice, sigmoid and hash routers); for expert-choice,
            the average number of experts per token (with ``capacity_factor``).
        n_shared_experts: always-on experts of width ``expert_d_ff`` beside the routed ones
            (stored as one SwiGLU of width ``n_shared_experts · expert_d_ff``, the same function).
        expert_d_ff: each expert's SwiGLU width; ``None`` means the model's ``d_ff``.
        first_dense_layers: leading blocks that keep a dense MLP.
        moe_every: after those, every ``moe_every``-th block is MoE (1: all of them).
        router: one of :data:`ROUTERS`.
        route_scale: multiplies every gate (DeepSeek-V3's routed scaling factor).
        normalize_gates: divide the selected gates by their sum (token-choice and sigmoid);
            ``None`` means ``top_k > 1``.
        capacity_factor: ``None`` for dropless routing; else the capacity factor ``c``.
        batch_load_cap: ``None`` (off), or ``c >= 1``: in training forward passes every
            expert's assignments are brought within ``[mean/c, c·mean]`` of the mean ``N ·
            top_k / E`` (token-choice and sigmoid routers; see the module docstring).
        aux_loss_weight: Switch auxiliary loss = DeepSeek expert-level balance loss;
            ``None``: 0.01 for ``token_choice``, else 0.
        device_loss_weight: DeepSeek device-level balance loss (needs ``n_expert_groups > 1``).
        n_expert_groups: contiguous groups of experts ("devices") for the device-level loss.
        seq_aux_loss_weight: DeepSeek-V3 sequence-wise balance loss; ``None``: 1e-4 for
            ``sigmoid``, else 0.
        z_loss_weight: router z-loss weight.
        bias_update_rate: γ of auxiliary-loss-free balancing (0 disables it); ``None``: 0.01
            for ``sigmoid``, else 0.
        router_init_std: std of the router weight's truncated-normal init; ``None`` means the
            model's ``init_std``.
        hash_seed: seed of the hash router's token → experts table.
        log_expert_load: log each expert's share of the routed tokens (``E`` numbers per layer).
        expert_dtype: storage of the routed experts' weights, one of :data:`EXPERT_DTYPES`
            (``"bfloat16"``: float32 masters in the optimizer; see the module docstring).

    Raises:
        ValueError: a field out of range or a balancing option the router cannot use (the
            message names the field).
    """

    n_routed_experts: int
    top_k: int = 2
    n_shared_experts: int = 0
    expert_d_ff: int | None = None
    first_dense_layers: int = 0
    moe_every: int = 1
    router: str = "token_choice"
    route_scale: float = 1.0
    normalize_gates: bool | None = None
    capacity_factor: float | None = None
    batch_load_cap: float | None = None
    aux_loss_weight: float | None = None
    device_loss_weight: float = 0.0
    n_expert_groups: int = 1
    seq_aux_loss_weight: float | None = None
    z_loss_weight: float = 0.0
    bias_update_rate: float | None = None
    router_init_std: float | None = None
    hash_seed: int = 0
    log_expert_load: bool = True
    expert_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("n_routed_experts", "top_k", "moe_every", "n_expert_groups"):
            _int_at_least(name, getattr(self, name), 1)
        for name in ("n_shared_experts", "first_dense_layers", "hash_seed"):
            _int_at_least(name, getattr(self, name), 0)
        if self.expert_d_ff is not None:
            _int_at_least("expert_d_ff", self.expert_d_ff, 1)
        if self.router not in ROUTERS:
            raise ValueError(f"moe.router must be one of {ROUTERS}, got {self.router!r}")
        if self.expert_dtype not in EXPERT_DTYPES:
            raise ValueError(
                f"moe.expert_dtype must be one of {EXPERT_DTYPES}, got {self.expert_dtype!r}"
            )
        if self.top_k > self.n_routed_experts:
            raise ValueError(
                f"moe.top_k ({self.top_k}) exceeds moe.n_routed_experts ({self.n_routed_experts})"
            )
        if self.n_routed_experts % self.n_expert_groups:
            raise ValueError(
                f"moe.n_expert_groups ({self.n_expert_groups}) must divide moe.n_routed_experts "
                f"({self.n_routed_experts})"
            )
        self._resolve_defaults()
        _positive("route_scale", self.route_scale)
        for name in ("router_init_std", "capacity_factor"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in (*_LOSS_FIELDS, "z_loss_weight", "bias_update_rate"):
            _non_negative(name, getattr(self, name))
        for name in ("normalize_gates", "log_expert_load"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"moe.{name} must be true or false, got {getattr(self, name)!r}")
        if self.batch_load_cap is not None:
            _positive("batch_load_cap", self.batch_load_cap)
            if self.batch_load_cap < 1:
                raise ValueError(
                    f"moe.batch_load_cap must be >= 1 (a multiple of the mean load), got "
                    f"{self.batch_load_cap!r}"
                )
            if self.router not in ("token_choice", "sigmoid"):
                raise ValueError(
                    f"moe.batch_load_cap needs a top-k router (token_choice or sigmoid), not "
                    f"moe.router={self.router!r}"
                )
        self._check_router_options()

    def _resolve_defaults(self) -> None:
        resolved = {
            "aux_loss_weight": 0.01 if self.router == "token_choice" else 0.0,
            "seq_aux_loss_weight": 1e-4 if self.router == "sigmoid" else 0.0,
            "bias_update_rate": 1e-2 if self.router == "sigmoid" else 0.0,
            "normalize_gates": self.top_k > 1,
            "capacity_factor": 1.0 if self.router == "expert_choice" else None,
        }
        for name, value in resolved.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def _check_router_options(self) -> None:
        if self.device_loss_weight > 0 and self.n_expert_groups < 2:
            raise ValueError(
                "moe.device_loss_weight > 0 needs moe.n_expert_groups >= 2 (with one group "
                "the device-level loss is a constant)"
            )
        if self.router in ("expert_choice", "hash"):
            used = [n for n in (*_LOSS_FIELDS, "bias_update_rate") if getattr(self, n) > 0]
            if used:
                why = (
                    "expert-choice routing is balanced by construction"
                    if self.router == "expert_choice"
                    else "hash routing has no learned router"
                )
                raise ValueError(
                    f"moe.router={self.router!r} cannot use {', '.join(f'moe.{n}' for n in used)}"
                    f" ({why}); set them to 0"
                )
        if self.router == "hash" and self.z_loss_weight > 0:
            raise ValueError("moe.router='hash' has no router logits: set moe.z_loss_weight=0")

    def expert_width(self, d_ff: int) -> int:
        """Each routed (and shared) expert's hidden width, given the model's ``d_ff``."""
        return d_ff if self.expert_d_ff is None else self.expert_d_ff

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether block ``layer_idx`` holds an MoE MLP (see the module docstring)."""
        offset = layer_idx - self.first_dense_layers
        return offset >= 0 and offset % self.moe_every == 0

    def moe_layers(self, n_layers: int) -> list[int]:
        """The indices of the MoE blocks of an ``n_layers`` model."""
        return [i for i in range(n_layers) if self.is_moe_layer(i)]

    def capacity(self, n_tokens: int) -> int | None:
        """Assignments each expert may take for ``n_tokens`` tokens (``None``: dropless).

        ``ceil(capacity_factor · n_tokens · top_k / n_routed_experts)``, at most ``n_tokens``
        (an expert never sees a token twice) and at least 1.
        """
        if self.capacity_factor is None:
            return None
        c = math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_routed_experts)
        return max(1, min(c, n_tokens))

    def experts_per_token(self) -> float:
        """Routed experts a token passes through on average (what its FLOPs pay for)."""
        if self.router == "expert_choice":
            assert self.capacity_factor is not None  # resolved in __post_init__
            return min(self.top_k * self.capacity_factor, float(self.n_routed_experts))
        return float(self.top_k)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoEConfig:
        """Build from :meth:`to_dict`'s output (a ``[model.moe]`` TOML table).

        Raises:
            ValueError: unknown keys, a missing ``n_routed_experts``, or an invalid value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model.moe must be a table of MoE options, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model.moe field(s) {unknown}; known fields: {sorted(known)}")
        if "n_routed_experts" not in data:
            raise ValueError("model.moe needs n_routed_experts (the number of routed experts)")
        return cls(**data)


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"moe.{name} must be an integer >= {minimum}, got {value!r}")


def _positive(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value > 0):  # type: ignore[operator]
        raise ValueError(f"moe.{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value >= 0):  # type: ignore[operator]
        raise ValueError(f"moe.{name} must be a number >= 0, got {value!r}")
