"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), loadable in any world size.

Under FSDP every rank holds only its shards of the weights and of the optimizer moments.
Gathering them onto rank 0 for one ``checkpoint.pt`` costs the whole model in one host's memory
and serialises all the I/O on one process; DCP (PyTorch's distributed checkpointing, the format
torchtitan writes) lets each rank write its own shards in parallel and records, in a
``.metadata`` file, where each global tensor's pieces lie. Loading plans the reads for the
*loading* job's sharding, so a checkpoint written by ``N`` ranks resumes in ``M`` ranks or in a
single process.

A DCP checkpoint folder (``ckpt-STEP/``, still written atomically: see
:meth:`lmforge.train.run_dir.RunDir.stage`)::

    ckpt-00001000/
      .metadata            DCP's index of every tensor's shards (rank 0)
      __0_0.distcp ...     each rank's shards of {"model": ..., "optimizer": ...}
      trainer_state.pt     iteration, rank 0's RNG states, sampler position, config, world size
      config.json          the model config

Design choices:

- **Names, not ids.** The state comes from ``get_state_dict`` (``torch.distributed.checkpoint.
  state_dict``), which keys the model by its plain parameter names (no ``module.``/
  ``_orig_mod.``/FSDP prefixes) and the optimizer state by the same names rather than integer
  ids, so nothing in the file depends on how the model was wrapped or sharded.
- **The small state stays a plain lmforge checkpoint.** ``trainer_state.pt`` is a
  :func:`~lmforge.train.checkpoint.save_checkpoint` file with an empty model, written by rank 0:
  read with the same safe (``weights_only``) loading and format checks as ``checkpoint.pt``.
  Every rank starts from the same seed and consumes its RNGs identically, so rank 0's RNG states
  are restored on every rank (as for a gathered checkpoint).
- **One process reads it without a process group.** ``dcp.load`` without an initialised process
  group runs its plan locally, reassembling full tensors from all the shards; that is how
  :func:`load_weights` serves ``lmforge sample``/``eval``/``export`` and how a single process
  resumes. Weights written before the MoE experts' ``w1`` and ``w3`` became one ``w13`` load
  this way too (not the optimizer state of such a run).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.model.moe.experts import stack_legacy_gate_up
from lmforge.train.checkpoint import CheckpointError

__all__ = [
    "DCP_METADATA",
    "STATE_FILE",
    "is_dcp",
    "load_sharded",
    "load_weights",
    "save_sharded",
]

DCP_METADATA = ".metadata"
"""DCP's index file, written last by rank 0: its presence marks a DCP checkpoint."""

STATE_FILE = "trainer_state.pt"
"""The small non-tensor state of a DCP checkpoint (a weightless lmforge checkpoint)."""


def is_dcp(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a complete DCP checkpoint (its index and its trainer state)."""
    p = Path(folder)
    return (p / DCP_METADATA).is_file() and (p / STATE_FILE).is_file()


def _alone() -> bool:
    """No process group: DCP plans and reads locally (one process)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_alone() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group (intended, in one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """The model's (and optimizer's) state keyed by parameter names: ``DTensor`` shards under
    FSDP, whole tensors otherwise; loading copies into these very tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optimizer": osd}


def save_sharded(
    folder: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Write this rank's shards of the model and optimizer into ``folder`` (collective).

    Every rank must call it with the same ``folder`` (shared by all hosts); rank 0 writes the
    ``.metadata`` index after all ranks have written their files, so when this returns on any
    rank, the shards are complete.

    Args:
        folder: an existing (temp) folder.
        model: the model, plain or FSDP-sharded (DDP: pass the module inside).
        optimizer: its optimizer.
    """
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(os.fspath(folder))
    state = _state(model, optimizer)
    with _quiet_alone():
        dcp.save(state, storage_writer=writer, no_dist=_alone())


def load_sharded(
    folder: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Load the shards in ``folder`` into ``model`` (and ``optimizer``), in any world size.

    Collective under a process group; in a single process (no process group) it reads whole
    tensors. Only tensor state is loaded: read the iteration, RNGs and sampler position from
    ``folder / STATE_FILE`` with :func:`~lmforge.train.checkpoint.read_checkpoint`.

    Raises:
        CheckpointError: ``folder`` is not a DCP checkpoint, or it does not fit the model
            (another config) or the optimizer.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (Path(folder) / DCP_METADATA).is_file():
        raise CheckpointError(f"{folder} is not a DCP checkpoint (no {DCP_METADATA} file)")
    state = _state(model, optimizer)
    reader = dcp.FileSystemReader(os.fspath(folder))
    legacy = optimizer is None and _alone()
    if legacy:  # weights written before the experts' w1 and w3 were one parameter
        state["model"] = _split_gate_up(state["model"], reader)
    try:
        with _quiet_alone():
            dcp.load(state, storage_reader=reader, no_dist=_alone())
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        raise CheckpointError(
            f"{folder}: the DCP checkpoint does not fit this model or optimizer "
            f"({_cause(e)}); build the model from the config.json beside it and the optimizer "
            "with the saved run's settings"
        ) from None
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(
            model, stack_legacy_gate_up(state["model"]) if legacy else state["model"]
        )
    else:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )


def _split_gate_up(model_state: dict[str, Any], reader: Any) -> dict[str, Any]:
    """``model_state`` with each ``...experts.w13`` that the checkpoint holds as separate
    ``w1`` and ``w3`` (written before they were one parameter) replaced by tensors for those
    two, which :func:`~lmforge.model.moe.experts.stack_legacy_gate_up` stacks after reading."""
    saved = reader.read_metadata().state_dict_metadata
    out = dict(model_state)
    for key in [k for k in model_state if k.endswith("experts.w13")]:
        gate, up = key[: -len("w13")] + "w1", key[: -len("w13")] + "w3"
        if f"model.{key}" not in saved and f"model.{gate}" in saved and f"model.{up}" in saved:
            w13 = out.pop(key)
            half = w13.shape[1] // 2
            out[gate], out[up] = torch.empty_like(w13[:, :half]), torch.empty_like(w13[:, half:])
    return out


def _cause(err: BaseException) -> str:
    """The root error in DCP's report (which wraps each rank's traceback), on one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception"))]
    return (errors[-1] if errors else f"{type(err).__name__}: {lines[0] if lines else ''}")[:300]


def load_weights(folder: str | os.PathLike[str], model: nn.Module) -> int:
    """Load a DCP checkpoint's weights into a plain model in this process; returns its step.

    Raises:
        FileNotFoundError: no DCP checkpoint in ``folder``.
        CheckpointError: a corrupt state file, or weights that do not fit ``model``.
    """
    from lmforge.train.checkpoint import read_checkpoint

    if not is_dcp(folder):
        raise FileNotFoundError(
            f"{folder} holds no DCP checkpoint ({DCP_METADATA} and {STATE_FILE})"
        )
    step = int(read_checkpoint(Path(folder) / STATE_FILE)["iteration"])
    load_sharded(folder, model, None)
    return step
