"""A small model trained briefly on the bundled stories (CPU, a few seconds), and held-out
paragraphs of the same corpus that it never saw, for the analysis tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge import Tokenizer
from lmforge.model import Transformer
from stories_model import train_on_stories

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class TrainedStories:
    """The trained model, its tokenizer, its run directory, and held-out paragraphs."""

    model: Transformer
    tokenizer: Tokenizer
    run_dir: Path
    paragraphs: list[str]


@pytest.fixture(scope="session")
def trained_stories(
    tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path
) -> TrainedStories:
    """Train d_model 64, 2 layers, context 64 for 150 AdamW steps; held-out paragraphs, shuffled."""
    root = tmp_path_factory.mktemp("analysis")
    trained, text, cut = train_on_stories(root, sample_corpus, max_iters=150)
    assert trained.tokenizer is not None
    lines = [ln.strip() for ln in text[cut:].splitlines()]
    paragraphs = [ln for ln in lines if len(ln) > 80 and EOT not in ln]
    random.Random(0).shuffle(paragraphs)
    return TrainedStories(trained.model, trained.tokenizer, root / "run", paragraphs)
