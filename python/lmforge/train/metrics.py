"""Metrics logging: one JSON object per line, a progress bar, and optional TensorBoard / W&B.

:class:`MetricsLogger` appends each logged step to ``metrics.jsonl`` as a JSON object
(``{"step": 100, "tokens": 819200, "loss": 3.21, ...}``), updates a tqdm bar with the step, the
loss and the throughput, and forwards the numbers to TensorBoard and Weights & Biases when they
are asked for and installed. :func:`read_metrics` reads the file back (for plots and analysis).

Design choices:

- **JSON Lines, flushed per record.** Appending a line is cheap, a reader never needs the
  whole run, and a crash loses at most the record being written (the file is flushed after each
  record, fsynced on close). A torn last line is tolerated by :func:`read_metrics` and removed
  when the file is opened again for appending, so it never ends up in the middle of the file.
- **Valid JSON only.** NaN and infinity are not JSON (RFC 8259), and Python's ``json`` would
  write them as bare ``NaN``, which other tools reject; non-finite values are written as
  ``null``. A diverged loss then reads back as ``None``, which is also how "not logged" reads.
- **Values converted at log time.** One-element tensors are turned into Python numbers with
  ``.item()`` when logged, and a 1-D tensor ``name`` of two or more elements into one number
  per element, ``name/0``, ``name/1``, ... (a Mixture-of-Experts layer's load per expert is one
  tensor, not 64 graph outputs). That synchronises the device, so callers log every
  ``log_interval`` steps, not every step (nanoGPT's and torchtitan's practice).
- **Resume without doubling back.** ``initial`` is the step a session starts from; records
  after it in an existing file were written by an interrupted session after its last
  checkpoint and are logged again by the resumed one, so they are dropped when the file opens.
- **Optional integrations degrade.** A missing TensorBoard or W&B package logs one warning and
  is skipped; the JSON file is always written, so nothing is lost.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lmforge._atomic import write_atomic

__all__ = ["MetricsError", "MetricsLogger", "NullLogger", "read_metrics"]

log = logging.getLogger(__name__)

_BAR = {"loss": "loss", "val_loss": "val", "tokens_per_s": "tok/s"}  # bar postfix: key -> label

Value = bool | int | float | str | None
"""What a logged value becomes: a Python scalar, a string, or ``None``."""


class MetricsError(ValueError):
    """A metrics file is corrupt (beyond a torn last line) or a value cannot be logged."""


def _entries(name: str, value: Any) -> list[tuple[str, Value]]:
    """``(name, number)`` pairs of one logged value: itself, or a 1-D tensor's elements."""
    if isinstance(value, torch.Tensor) and value.ndim == 1 and value.numel() != 1:
        if value.numel() == 0:
            raise MetricsError(f"metric {name!r} is an empty tensor; log at least one number")
        return [(f"{name}/{j}", x) for j, x in enumerate(value.detach().tolist())]
    return [(name, _to_python(name, value))]


def _to_python(name: str, value: Any) -> Value:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MetricsError(
                f"metric {name!r} is a tensor of shape {tuple(value.shape)}; log one number "
                "(e.g. its mean) or a 1-D tensor (one number per element)"
            )
        return value.detach().item()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise MetricsError(
        f"metric {name!r} is a {type(value).__name__}; log a number, a string, None or a "
        "one-element tensor"
    )


