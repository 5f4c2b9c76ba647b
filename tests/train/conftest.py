"""Small real token files (the bundled stories sample, a 512-token tokenizer) for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge import Tokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="session")
def stories_data(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> dict[str, Path]:
    """``tokenizer.json``, ``train.bin``, ``val.bin`` from the first 600 KB of the sample."""
    root = tmp_path_factory.mktemp("stories")
    text = sample_corpus.read_text(encoding="utf-8")[:600_000]
    docs = [d for d in text.split(EOT) if d.strip()][:-1]
    (root / "train.txt").write_text(EOT.join(docs[:-4]) + EOT, encoding="utf-8")
    (root / "val.txt").write_text(EOT.join(docs[-4:]) + EOT, encoding="utf-8")
    tok = Tokenizer.train(root / "train.txt", 512, num_threads=1, progress=False)
    tok.save(root / "tokenizer.json")
    tok.encode_files(root / "train.txt", root / "train.bin", progress=False, num_threads=1)
    tok.encode_files(root / "val.txt", root / "val.bin", progress=False, num_threads=1)
    return {
        "tokenizer": root / "tokenizer.json",
        "train": root / "train.bin",
        "val": root / "val.bin",
    }
