"""A small model trained briefly on the bundled stories (CPU, a few seconds) and held-out tokens
of the same corpus, for the quantization tests (the approach of ``tests/analysis/conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmforge import Tokenizer
from lmforge.model import Transformer
from lmforge.train.artifacts import load_trained
from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer

TRAIN_FRACTION = 0.8  # the model trains on the first 80% of the corpus; evaluation uses the rest
HELD_OUT_CHARS = 200_000  # enough text for the evaluation windows, cheap to encode

TINY = [
    "model.vocab_size=512",
    "model.context_length=64",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=192",
    "optim.lr=3e-3",
    "optim.warmup_iters=10",
    "train.batch_size=16",
    "train.max_iters=300",
    "train.compile=false",
    "train.device=cpu",
    "train.dtype=fp32",
    "train.progress=false",
    "train.sample_tokens=0",
    "train.eval_interval=0",
    "train.log_interval=50",
]


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
    text = sample_corpus.read_text(encoding="utf-8")
    cut = int(len(text) * TRAIN_FRACTION)
    (root / "train.txt").write_text(text[:cut], encoding="utf-8")
    tok = Tokenizer.train(root / "train.txt", 512, num_threads=1, progress=False)
    tok.save(root / "tokenizer.json")
    tok.encode_files(root / "train.txt", root / "train.bin", progress=False, num_threads=1)
    overrides = [
        *TINY,
        f'train.train_data="{root / "train.bin"}"',
        f'train.tokenizer="{root / "tokenizer.json"}"',
        f'train.out_dir="{root / "run"}"',
    ]
    result = Trainer(load_run_config("stories-17M", overrides)).fit()
    trained = load_trained(result.run_dir, "cpu")
    assert trained.tokenizer is not None
    held_out = np.asarray(
        trained.tokenizer.encode(text[cut : cut + HELD_OUT_CHARS], allowed_special="all"),
        dtype=np.int64,
    )
    return TrainedStories(trained.model, trained.tokenizer, result.run_dir, held_out)
