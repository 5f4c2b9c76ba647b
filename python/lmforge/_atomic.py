"""Atomic file writes, the one protocol every lmforge artefact is written with.

A temp file in the target's folder (so the rename never crosses filesystems) is written,
flushed and fsynced, then ``os.replace``-d over the target, and the folder is fsynced so the
rename itself survives a power loss. A reader therefore sees the old file or the new one, never
half of one, and an interrupted write leaves no file that looks valid. Temp names are hidden
(``.{name}.{12 hex}.{kind}``), and files are created with ``0o666`` minus the umask (not
``mkstemp``'s ``0o600``, which would hide artefacts from the rest of a shared group).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Union

__all__ = ["fsync_dir", "temp_name", "write_atomic", "write_atomic_path", "write_text_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(path: PathLike) -> None:
    """Fsync a folder so that renames into it survive a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def temp_name(target: Path, kind: str) -> Path:
    """A fresh hidden name beside ``target``: ``.{name}.{12 hex}.{kind}`` (``tmp``, ``old``...)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.{kind}")


def write_atomic(path: PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically, ``write`` filling the temp file opened for binary writing.

    Raises:
        OSError: the folder is missing or not writable; whatever ``write`` raises. In every
            case the file at ``path`` is left as it was and no temp file remains.
    """
    target = Path(path)
    tmp = temp_name(target, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_atomic_path(path: PathLike, write: Callable[[Path], object]) -> None:
    """Like :func:`write_atomic` for writers that want a path (e.g. ``safetensors.save_file``)."""
    target = Path(path)
    tmp = temp_name(target, "tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write UTF-8 text atomically (``\\n`` line ends on every platform)."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))
