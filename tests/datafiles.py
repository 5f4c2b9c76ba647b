"""Paths to the real corpora in ../shared/data; tests that need them skip when absent."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared data is optional)")
    return path


def read_shared_text(relative: str, max_bytes: int | None = None) -> str:
    """Text of a shared data file (``.xz`` decompressed), optionally only its first bytes."""
    path = shared_file(relative)
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rb") as f:
        data = f.read() if max_bytes is None else f.read(max_bytes)
    return data.decode("utf-8", errors="ignore")
