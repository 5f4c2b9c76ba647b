"""The ``lmforge`` command: quickstart and tokenizer training, through main() and a subprocess."""

from __future__ import annotations

import subprocess
import sys

from lmforge import Tokenizer
from lmforge.cli import main


def test_quickstart(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bytes per token" in out and "saved" in out
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert len(tok) == 4096
    assert tok.decode(tok.encode("Once upon a time")) == "Once upon a time"


def test_tokenizer_train(tmp_path, capsys, sample_corpus):
    out = tmp_path / "tok.json"
    argv = ["tokenizer", "train", str(sample_corpus), "--vocab-size", "500"]
    argv += ["--special-token", "<|endoftext|>", "--special-token", "<|pad|>"]
    argv += ["--pattern", "cl100k", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    tok = Tokenizer.load(out)
    assert (len(tok), tok.pattern, list(tok.special_tokens)) == (
        500,
        "cl100k",
        ["<|endoftext|>", "<|pad|>"],
    )
    assert "saved" in capsys.readouterr().out


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    argv = ["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "300"]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error:") and "missing.txt" in err
    assert "Traceback" not in err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("lmforge ")
