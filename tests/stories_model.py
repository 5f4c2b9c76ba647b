"""Train a small model on the first part of the bundled stories (CPU, a few seconds): the
shared set-up of the analysis and quantization fixtures, which differ in steps and held-out data."""

from __future__ import annotations

from pathlib import Path

from lmforge import Tokenizer
from lmforge.train.artifacts import TrainedModel, load_trained
from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer

TRAIN_FRACTION = 0.8  # the model trains on the first 80% of the corpus; held-out data comes after

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
    "train.compile=false",
    "train.device=cpu",
    "train.dtype=fp32",
    "train.progress=false",
    "train.sample_tokens=0",
    "train.eval_interval=0",
    "train.log_interval=50",
]


def train_on_stories(root: Path, corpus: Path, max_iters: int) -> tuple[TrainedModel, str, int]:
    """Train d_model 64, 2 layers, context 64 for ``max_iters`` AdamW steps under ``root``.

    Returns:
        The trained model (with its tokenizer and run), the whole corpus text, and the offset
        where the training part ends.
    """
    text = corpus.read_text(encoding="utf-8")
    cut = int(len(text) * TRAIN_FRACTION)
    (root / "train.txt").write_text(text[:cut], encoding="utf-8")
    tok = Tokenizer.train(root / "train.txt", 512, num_threads=1, progress=False)
    tok.save(root / "tokenizer.json")
    tok.encode_files(root / "train.txt", root / "train.bin", progress=False, num_threads=1)
    overrides = [
        *TINY,
        f"train.max_iters={max_iters}",
        f'train.train_data="{root / "train.bin"}"',
        f'train.tokenizer="{root / "tokenizer.json"}"',
        f'train.out_dir="{root / "run"}"',
    ]
    result = Trainer(load_run_config("stories-17M", overrides)).fit()
    trained = load_trained(result.run_dir, "cpu")
    assert trained.tokenizer is not None
    return trained, text, cut
