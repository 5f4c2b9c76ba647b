"""Checkpoints: everything needed to resume a run exactly, in one ``torch.save`` file.

A checkpoint holds the model's ``state_dict``, the optimizer's, the iteration, every random
number generator's state (Python ``random``, numpy's global generator, torch CPU and each CUDA
device), a format name and version, and whatever extra state the caller passes (scheduler step,
sampler position, config dicts, best validation loss). Restoring all of it makes a resumed run
draw the same batches and dropout masks as an uninterrupted one, which is what makes "resume"
mean resume (the reasoning behind torchtitan's and OLMo-core's full-state checkpoints).

Design choices:

- **Safe loading.** Files are read with ``torch.load(weights_only=True)``, which unpickles only
  tensors and plain containers, so opening a downloaded checkpoint cannot run code (the reason
  PyTorch made it the default in 2.6). Everything saved is therefore kept in that subset: numpy's
  RNG state becomes a tensor, and extra state is checked when saving, so a checkpoint that could
  not be loaded again is refused before it is written rather than discovered on resume.
- **Wrapper-free keys.** ``torch.compile`` (``_orig_mod.``) and DDP/DataParallel (``module.``)
  prefix parameter names. Keys are stored as the plain model names them, and loading maps them
  onto whatever the target is, so a compiled or wrapped model's checkpoint loads into a plain
  one and back.
- **Atomic files.** Given a path, the file is written to a temp file in the same folder,
  flushed and fsynced, renamed over the target with ``os.replace`` and the folder fsynced: a
  crash leaves the old checkpoint or the new one, never half of one (the same protocol as
  :func:`lmforge.data.token_file.write_header`). :func:`write_atomic` is that protocol, shared by
  the rest of ``lmforge.train``.
- **Clear refusals.** A truncated, corrupt or foreign file raises :class:`CheckpointError`
  naming the file, never a raw zip or pickle traceback; a model that does not match lists the
  first missing, unexpected or mis-shaped keys; a checkpoint from a newer lmforge is refused.

The extra state comes back through ``load_checkpoint(..., state=d)``, which fills ``d``.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from torch import nn

from lmforge._atomic import write_atomic
from lmforge.model.moe.experts import stack_legacy_gate_up

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
"""A filesystem path."""

FORMAT = "lmforge-checkpoint"
"""The ``format`` field of every checkpoint."""

VERSION = 1
"""The checkpoint version this lmforge writes and the newest it reads."""

_SHOW_KEYS = 5  # keys named in a mismatch error before "... and N more"
# What torch.load(weights_only=True) reconstructs without extra allow-listing (besides tensors).
# Exact types: subclasses (IntEnum, namedtuple, defaultdict) pickle by class and are refused.
_SAFE_SCALARS: tuple[type, ...] = (type(None), bool, int, float, complex, str, bytes)
_SAFE_SCALARS += (torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint is corrupt, from a newer lmforge, or does not fit the model or optimizer."""


