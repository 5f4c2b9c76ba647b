"""Optimizers, learning-rate schedules, gradient clipping and parameter groups.

Our own ``AdamW``, ``Adam``, ``AdaGrad``, ``SGD`` (each equal to its ``torch.optim`` peer to
rounding, with a multi-tensor fast path) and ``Muon`` (Newton–Schulz-orthogonalised momentum
for hidden matrices, AdamW for the rest, in one optimizer). The package knows nothing of
models: a model hands over ``(parameter, kind)`` pairs and :func:`build_optimizer` does the rest.
"""

from lmforge.optim.adagrad import AdaGrad
from lmforge.optim.adamw import Adam, AdamW
from lmforge.optim.clip import clip_coefficient, clip_grad_norm_
from lmforge.optim.config import (
    OPTIMIZERS,
    SCHEDULES,
    OptimConfig,
    build_optimizer,
    lr_at,
    set_lr,
)
from lmforge.optim.groups import KINDS, param_groups
from lmforge.optim.muon import Muon, muon_scale, newton_schulz
from lmforge.optim.schedule import constant_lr, cosine_lr, wsd_lr
from lmforge.optim.sgd import SGD

__all__ = [
    "KINDS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "Muon",
    "OptimConfig",
    "build_optimizer",
    "clip_coefficient",
    "clip_grad_norm_",
    "constant_lr",
    "cosine_lr",
    "lr_at",
    "muon_scale",
    "newton_schulz",
    "param_groups",
    "set_lr",
    "wsd_lr",
]