def _json_safe(value: Value) -> Value:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _step_of(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _repair(path: Path, initial: int) -> None:
    """Drop a torn last line, and records after step ``initial``, from an existing file."""
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete one does
    kept = [line for line in lines if (_step_of(line) or 0) <= initial]
    if not tail and len(kept) == len(lines):
        return
    if tail:
        log.warning("%s: dropped a torn last line (the writer stopped mid-record)", path)
    if len(kept) != len(lines):
        log.info("%s: dropped %d record(s) after step %d", path, len(lines) - len(kept), initial)
    data = b"".join(line + b"\n" for line in kept)
    write_atomic(path, lambda f: f.write(data))


class MetricsLogger:
    """Appends metrics to a JSON Lines file; shows a progress bar; feeds TensorBoard / W&B.

    Use as a context manager, or call :meth:`close`.

    Args:
        path: the ``metrics.jsonl`` file; appended to, created (with its folder) if missing.
        tqdm_total: the bar's total (the run's last step), or ``None`` for a plain counter.
        initial: the step this session starts from (a resumed run's checkpoint step): the bar
            starts there and records after it are dropped from the file (see module docstring).
        progress: show the progress bar.
        tensorboard: also log numbers to TensorBoard (``torch.utils.tensorboard``).
        tensorboard_dir: its log folder; default ``tensorboard/`` beside ``path``.
        wandb: also log numbers to Weights & Biases.
        wandb_project: the W&B project.
        run_name: the W&B run name; default the name of ``path``'s folder.
        run_config: the run's config dict, recorded by W&B.

    Raises:
        ValueError: when ``initial`` is not a non-negative integer.
        OSError: when the file cannot be opened for appending.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tqdm_total: int | None = None,
        initial: int = 0,
        progress: bool = True,
        tensorboard: bool = False,
        tensorboard_dir: str | os.PathLike[str] | None = None,
        wandb: bool = False,
        wandb_project: str = "lmforge",
        run_name: str | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(initial, int) or isinstance(initial, bool) or initial < 0:
            raise ValueError(f"initial must be an integer >= 0, got {initial!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair(self.path, initial)
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        self._bar = tqdm(
            total=tqdm_total, initial=initial, unit="step", dynamic_ncols=True, disable=not progress
        )
        self._postfix: dict[str, str] = {}
        self._tensorboard = None
        if tensorboard:
            default_dir = self.path.parent / "tensorboard"
            self._tensorboard = _open_tensorboard(Path(tensorboard_dir or default_dir))
        self._wandb = None
        if wandb:
            name = run_name or self.path.parent.resolve().name
            self._wandb = _open_wandb(wandb_project, name, run_config, self.path.parent)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log(self, step: int, **values: Any) -> dict[str, Value]:
        """Record ``values`` at ``step``: one JSON line, the bar, and any enabled integration.

        Args:
            step: the optimizer step the values belong to.
            **values: numbers, strings, ``None``, one-element tensors or 1-D tensors (read
                with ``.item()``/``.tolist()``, which wait for the device; a 1-D tensor ``k``
                becomes ``k/0``, ``k/1``, ...).

        Returns:
            The record as written, before non-finite numbers became ``null``.

        Raises:
            MetricsError: when a value is of another type or a tensor of two or more dimensions.
            ValueError: when ``step`` is not a non-negative integer or the logger is closed.
        """
        if self._file.closed:
            raise ValueError(f"log() on a closed MetricsLogger ({self.path})")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        record: dict[str, Value] = {"step": step}
        for k, v in values.items():
            record.update(_entries(k, v))
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()
        self._update_bar(record)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tensorboard is not None:
            for k, v in numbers.items():
                self._tensorboard.add_scalar(k, v, step)
        if self._wandb is not None and numbers:
            self._wandb.log(numbers, step=step)
        return record

    def _update_bar(self, record: dict[str, Value]) -> None:
        step = record["step"]
        assert isinstance(step, int)
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        for key, label in _BAR.items():
            v = record.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._postfix[label] = _si(v) if key == "tokens_per_s" else f"{v:.4g}"
        shown = [
            f"{label} {self._postfix[label]}" for label in _BAR.values() if label in self._postfix
        ]
        self._bar.set_postfix_str(" ".join(shown))

    def close(self) -> None:
        """Flush and fsync the file, close the bar and integrations (idempotent)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _open_tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(
            "tensorboard=True, but TensorBoard is not installed (pip install tensorboard); "
            "metrics go to the JSON file only"
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _open_wandb(project: str, name: str, config: dict[str, Any] | None, folder: Path) -> Any:
    try:
        import wandb
    except ImportError:
        log.warning(
            "wandb=True, but Weights & Biases is not installed (pip install wandb); "
            "metrics go to the JSON file only"
        )
        return None
    return wandb.init(project=project, name=name, config=config, dir=str(folder))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file back, one dict per logged record, in file order.

    A torn last line (the writer died mid-record) is skipped with a warning; blank lines are
    ignored. ``null`` values (non-finite numbers when logged) read as ``None``.

    Args:
        path: the metrics file.

    Returns:
        The records; empty for an empty file.

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        MetricsError: when a line other than the last is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {p}: has the run logged a step yet?")
    lines = p.read_bytes().decode("utf-8", errors="replace").split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for n, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not an object")
        except ValueError as e:
            if n == len(numbered) - 1:
                log.warning("%s:%d: skipped a torn last line (%s)", p, lineno, e)
                break
            raise MetricsError(
                f"{p}:{lineno} is not a JSON object ({e}): the file is corrupt; delete or fix "
                "that line"
            ) from None
        records.append(record)
    return records


class NullLogger:
    """A logger that writes nothing: what ranks other than 0 log to in distributed runs."""

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log(self, step: int, **values: Any) -> None:
        return None
