"""Low-rank adapters (LoRA; Hu et al. 2021): fine-tune a frozen model through ``W + s·B·A``.

:func:`apply_lora` swaps each targeted :class:`~lmforge.model.layers.Linear` for a
:class:`LoRALinear` that computes ``y = x Wᵀ + s · B (A dropout(x))`` with ``A`` of shape
``(rank, d_in)``, ``B`` of shape ``(d_out, rank)`` and ``s = alpha / rank``, and freezes every
other parameter. Only ``A`` and ``B`` train, so the optimizer state and the saved adapter are
``rank · (d_in + d_out)`` numbers per target instead of ``d_in · d_out``.

Design choices:

* **A subclass, not a wrapper**: :class:`LoRALinear` *is* a ``Linear`` and keeps the very same
  ``weight`` parameter, so parameter names do not move (``layers.0.attention.wq.weight`` is
  still the base weight; the adapter adds ``...wq.lora_A`` and ``...wq.lora_B``), checkpoints of
  the base model still load, and :meth:`Transformer.param_kinds` still finds a ``param_kind``.
* **Init as in the paper**: ``A`` Kaiming-uniform (bound ``1/sqrt(d_in)``, what PEFT and Hu et
  al.'s ``loralib`` use), ``B`` zeros, so ``B·A = 0`` and the model's first output is exactly
  the base model's (``y + 0`` is ``y`` in floating point).
* **Scaling ``alpha / rank``** (Hu et al. §4.1): changing ``rank`` then needs no new learning
  rate. **Dropout** acts on the adapter's input only, never on the frozen path.
* **Targets** name modules by their last name component (``"wq"`` matches
  ``layers.3.attention.wq``) or by a dotted suffix (``"attention.wq"``); the default is the
  paper's choice, the query and value projections.
* **Merge for inference**: :func:`merge_lora` folds ``s·B·A`` into ``weight`` (one matmul per
  target, no adapter cost at inference) and keeps the original weight in a non-persistent
  buffer, so :func:`unmerge_lora` restores it bit for bit rather than subtracting (which would
  not round-trip in floating point). :func:`unload_lora` merges and puts plain ``Linear``
  modules back, for exports that expect only base parameter names.
* **Adapter files** hold only ``A``/``B`` and the :class:`LoRAConfig`, written atomically
  (:func:`lmforge._atomic.write_atomic`) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge._atomic import write_atomic
from lmforge.model.layers import Linear

__all__ = [
    "LoRAConfig",
    "LoRAError",
    "LoRALinear",
    "apply_lora",
    "load_lora",
    "lora_config_of",
    "lora_modules",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "trainable_parameters",
    "unload_lora",
    "unmerge_lora",
]

LORA_FORMAT = "lmforge-lora"
LORA_VERSION = 1
_ADAPTER_NAMES = ("lora_A", "lora_B")


class LoRAError(ValueError):
    """A LoRA mistake: bad config, no matching module, merging twice, a mismatched file."""


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Where the adapters go and how big they are.

    Args:
        rank: ``r``, the inner dimension of ``B·A`` (>= 1).
        alpha: the adapter output is scaled by ``alpha / rank`` (> 0).
        dropout: dropout probability on the adapter's input, in ``[0, 1)``.
        targets: module names to adapt: a last name component (``"wq"``) or a dotted suffix
            (``"attention.wq"``) of ``Linear`` modules.

    Raises:
        LoRAError: on a value out of range or empty targets.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=("wq", "wv"))

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise LoRAError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise LoRAError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t.strip(".") for t in targets):
            raise LoRAError(
                f"LoRA targets must be non-empty module names such as ('wq', 'wv'), "
                f"got {self.targets!r}"
            )
        object.__setattr__(self, "targets", targets)

    @property
    def scaling(self) -> float:
        """``alpha / rank``, the factor on the adapter's output."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``targets`` as a list), for files that ``weights_only`` loading reads."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            LoRAError: unknown keys or invalid values.
        """
        unknown = set(data) - {"rank", "alpha", "dropout", "targets"}
        if unknown:
            raise LoRAError(f"unknown LoRA config keys {sorted(unknown)}")
        kwargs = dict(data)
        if "targets" in kwargs:
            kwargs["targets"] = tuple(kwargs["targets"])
        return cls(**kwargs)


class LoRALinear(Linear):
    """A :class:`Linear` with a trainable low-rank update: ``x Wᵀ + s · (dropout(x) Aᵀ) Bᵀ``.

    Built from an existing ``Linear`` whose ``weight`` parameter (the same object) it keeps.

    Args:
        base: the layer to adapt; its ``weight`` is frozen.
        config: rank, alpha and dropout.

    Raises:
        LoRAError: if ``rank`` exceeds ``min(d_in, d_out)`` (the update would not be low-rank).
    """

    unmerged_weight: Tensor | None

    def __init__(self, base: Linear, config: LoRAConfig) -> None:
        nn.Module.__init__(self)  # not Linear.__init__: the base weight is reused, not redrawn
        if config.rank > min(base.d_in, base.d_out):
            raise LoRAError(
                f"LoRA rank {config.rank} exceeds min(d_in, d_out) = "
                f"{min(base.d_in, base.d_out)} of a {base.d_out}×{base.d_in} Linear: lower it"
            )
        self.d_in, self.d_out, self.init_scale = base.d_in, base.d_out, base.init_scale
        self.param_kind = base.param_kind
        self.config = config
        self.scaling = config.scaling
        self.merged = False
        self.weight = base.weight
        self.weight.requires_grad_(False)
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(config.rank, self.d_in, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.d_out, config.rank, **kw))
        self.lora_dropout = nn.Dropout(config.dropout)
        self.register_buffer("unmerged_weight", None, persistent=False)
        self.reset_lora_parameters()
        self.train(base.training)  # a fresh module would be in training mode (dropout on)

    def reset_lora_parameters(self) -> None:
        """``A`` Kaiming-uniform (bound ``1/sqrt(d_in)``), ``B`` zeros: the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def reset_parameters(self) -> None:
        """Re-draw the base weight (as ``Linear`` does) and the adapter; drops a merge."""
        self.unmerged_weight = None
        self.merged = False
        super().reset_parameters()
        self.reset_lora_parameters()

    def delta_weight(self) -> Tensor:
        """``s · B · A``, shape ``(d_out, d_in)``, in the weight's dtype."""
        return (self.lora_B @ self.lora_A * self.scaling).to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., d_in)`` → ``(..., d_out)``; the adapter is skipped once merged."""
        y = F.linear(x, self.weight)
        if self.merged:
            return y
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s·B·A`` into ``weight``, keeping the original for :meth:`unmerge`.

        Raises:
            LoRAError: if already merged.
        """
        if self.merged:
            raise LoRAError("LoRA adapters are already merged: call unmerge_lora first")
        self.unmerged_weight = self.weight.detach().clone()
        self.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the weight saved by :meth:`merge` exactly.

        Raises:
            LoRAError: if not merged.
        """
        if not self.merged or self.unmerged_weight is None:
            raise LoRAError("LoRA adapters are not merged: there is nothing to unmerge")
        self.weight.copy_(self.unmerged_weight)
        self.unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.config.rank}, alpha={self.config.alpha}, "
            f"dropout={self.config.dropout}, merged={self.merged}"
        )


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig | None = None) -> nn.Module:
    """Put adapters on the targeted ``Linear`` modules and freeze everything else.

    Args:
        model: e.g. a :class:`~lmforge.model.transformer.Transformer`; changed in place.
        config: rank, alpha, dropout and targets (default :class:`LoRAConfig()`).

    Returns:
        ``model``, whose only trainable parameters are now the adapters.

    Raises:
        LoRAError: ``model`` already has adapters, no ``Linear`` matches ``config.targets``,
            or the rank exceeds a target's ``min(d_in, d_out)``.
    """
    config = config or LoRAConfig()
    if lora_modules(model):
        raise LoRAError("the model already has LoRA adapters; apply_lora once per model")
    linears = {n: m for n, m in model.named_modules() if type(m) is Linear}
    chosen = [n for n in linears if _matches(n, config.targets)]
    if not chosen:
        names = sorted({n.rpartition(".")[2] for n in linears})
        raise LoRAError(
            f"no Linear module matches LoRA targets {list(config.targets)}; "
            f"the model's Linear names are {names}"
        )
    small = [n for n in chosen if config.rank > min(linears[n].d_in, linears[n].d_out)]
    if small:  # checked before anything changes, so a refused call leaves the model as it was
        m = linears[small[0]]
        raise LoRAError(
            f"LoRA rank {config.rank} exceeds min(d_in, d_out) = {min(m.d_in, m.d_out)} "
            f"of {small[0]} ({m.d_out}×{m.d_in}): lower it"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        _set_submodule(model, name, LoRALinear(linears[name], config))
    return model


def lora_config_of(model: nn.Module) -> LoRAConfig:
    """The :class:`LoRAConfig` the model's adapters were built with.

    Raises:
        LoRAError: the model has no adapters.
    """
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("the model has no LoRA adapters: call apply_lora first")
    return next(iter(modules.values())).config


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter weights, ``{"layers.0.attention.wq.lora_A": A, ...}`` (detached).

    Raises:
        LoRAError: the model has no adapters.
    """
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("the model has no LoRA adapters: call apply_lora first")
    return {
        f"{name}.{p}": getattr(m, p).detach() for name, m in modules.items() for p in _ADAPTER_NAMES
    }


