"""Real token files for the data tests: a tiny tokenizer trained once, files encoded per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lmforge import Tokenizer
from lmforge.data import TokenFile

TINY_VOCAB = 300  # 256 bytes + 43 merges + <|endoftext|>: trains in milliseconds


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    """The first ~20 KB of the sample corpus, as a text file."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(sample_corpus.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus: Path) -> Tokenizer:
    return Tokenizer.train(tiny_corpus, TINY_VOCAB, num_threads=1, progress=False)


@pytest.fixture
def encode_tiny(
    tmp_path: Path, tiny_corpus: Path, tiny_tokenizer: Tokenizer
) -> Callable[..., Path]:
    """``encode_tiny(name="train.bin", **kw)`` encodes the tiny corpus; returns the .bin path."""

    def encode(name: str = "train.bin", **kwargs: object) -> Path:
        out = tmp_path / name
        tf = tiny_tokenizer.encode_files(tiny_corpus, out, num_threads=1, progress=False, **kwargs)
        assert isinstance(tf, TokenFile)
        return out

    return encode
