"""Tokenizers trained once per session on the bundled sample corpus, one per pattern."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge import Tokenizer


@pytest.fixture(scope="session", params=["gpt2", "cl100k", "o200k"])
def trained(request: pytest.FixtureRequest, sample_corpus: Path) -> Tokenizer:
    return Tokenizer.train(sample_corpus, 1024, pattern=request.param, progress=False)


@pytest.fixture(scope="session")
def trained_gpt2(sample_corpus: Path) -> Tokenizer:
    return Tokenizer.train(sample_corpus, 1024, progress=False)