def rng_state() -> dict[str, Any]:
    """The state of every random number generator a training run draws from.

    Returns:
        ``{"python", "numpy", "torch", "cuda"}``: Python's ``random`` state, numpy's global
        MT19937 state (its key as an int64 tensor, so ``weights_only`` loading accepts it),
        torch's CPU generator state, and one state per CUDA device (empty without CUDA).
    """
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name,
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`, so their streams continue from there.

    CUDA states are restored for as many devices as both the saved state and this machine
    have; a different device count logs a warning.

    Args:
        state: a dict from :func:`rng_state` (possibly loaded onto another device).

    Raises:
        ValueError: when ``state`` lacks a generator or holds one of the wrong form.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        npy = state["numpy"]
        key = npy["key"].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (npy["bit_generator"], key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"].cpu())
        cuda = list(state["cuda"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise ValueError(f"not a state from rng_state(): {type(e).__name__}: {e}") from None
    n_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and len(cuda) != n_devices:
        log.warning(
            "the RNG state holds %d CUDA device(s) but this machine has %d; restoring %d",
            len(cuda),
            n_devices,
            min(len(cuda), n_devices),
        )
    for i in range(min(len(cuda), n_devices)):
        torch.cuda.set_rng_state(cuda[i].cpu(), device=i)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner  # torch._dynamo's OptimizedModule, duck-typed
        else:
            return model


def _canonical(key: str) -> str:
    # torch.compile on a submodule inserts `_orig_mod` anywhere in the key, not just in front
    return ".".join(part for part in key.split(".") if part != "_orig_mod")


def _model_state(model: nn.Module) -> dict[str, Any]:
    return {_canonical(k): v for k, v in _unwrap(model).state_dict().items()}


def _check_safe(value: Any, where: str) -> Any:
    """``value`` with numpy scalars made Python ones; refuses what weights_only cannot load."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in _SAFE_SCALARS or isinstance(value, torch.Tensor):
        return value
    if type(value) in (list, tuple, set):
        items = [_check_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return type(value)(items)
    if type(value) in (dict, OrderedDict):
        return type(value)(
            (_check_safe(k, f"{where} key {k!r}"), _check_safe(v, f"{where}[{k!r}]"))
            for k, v in value.items()
        )
    raise ValueError(
        f"checkpoint state {where} is a {type(value).__module__}.{type(value).__qualname__}, "
        "which safe (weights_only) loading cannot read back; store numbers, strings, tensors, "
        "lists and dicts (e.g. dataclasses.asdict(config), array.tolist(), tensor.item())"
    )


def save_checkpoint(
    out: PathLike | IO[bytes],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    **state: Any,
) -> None:
    """Save a model, its optimizer, the iteration, every RNG state and extra ``state``.

    Args:
        out: a path (written atomically: see the module docstring) or a binary file object
            (written at its position; atomicity is then the caller's business).
        model: the model, possibly compiled or wrapped in DDP; keys are saved unwrapped.
        optimizer: its optimizer, or ``None`` to save the model alone.
        iteration: the number of optimizer steps taken, returned by :func:`load_checkpoint`.
        **state: extra state to save: numbers, strings, tensors, lists and dicts of them.

    Raises:
        ValueError: when ``iteration`` is not a non-negative integer, or ``state`` holds an
            object that ``weights_only`` loading could not read back (nothing is written).
        OSError: when the file cannot be written; a path's previous file is left intact.
    """
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": iteration,
        "model": _model_state(model),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": rng_state(),
        "state": {k: _check_safe(v, repr(k)) for k, v in state.items()},
    }
    if isinstance(out, (str, os.PathLike)):
        write_atomic(out, lambda f: torch.save(payload, f))
    else:
        torch.save(payload, out)


def _origin(src: PathLike | IO[bytes]) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return str(getattr(src, "name", "<checkpoint file object>"))


def _torch_load(src: PathLike | IO[bytes], map_location: Any, origin: str) -> Any:
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            raise CheckpointError(f"{origin} is a folder; pass the checkpoint.pt inside it")
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {origin}: check the path")
    try:
        return torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle and storage errors all mean "not a usable file"
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise CheckpointError(
                f"{origin} holds Python objects that safe (weights_only) loading refuses, so it "
                "is not an lmforge checkpoint (a pickled model?); if you trust its source, load "
                "it with torch.load(weights_only=False) and save its state_dict"
            ) from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{origin} is not a readable lmforge checkpoint ({type(e).__name__}: {first}): the "
            "file is truncated or corrupt, or is not a checkpoint; use another checkpoint (an "
            "earlier ckpt-STEP/ folder)"
        ) from None


def _read(src: PathLike | IO[bytes], map_location: Any) -> tuple[dict[str, Any], str]:
    """Load and validate a checkpoint's top level; returns it and its origin for messages."""
    origin = _origin(src)
    data = _torch_load(src, map_location, origin)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{origin} is not an lmforge checkpoint (format {found!r}, expected {FORMAT!r}); "
            "a bare state_dict can be loaded with model.load_state_dict(torch.load(...))"
        )
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{origin} has an invalid checkpoint version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{origin} has checkpoint version {version}, but this lmforge reads up to version "
            f"{VERSION}: upgrade lmforge"
        )
    expected = {"iteration", "model", "optimizer", "rng", "state"}
    if missing := sorted(expected - set(data)):
        raise CheckpointError(f"{origin} is not a valid checkpoint (missing fields {missing})")
    return data, origin


def read_checkpoint(src: PathLike | IO[bytes], map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's validated top level (``model``, ``optimizer``, ``rng``, ``state``,
    ``iteration``), for callers that restore a sharded model themselves.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`.
    """
    return _read(src, map_location)[0]


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    more = len(keys) - _SHOW_KEYS
    return f"{shown}, ... and {more} more" if more > 0 else shown


def _load_model(model: nn.Module, saved: Mapping[str, Any], origin: str) -> None:
    """Load ``saved`` into ``model``, mapping canonical keys onto the target's own names."""
    target = _unwrap(model)
    expected = target.state_dict()
    by_canon = {_canonical(k): k for k in expected}
    saved = stack_legacy_gate_up({_canonical(k): v for k, v in saved.items()})
    # a checkpoint from elsewhere may carry a DDP prefix on every key
    if all(k.startswith("module.") for k in saved) and not all(
        k.startswith("module.") for k in by_canon
    ):
        saved = {k.removeprefix("module."): v for k, v in saved.items()}
    missing = [k for k in by_canon if k not in saved]
    unexpected = [k for k in saved if k not in by_canon]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_name_keys(unexpected)}")
    shapes = []
    for k, v in saved.items():
        have = expected.get(by_canon.get(k, ""))
        if isinstance(v, torch.Tensor) and isinstance(have, torch.Tensor) and v.shape != have.shape:
            shapes.append(f"{k} {tuple(v.shape)} saved, {tuple(have.shape)} in the model")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_name_keys(shapes)}")
    if problems:
        raise CheckpointError(
            f"{origin} does not fit this model: {'; '.join(problems)}. Was it saved from a "
            "model with another config? Build the model from the config.json beside it"
        )
    target.load_state_dict({by_canon[k]: v for k, v in saved.items()}, strict=True)