def save_lora(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the adapter weights and their :class:`LoRAConfig` to ``path`` atomically.

    Raises:
        LoRAError: the model has no adapters.
        OSError: the folder is missing or not writable (the old file, if any, is kept).
    """
    payload = {
        "format": LORA_FORMAT,
        "version": LORA_VERSION,
        "config": lora_config_of(model).to_dict(),
        "state_dict": {k: v.cpu().clone() for k, v in lora_state_dict(model).items()},
    }
    write_atomic(path, lambda f: torch.save(payload, f))


def _read_lora_file(path: str | os.PathLike[str]) -> tuple[LoRAConfig, dict[str, Tensor]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such LoRA adapter file")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != LORA_FORMAT:
        raise LoRAError(f"{path} is not an lmforge LoRA adapter file (written by save_lora)")
    if payload.get("version") != LORA_VERSION:
        raise LoRAError(
            f"{path} has LoRA format version {payload.get('version')!r}, "
            f"this lmforge reads version {LORA_VERSION}"
        )
    return LoRAConfig.from_dict(payload["config"]), payload["state_dict"]


def load_lora(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load adapters saved by :func:`save_lora`, adding them first if the model has none.

    Args:
        model: the base model the adapters were trained on (or it with the same adapters).
        path: the adapter file.

    Returns:
        ``model`` with the adapters loaded (unmerged; base parameters frozen).

    Raises:
        FileNotFoundError: no file at ``path``.
        LoRAError: not an adapter file, a config differing from the model's adapters, merged
            adapters, or names/shapes that do not fit the model.
    """
    config, state = _read_lora_file(path)
    if not lora_modules(model):
        apply_lora(model, config)
    elif lora_config_of(model) != config:
        raise LoRAError(
            f"{path} holds adapters for {config}, the model has {lora_config_of(model)}"
        )
    if any(m.merged for m in lora_modules(model).values()):
        raise LoRAError("the model's LoRA adapters are merged: call unmerge_lora before loading")
    own = lora_state_dict(model)
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise LoRAError(f"{path} does not fit the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.shape != own[name].shape:
                raise LoRAError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                    f"{tuple(own[name].shape)}"
                )
            own[name].copy_(tensor)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (see :meth:`LoRALinear.merge`).

    Raises:
        LoRAError: no adapters, or they are already merged.
    """
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("the model has no LoRA adapters: call apply_lora first")
    if any(m.merged for m in modules.values()):
        raise LoRAError("LoRA adapters are already merged: call unmerge_lora first")
    for m in modules.values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Restore every base weight exactly (see :meth:`LoRALinear.unmerge`).

    Raises:
        LoRAError: no adapters, or they are not merged.
    """
    modules = lora_modules(model)
    if not modules or not all(m.merged for m in modules.values()):
        raise LoRAError("the model has no merged LoRA adapters: there is nothing to unmerge")
    for m in modules.values():
        m.unmerge()
    return model


def unload_lora(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``Linear`` with the same weight parameter.

    Args:
        model: a model with adapters; changed in place.
        merge: fold the adapters in first (if not merged yet); ``False`` discards them.

    Returns:
        ``model`` with only base parameter names (what ``export_hf_llama`` expects). Parameters
        are left frozen; call ``requires_grad_(True)`` to train the whole model again.

    Raises:
        LoRAError: the model has no adapters.
    """
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("the model has no LoRA adapters: call apply_lora first")
    for name, m in modules.items():
        if merge and not m.merged:
            m.merge()
        elif not merge and m.merged:
            m.unmerge()
        plain = Linear.__new__(Linear)
        nn.Module.__init__(plain)
        plain.d_in, plain.d_out, plain.init_scale = m.d_in, m.d_out, m.init_scale
        plain.param_kind = m.param_kind
        plain.weight = m.weight
        plain.train(m.training)
        _set_submodule(model, name, plain)
    return model
