"""The quickstart job: train a tokenizer on the bundled sample corpus, show what it does, and
encode the corpus into a token file ready for training.

The sample (``assets/stories-sample.txt``, 1.9 MB of public-domain children's stories) ships in
the wheel, so ``lmforge quickstart`` runs on a fresh install with no download.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmforge.tokenizer import Tokenizer

SAMPLE_SENTENCE = "Once upon a time, the little rabbit hopped into Mr. McGregor's garden."


def sample_corpus() -> Path:
    """Path of the bundled sample corpus."""
    path = Path(str(resources.files("lmforge") / "assets" / "stories-sample.txt"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundled sample corpus is missing; reinstall lmforge")
    return path


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart made and measured."""

    tokenizer_path: Path
    tokens_path: Path
    n_tokens: int
    corpus_bytes: int
    train_seconds: float
    vocab_size: int
    bytes_per_token: float
    sample_tokens: list[str]


def run_quickstart(
    out_dir: Path, vocab_size: int = 4096, progress: bool = True
) -> QuickstartResult:
    """Trains a ``vocab_size`` tokenizer on the sample corpus and saves it and the encoded corpus
    (``tokenizer.json``, ``train.bin`` + ``train.bin.json``) under ``out_dir``."""
    corpus = sample_corpus()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tok = Tokenizer.train(corpus, vocab_size, progress=progress)
    seconds = time.perf_counter() - start
    path = out_dir / "tokenizer.json"
    tok.save(path)
    text = corpus.read_text(encoding="utf-8")
    ids = tok.encode(text)
    if tok.decode(ids) != text:
        raise RuntimeError("round trip failed: decode(encode(text)) != text")
    sample = [tok.decode([i]) for i in tok.encode(SAMPLE_SENTENCE)]
    tokens = tok.encode_files(corpus, out_dir / "train.bin", progress=progress)
    return QuickstartResult(
        tokenizer_path=path,
        tokens_path=tokens.path,
        n_tokens=len(tokens),
        corpus_bytes=len(text.encode("utf-8")),
        train_seconds=seconds,
        vocab_size=len(tok),
        bytes_per_token=len(text.encode("utf-8")) / max(len(ids), 1),
        sample_tokens=sample,
    )
