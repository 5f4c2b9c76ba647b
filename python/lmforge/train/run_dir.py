"""Run directories: one folder per training run, holding everything needed to resume or use it.

Layout::

    run/
      config.toml        the run's full config (written by the trainer)
      tokenizer.json     the tokenizer the token files were made with (copied by the trainer)
      metrics.jsonl      one JSON object per logged step (lmforge.train.metrics)
      plots/metrics.png  the training curves (lmforge.train.plot)
      ckpt-00001000/     one folder per checkpoint, named by its step
        checkpoint.pt    model, optimizer, RNGs, sampler position (lmforge.train.checkpoint)
        config.json      the model config, enough to rebuild the model without config.toml
      ckpt-00002000/     or a sharded checkpoint (FSDP; lmforge.train.dcp_checkpoint):
        .metadata, __R_0.distcp   DCP's index and each rank's shards of model and optimizer
        trainer_state.pt          iteration, RNGs, sampler position (no weights)
        config.json

Design choices:

- **Self-contained checkpoint folders.** Each ``ckpt-STEP/`` carries its model config, so one
  folder can be copied elsewhere and loaded (the Hugging Face ``save_pretrained`` convention).
- **Zero-padded steps** (8 digits) make ``ls`` sort checkpoints in step order; any
  ``ckpt-<digits>`` is parsed, so hand-renamed ``ckpt-500`` still counts.
- **Atomic at folder level.** A checkpoint is written into a hidden temp folder
  (``.ckpt-STEP.<hex>.tmp``) and renamed into place only when both files are complete and
  fsynced, so a ``ckpt-STEP/`` that exists is whole: :meth:`RunDir.latest` never returns a
  half-written checkpoint after a crash or a full disk. A sharded checkpoint is written by
  every rank into one such temp folder (:meth:`RunDir.stage`); rank 0 publishes it
  (:meth:`RunDir.publish`) only after all ranks' shards are written. Pruning renames a folder
  away before deleting it, for the same reason. Hidden leftovers are cleaned when a run is resumed.
- **No lock.** Two trainers writing one run directory is a user error this class does not
  guard against.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge._atomic import fsync_dir, temp_name, write_text_atomic
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.dcp_checkpoint import is_dcp

__all__ = [
    "CHECKPOINT_FILE",
    "MODEL_CONFIG_FILE",
    "RunDir",
    "RunDirError",
    "parse_checkpoint_step",
    "write_text_atomic",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_CONFIG_FILE = "config.json"

_CKPT = re.compile(r"ckpt-(\d+)")
_LEFTOVER = re.compile(r"\.(.+)\.[0-9a-f]{12}\.(tmp|old|deleting)")


class RunDirError(ValueError):
    """A run directory cannot be used as asked (e.g. it already holds another run)."""


def parse_checkpoint_step(name: str) -> int | None:
    """The step in a checkpoint folder name (``ckpt-00001000`` or ``ckpt-1000`` -> 1000).

    Returns:
        The step, or ``None`` when ``name`` is not a checkpoint folder name.
    """
    m = _CKPT.fullmatch(name)
    return int(m.group(1)) if m else None


def _config_text(model_config: dict[str, Any]) -> str:
    try:
        return json.dumps(model_config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_config must be a JSON-serialisable dict: {e}") from None


def _check_step(step: object) -> None:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")


class RunDir:
    """A training run's folder: its files, its checkpoints, and their pruning.

    ``RunDir(path)`` only names the folder (it does no I/O); use :meth:`RunDir.create` to
    start or resume a run.

    Attributes:
        path: the run directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        """``config.toml``: the run's config."""
        return self.path / CONFIG_FILE

    @property
    def tokenizer_path(self) -> Path:
        """``tokenizer.json``: the run's tokenizer."""
        return self.path / TOKENIZER_FILE

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: the logged metrics."""
        return self.path / METRICS_FILE

    @property
    def plots_dir(self) -> Path:
        """``plots/``: PNG plots of the run (not created until something is plotted)."""
        return self.path / PLOTS_DIR

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, resume: bool = False) -> RunDir:
        """Start a run in ``path``, or continue the one there.

        Args:
            path: the run directory; created (with parents) when missing. A folder that
                exists but holds no run (no config, metrics or checkpoints) is used as is.
            resume: continue the run already in ``path``; leftovers of interrupted writes are
                cleaned. Resuming a missing or empty folder starts a new run.

        Returns:
            The run directory.

        Raises:
            RunDirError: when ``path`` is a file, or already holds a run and ``resume`` is
                false (so a run is never overwritten by accident).
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirError(f"{run.path} is a file, not a run directory; choose another path")
        if run.path.is_dir() and not resume and run._holds_run():
            n = len(run.checkpoints())
            raise RunDirError(
                f"{run.path} already holds a run ({n} checkpoint(s)); resume it with "
                "resume=True (--resume), or choose another output directory"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        if resume:
            run.clean_leftovers()
        return run

    def _holds_run(self) -> bool:
        if self.config_path.exists() or self.metrics_path.exists():
            return True
        return any(
            parse_checkpoint_step(p.name) is not None for p in self.path.iterdir() if p.is_dir()
        )

    def checkpoint_dir(self, step: int) -> Path:
        """The folder of the checkpoint at ``step``: ``ckpt-{step:08d}`` (it may not exist).

        Raises:
            ValueError: when ``step`` is not a non-negative integer.
        """
        _check_step(step)
        return self.path / f"ckpt-{step:08d}"

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        model_config: dict[str, Any],
        **state: Any,
    ) -> Path:
        """Write ``ckpt-STEP/`` (``checkpoint.pt`` and ``config.json``), atomically as a folder.

        A checkpoint already at ``step`` is replaced. If the process dies mid-save, the
        previous checkpoints are untouched and no partial ``ckpt-STEP/`` appears.

        Args:
            step: the iteration, saved as the checkpoint's iteration.
            model: the model (plain, compiled or wrapped).
            optimizer: its optimizer, or ``None``.
            model_config: the model config as a JSON-serialisable dict (``config.json``).
            **state: extra state for :func:`~lmforge.train.checkpoint.save_checkpoint`.

        Returns:
            The checkpoint folder.

        Raises:
            ValueError: when ``step`` is invalid, ``model_config`` is not JSON-serialisable,
                or ``state`` cannot be saved (nothing is written).
            OSError: when writing fails; nothing is left behind.
        """
        config_text = _config_text(model_config)
        tmp = self.stage(step)
        try:
            save_checkpoint(tmp / CHECKPOINT_FILE, model, optimizer, step, **state)
            return self.publish(tmp, step, config_text)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def stage(self, step: int) -> Path:
        """Create the hidden temp folder a checkpoint at ``step`` is written into.

        For a sharded checkpoint rank 0 stages the folder and sends its path to the other
        ranks, every rank writes its files into it, and rank 0 calls :meth:`publish` once
        all are done (or deletes the folder on failure).

        Raises:
            ValueError: when ``step`` is invalid.
        """
        tmp = temp_name(self.checkpoint_dir(step), "tmp")
        tmp.mkdir()
        return tmp

    def publish(self, tmp: Path, step: int, model_config: dict[str, Any] | str) -> Path:
        """Write ``config.json`` into the complete staged folder ``tmp`` and rename it into
        place as ``ckpt-STEP/`` (replacing a checkpoint already at ``step``).

        Args:
            tmp: the folder from :meth:`stage`, with the checkpoint files written.
            step: its step.
            model_config: the model config (a JSON-serialisable dict, or its JSON text).

        Returns:
            The checkpoint folder.

        Raises:
            ValueError: when ``model_config`` is not JSON-serialisable (``tmp`` is kept).
            OSError: when writing fails.
        """
        final = self.checkpoint_dir(step)
        text = model_config if isinstance(model_config, str) else _config_text(model_config)
        write_text_atomic(tmp / MODEL_CONFIG_FILE, text)
        self._move_into_place(tmp, final)
        log.info("saved checkpoint %s", final)
        return final

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        old = None
        if final.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside first
            old = temp_name(final, "old")
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """The complete checkpoints, oldest first.

        Returns:
            ``(step, folder)`` for each ``ckpt-<digits>/`` that holds a ``checkpoint.pt`` or a
            sharded (DCP) checkpoint, sorted by step; empty when there are none or the folder
            does not exist.
        """
        if not self.path.is_dir():
            return []
        found = []
        for p in self.path.iterdir():
            step = parse_checkpoint_step(p.name)
            if step is not None and ((p / CHECKPOINT_FILE).is_file() or is_dcp(p)):
                found.append((step, p))
        return sorted(found)

    def latest(self) -> Path | None:
        """The folder of the newest complete checkpoint, or ``None`` when there is none."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def prune(self, keep_last: int | None) -> list[Path]:
        """Delete all but the newest ``keep_last`` checkpoints.

        Args:
            keep_last: how many checkpoints to keep; ``0`` or ``None`` keeps all. The newest
                is never deleted.

        Returns:
            The folders deleted, oldest first.

        Raises:
            ValueError: when ``keep_last`` is negative or not an integer.
        """
        if keep_last is None or keep_last == 0:
            return []
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
            raise ValueError(f"keep_last must be an integer >= 0 or None, got {keep_last!r}")
        doomed = [p for _, p in self.checkpoints()[:-keep_last]]
        for p in doomed:
            # rename first: a crash mid-delete must not leave a half-deleted ckpt-STEP/
            trash = temp_name(p, "deleting")
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
            log.info("pruned checkpoint %s", p)
        return doomed

    def clean_leftovers(self) -> int:
        """Remove what interrupted writes left behind (hidden ``.tmp``/``.old``/``.deleting``).

        A checkpoint that was being replaced when the process died (only its ``.old`` copy
        remains) is moved back into place rather than deleted.

        Returns:
            How many leftovers were removed or restored.
        """
        count = 0
        for p in sorted(self.path.iterdir()) if self.path.is_dir() else []:
            m = _LEFTOVER.fullmatch(p.name)
            if m is None:
                continue
            original = self.path / m.group(1)
            if m.group(2) == "old" and p.is_dir() and not original.exists():
                os.replace(p, original)
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            count += 1
        if count:
            log.info("cleaned %d leftover(s) of interrupted writes in %s", count, self.path)
        return count