def load_checkpoint(
    src: PathLike | IO[bytes],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: Any = "cpu",
    state: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> int:
    """Restore a model (and optimizer, RNGs, extra state) from :func:`save_checkpoint`'s file.

    Args:
        src: a path or a binary file object.
        model: the model to load into, plain, compiled or wrapped (keys are mapped).
        optimizer: the optimizer to restore, or ``None`` to skip the optimizer state.
        map_location: where tensors are loaded (``torch.load``'s ``map_location``); they are
            then copied onto the model's and optimizer's own devices.
        state: when given, a dict that is updated with the extra ``**state`` that was saved.
        restore_rng: restore every RNG (:func:`set_rng_state`), so a resumed run draws what
            an uninterrupted one would; pass ``False`` when only loading weights.

    Returns:
        The iteration that was saved.

    Raises:
        FileNotFoundError: when there is no file at ``src``.
        CheckpointError: when the file is truncated, corrupt, not an lmforge checkpoint or
            from a newer lmforge; when the model's keys or shapes differ (the first few are
            named); when ``optimizer`` is given but the checkpoint has no optimizer state or
            state for other parameter groups.
    """
    data, origin = _read(src, map_location)
    if optimizer is not None and data["optimizer"] is None:
        raise CheckpointError(
            f"{origin} holds no optimizer state (saved with optimizer=None); load it without "
            "an optimizer, or start the optimizer fresh"
        )
    _load_model(model, data["model"], origin)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(data["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(
                f"{origin}: the optimizer state does not fit this optimizer ({e}); build the "
                "optimizer with the same parameter groups and settings as the saved run"
            ) from None
    if restore_rng:
        try:
            set_rng_state(data["rng"])
        except ValueError as e:
            raise CheckpointError(f"{origin}: corrupt RNG state ({e})") from None
    if state is not None:
        state.update(data["state"])
    return int(data["iteration"])
