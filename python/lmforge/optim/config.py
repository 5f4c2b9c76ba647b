"""``OptimConfig``: which optimizer, its hyperparameters and its learning-rate schedule.

One frozen dataclass, validated on construction and saved beside every checkpoint (it is the
optimizer's own config; the trainer passes it through). From it, :func:`build_optimizer` makes
the optimizer from model-labelled parameters (:func:`lmforge.optim.param_groups`) and
:func:`set_lr` sets the rate each iteration from :func:`lr_at`, a pure function of
``(it, max_iters)``, so a resumed run continues on exactly the same schedule.

Every group stores its own ``base_lr`` (``lr`` for AdamW-style groups, ``muon_lr`` for Muon
groups) and the schedule scales all of them by the same factor ``lr_at(...) / lr``: the Muon
and AdamW halves of a Muon optimizer warm up and decay together, as in the modded-nanogpt
speedrun. Defaults: AdamW with the LM-pretraining ``betas=(0.9, 0.95)``, ``weight_decay=0.1``,
``grad_clip=1.0`` (GPT-3, Llama), ``min_lr = lr / 10`` (Chinchilla), cosine schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.optim._common import check_beta, check_foreach, check_non_negative, check_positive
from lmforge.optim.adagrad import AdaGrad
from lmforge.optim.adamw import Adam, AdamW
from lmforge.optim.groups import param_groups
from lmforge.optim.muon import Muon
from lmforge.optim.schedule import constant_lr, cosine_lr, wsd_lr
from lmforge.optim.sgd import SGD

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimConfig", "build_optimizer", "lr_at", "set_lr"]

OPTIMIZERS = ("adamw", "adam", "adagrad", "sgd", "muon")
"""The values of :attr:`OptimConfig.name`."""

SCHEDULES = ("cosine", "wsd", "constant")
"""The values of :attr:`OptimConfig.schedule`."""


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The optimizer and its schedule.

    Attributes:
        name: one of :data:`OPTIMIZERS`.
        lr: the peak learning rate (of the AdamW groups, under Muon).
        min_lr: the rate the schedule decays to; ``None`` (default) means ``lr / 10``.
        betas: Adam's moment decay rates (adamw, adam, and the AdamW groups of muon).
        eps: Adam's / AdaGrad's denominator epsilon.
        weight_decay: coefficient of the decayed groups: decoupled for adamw and muon's AdamW
            groups, coupled L2 for adam, adagrad and sgd.
        momentum: SGD momentum (0 for plain SGD).
        muon_lr: the peak rate of Muon's matrix groups.
        muon_momentum: Muon's (Nesterov) momentum.
        muon_weight_decay: decoupled weight decay of Muon's matrix groups (0 = off; Jordan's
            Muon README uses 0.01).
        schedule: one of :data:`SCHEDULES` (see :func:`lr_at`).
        warmup_iters: length of the linear warm-up.
        decay_fraction: ``wsd`` only: the fraction of ``max_iters`` spent cooling down.
        grad_clip: max global gradient norm; ``None`` or 0 turns clipping off (stored as None).
        decay_embeddings: weight-decay embedding parameters too.
        decay_norms: weight-decay norm gains too.
        foreach: the optimizers' multi-tensor path (``None``: when possible).
        moment_dtype: adamw and adam: ``None`` keeps the moments in float32 (the weights'
            dtype), ``"bfloat16"`` stores them in bfloat16 (DeepSeek-V3; see
            :mod:`lmforge.optim.adamw`).
    """

    name: str = "adamw"
    lr: float = 3e-4
    min_lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_iters: int = 0
    decay_fraction: float = 0.2
    grad_clip: float | None = 1.0
    decay_embeddings: bool = False
    decay_norms: bool = False
    foreach: bool | None = None
    moment_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer name {self.name!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        check_positive("lr", self.lr)
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        check_non_negative("min_lr", min_lr)
        if min_lr > self.lr:
            raise ValueError(f"min_lr ({min_lr}) must be <= lr ({self.lr})")
        object.__setattr__(self, "min_lr", min_lr)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        for i, beta in enumerate(self.betas):
            check_beta(f"betas[{i}]", beta)
        check_positive("eps", self.eps)
        check_positive("muon_lr", self.muon_lr)
        for name in ("weight_decay", "muon_weight_decay"):
            check_non_negative(name, getattr(self, name))
        for name in ("momentum", "muon_momentum"):
            check_beta(name, getattr(self, name))
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int):
            raise ValueError(f"warmup_iters must be an integer >= 0, got {self.warmup_iters!r}")
        check_non_negative("warmup_iters", self.warmup_iters)
        check_positive("decay_fraction", self.decay_fraction)
        if self.decay_fraction > 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.grad_clip is not None:
            check_non_negative("grad_clip", self.grad_clip)
            if self.grad_clip == 0:
                object.__setattr__(self, "grad_clip", None)
        for name in ("decay_embeddings", "decay_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_foreach(self.foreach)
        if self.moment_dtype not in (None, "bfloat16"):
            raise ValueError(f'moment_dtype must be "bfloat16" or unset, got {self.moment_dtype!r}')
        if self.moment_dtype is not None and self.name not in ("adamw", "adam"):
            raise ValueError(f"moment_dtype applies to adamw and adam, not {self.name!r}: unset it")

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (``betas`` as a list)."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        """Build from :meth:`to_dict`'s output.

        Raises:
            ValueError: on an unknown key or an invalid value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"an optimizer config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown OptimConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)


def build_optimizer(
    labelled: Iterable[tuple[nn.Parameter, str]], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over model-labelled parameters.

    Groups come from :func:`lmforge.optim.param_groups` (no decay on norms and embeddings
    unless the config says so; Muon's matrix groups apart). Each group gets ``base_lr``, the
    rate :func:`set_lr` scales.

    Args:
        labelled: ``(parameter, kind)`` pairs from the model.
        cfg: the optimizer config.

    Returns:
        A ``torch.optim.Optimizer`` (``AdamW``, ``Adam``, ``AdaGrad``, ``SGD`` or ``Muon``).

    Raises:
        ValueError: on bad labels, no trainable parameter, (Muon) a ``matrix``, ``expert`` or
            ``expert_pair`` parameter that is neither 2-D nor 3-D, or a bfloat16/float16
            parameter given to an optimizer without master weights (all but Adam and AdamW).
    """
    groups = param_groups(
        labelled,
        cfg.weight_decay,
        decay_embeddings=cfg.decay_embeddings,
        decay_norms=cfg.decay_norms,
        muon=cfg.name == "muon",
    )
    for group in groups:
        if group.get("use_muon"):
            group["weight_decay"] = cfg.muon_weight_decay
        group["base_lr"] = group["lr"] = cfg.muon_lr if group.get("use_muon") else cfg.lr
    if cfg.name == "muon":
        return Muon(
            groups,
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            adam_lr=cfg.lr,
            adam_betas=cfg.betas,
            adam_eps=cfg.eps,
            foreach=cfg.foreach,
        )
    if cfg.name == "adamw":
        return AdamW(
            groups, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay, foreach=cfg.foreach,
            moment_dtype=cfg.moment_dtype,
        )  # fmt: skip
    if cfg.name == "adam":
        return Adam(
            groups, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay, foreach=cfg.foreach,
            moment_dtype=cfg.moment_dtype,
        )  # fmt: skip
    if cfg.name == "adagrad":
        return AdaGrad(
            groups, cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, foreach=cfg.foreach
        )
    return SGD(groups, cfg.lr, cfg.momentum, weight_decay=cfg.weight_decay, foreach=cfg.foreach)


def lr_at(cfg: OptimConfig, it: int, max_iters: int) -> float:
    """The main learning rate at iteration ``it`` of a ``max_iters``-iteration run.

    ``cosine``: warm-up, then cosine to ``min_lr`` at ``max_iters`` (:func:`cosine_lr`).
    ``wsd``: warm-up, constant, then a 1-sqrt cool-down over the last
    ``round(decay_fraction · max_iters)`` iterations, reaching ``min_lr`` at ``max_iters``
    (:func:`wsd_lr`). ``constant``: warm-up, then ``lr``.

    Args:
        cfg: the optimizer config.
        it: the iteration (>= 0; past ``max_iters`` the rate stays at its final value).
        max_iters: the length of the run (>= 1).

    Returns:
        The learning rate.

    Raises:
        ValueError: if ``max_iters`` < 1, ``it`` < 0, or the warm-up (plus the wsd cool-down)
            does not fit in ``max_iters``.
    """
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    if cfg.warmup_iters > max_iters:
        raise ValueError(f"warmup_iters ({cfg.warmup_iters}) exceeds max_iters ({max_iters})")
    assert cfg.min_lr is not None  # resolved in __post_init__
    if cfg.schedule == "cosine":
        return cosine_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, max_iters)
    if cfg.schedule == "constant":
        return constant_lr(it, cfg.lr, cfg.warmup_iters)
    decay_iters = round(cfg.decay_fraction * max_iters)
    stable_iters = max_iters - cfg.warmup_iters - decay_iters
    if stable_iters < 0:
        raise ValueError(
            f"warmup_iters ({cfg.warmup_iters}) + the wsd decay ({decay_iters} = "
            f"decay_fraction {cfg.decay_fraction} x {max_iters}) exceed max_iters ({max_iters})"
        )
    return wsd_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, stable_iters, decay_iters)


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, it: int, max_iters: int) -> float:
    """Set every group's ``lr`` to its ``base_lr`` scaled by ``lr_at(cfg, it, max_iters) / cfg.lr``.

    A group without ``base_lr`` (an optimizer not made by :func:`build_optimizer`) takes its
    current ``lr`` as its base on the first call.

    Args:
        optimizer: the optimizer to update.
        cfg: the optimizer config.
        it: the iteration.
        max_iters: the length of the run.

    Returns:
        The main learning rate, ``lr_at(cfg, it, max_iters)``.

    Raises:
        ValueError: as :func:`lr_at`.
    """
    lr = lr_at(cfg, it, max_iters)
    scale = lr / cfg.lr
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * scale
    return lr
