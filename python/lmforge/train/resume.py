"""What may change when a run resumes, and what may not.

A checkpoint restores the model, the optimizer's moments, every RNG and the sampler position.
The config given on resume is then checked against the one saved in the checkpoint:

- **Refused**: any change to ``[model]`` (the weights would mean something else), to
  ``optim.name`` (the optimizer state would not fit), to the global batch
  (``batch_size * grad_accum * world_size``), ``train.seed``, ``train.mixture_alpha`` or
  ``train.mixture_weights`` (the sampler's stream of windows would no longer continue the same
  run), ``train.objective`` or ``train.mlm_probability`` (nor would the masks), or
  ``train.param_dtype`` (a float32 checkpoint loaded into bf16 weights would lose its
  precision; to switch, start a new run with ``train.init_from``; ``"auto"`` takes the run's
  own value, :func:`saved_param_dtype`). How the
  global batch is split into processes and micro-batches may change, so a run checkpointed by
  2 processes resumes in 1 with twice the ``grad_accum``.
- **Applied**: ``[optim]`` hyperparameters come from the config given now, not from the
  checkpoint (so a run that diverged can resume with a lower ``optim.lr``); length
  (``max_iters``/``epochs``), intervals, evaluation and the device may change too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch

from lmforge.model.config import ModelConfig
from lmforge.train.config import STORED_PARAM_DTYPES, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["apply_hyperparameters", "check_resumable", "hyperparameters", "saved_param_dtype"]

log = logging.getLogger(__name__)

_FIXED_TRAIN_KEYS = (
    "seed",
    "mixture_alpha",
    "mixture_weights",
    "objective",
    "mlm_probability",
    "param_dtype",
)
_TRAIN_DEFAULTS = {"param_dtype": "float32"}
"""Fixed train fields added after checkpoints were first written: their value in those."""


def saved_param_dtype(config_toml: Path) -> str | None:
    """The ``train.param_dtype`` a run's ``config.toml`` records (the trainer writes the value
    it resolved), which ``"auto"`` keeps on resume; ``"float32"`` for a run written before the
    field existed; ``None`` when the file is missing or unreadable (the checkpoint's own config
    is still checked by :func:`check_resumable`).

    Args:
        config_toml: the run directory's ``config.toml``.
    """
    try:
        data = tomllib.loads(config_toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    train = data.get("train")
    if not isinstance(train, dict):
        return None
    value = train.get("param_dtype", _TRAIN_DEFAULTS["param_dtype"])
    return value if value in STORED_PARAM_DTYPES else None


def check_resumable(
    saved: dict[str, Any] | None,
    now: RunConfig,
    *,
    saved_world_size: int = 1,
    world_size: int = 1,
) -> list[str]:
    """Check ``now`` against the config saved in a checkpoint.

    Args:
        saved: the checkpoint's config dict (``None``: nothing to check).
        now: the config given now.
        saved_world_size: the processes that wrote the checkpoint.
        world_size: the processes resuming it.

    Returns:
        The ``[optim]`` fields that changed (applied, and worth a log line).

    Raises:
        ValueError: a change that cannot be resumed, naming each field with both values.
    """
    if not saved:
        return []
    current = now.to_dict()
    refused = _diff("model", _with_defaults(saved.get("model", {})), current["model"])
    saved_train = {**_TRAIN_DEFAULTS, **saved.get("train", {})}
    if saved.get("optim", {}).get("name", current["optim"]["name"]) != current["optim"]["name"]:
        refused.append(
            f"optim.name (checkpoint {saved['optim']['name']!r}, now {current['optim']['name']!r})"
        )
    saved_global = _global_batch(saved_train, current["train"], saved_world_size)
    now_global = _global_batch(current["train"], current["train"], world_size)
    if saved_global[0] != now_global[0]:
        refused.append(
            "the global batch train.batch_size x train.grad_accum x processes (checkpoint "
            f"{saved_global[1]}, now {now_global[1]})"
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


def _global_batch(
    train: dict[str, Any], default: dict[str, Any], world_size: int
) -> tuple[int, str]:
    """Sequences per optimizer step over all processes, and how they were made up."""
    batch, accum = (int(train.get(k, default[k])) for k in ("batch_size", "grad_accum"))
    total = batch * accum * world_size
    return total, f"{batch} x {accum} x {world_size} = {total}"


def _with_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """A saved model config with the fields added since it was written at their defaults (a
    config that no longer parses is compared as it is)."""
    try:
        return ModelConfig.from_dict(model).to_dict()
    except (TypeError, ValueError):
        return model


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
