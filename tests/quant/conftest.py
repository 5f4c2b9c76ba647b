"""A small model trained briefly on the bundled stories (CPU, a few seconds) and held-out tokens
of the same corpus, for the quantization tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmforge import Tokenizer
from lmforge.model import Transformer
from stories_model import train_on_stories

HELD_OUT_CHARS = 200_000  # enough text for the evaluation windows, cheap to encode


@dataclass(frozen=True)
class TrainedStories:
    """The trained model (float), its tokenizer, its run directory and held-out token ids."""

    model: Transformer
    tokenizer: Tokenizer
    run_dir: Path
    held_out: np.ndarray


@pytest.fixture(scope="session")
def trained_stories(
    tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path
) -> TrainedStories:
    """Train d_model 64, 2 layers, context 64 for 300 AdamW steps; encode held-out text."""
    root = tmp_path_factory.mktemp("quant")
    trained, text, cut = train_on_stories(root, sample_corpus, max_iters=300)
    assert trained.tokenizer is not None
    held_out = np.asarray(
        trained.tokenizer.encode(text[cut : cut + HELD_OUT_CHARS], allowed_special="all"),
        dtype=np.int64,
    )
    return TrainedStories(trained.model, trained.tokenizer, root / "run", held_out)
