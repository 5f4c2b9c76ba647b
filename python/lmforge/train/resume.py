"""What may change when a run resumes, and what may not.

A checkpoint restores the model, the optimizer's moments, every RNG and the sampler position.
The config given on resume is then checked against the one saved in the checkpoint:

- **Refused**: any change to ``[model]`` (the weights would mean something else), to
  ``optim.name`` (the optimizer state would not fit), and to
  ``train.batch_size``, ``train.grad_accum``, ``train.seed``, ``train.mixture_alpha`` or
  ``train.mixture_weights`` (the sampler's stream of windows would no longer continue the same
  run).
- **Applied**: ``[optim]`` hyperparameters come from the config given now, not from the
  checkpoint (so a run that diverged can resume with a lower ``optim.lr``); length
  (``max_iters``/``epochs``), intervals, evaluation and the device may change too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lmforge.train.config import RunConfig

__all__ = ["apply_hyperparameters", "check_resumable", "hyperparameters"]

log = logging.getLogger(__name__)

_FIXED_TRAIN_KEYS = ("batch_size", "grad_accum", "seed", "mixture_alpha", "mixture_weights")


def check_resumable(saved: dict[str, Any] | None, now: RunConfig) -> list[str]:
    """Check ``now`` against the config saved in a checkpoint.

    Returns:
        The ``[optim]`` fields that changed (applied, and worth a log line).

    Raises:
        ValueError: a change that cannot be resumed, naming each field with both values.
    """
    if not saved:
        return []
    current = now.to_dict()
    refused = _diff("model", saved.get("model", {}), current["model"])
    saved_train = saved.get("train", {})
    if saved.get("optim", {}).get("name", current["optim"]["name"]) != current["optim"]["name"]:
        refused.append(
            f"optim.name (checkpoint {saved['optim']['name']!r}, now {current['optim']['name']!r})"
        )
    refused += [
        f"train.{key} (checkpoint {saved_train.get(key)!r}, now {current['train'][key]!r})"
        for key in _FIXED_TRAIN_KEYS
        if key in saved_train and saved_train[key] != current["train"][key]
    ]
    if refused:
        raise ValueError(
            "--resume: the config differs from the checkpoint's in "
            + "; ".join(refused)
            + ". Resume with the run's own config (lmforge train --out RUN --resume), "
            "or start a new run in another --out"
        )
    return _diff("optim", saved.get("optim", {}), current["optim"])


def _diff(table: str, saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, list):
            old = tuple(old)
        if isinstance(new, list):
            new = tuple(new)
        if old != new:
            out.append(f"{table}.{key} (checkpoint {old!r}, now {new!r})")
    return out


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every param group's settings (all but ``params``), to re-apply after loading state."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_hyperparameters(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Put the settings from :func:`hyperparameters` back (``load_state_dict`` overwrote them).

    Raises:
        ValueError: the checkpoint's optimizer has a different number of param groups.
    """
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"--resume: the checkpoint's optimizer has {len(optimizer.param_groups)} param "
            f"groups, the configured one {len(groups)}; was optim.name changed?"
        )
    for group, settings in zip(optimizer.param_groups, groups, strict=True):
        group.update(settings)
