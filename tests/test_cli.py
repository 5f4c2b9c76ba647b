"""The ``lmforge`` command: quickstart, tokenizer train and encode, via main() and a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lmforge import Tokenizer
from lmforge.cli import main
from lmforge.data import TokenFile


def test_quickstart(tmp_path, capsys):
    argv = ["quickstart", "--out", str(tmp_path), "--no-progress", "--max-iters", "6"]
    assert main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bytes per token" in out and "saved" in out
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert len(tok) == 4096
    train = TokenFile.open(tmp_path / "train.bin", fingerprint=tok.fingerprint)
    val = TokenFile.open(tmp_path / "val.bin", fingerprint=tok.fingerprint)
    assert f"{len(train) + len(val):,} tokens" in out
    assert 0 < len(val) < len(train) / 10
    assert tok.decode(tok.encode("Once upon a time")) == "Once upon a time"
    # the model part: 6 steps, an evaluation, a checkpoint, a plot and a sample
    run = tmp_path / "run"
    assert "trained 6 steps" in out and "val loss" in out and "sample:" in out
    assert (run / "metrics.jsonl").is_file() and (run / "config.toml").is_file()
    assert list(run.glob("ckpt-*/checkpoint.pt")) and list(run.glob("**/*.png"))


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


def test_tokenizer_encode(tmp_path, capsys, sample_corpus):
    tok = Tokenizer.train(sample_corpus, 400, num_threads=1, progress=False)
    tok.save(tmp_path / "tok.json")
    texts = ["Once upon a time, there was a little cat.", "The dog ran home. The end."]
    inputs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, text in zip(inputs, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    argv = ["tokenizer", "encode", *map(str, inputs), "--tokenizer", str(tmp_path / "tok.json")]
    argv += ["--no-progress", "--threads", "1", "--out"]
    eot = tok.special_tokens["<|endoftext|>"]

    assert main([*argv, str(tmp_path / "train.bin")]) == 0
    tf = TokenFile.open(tmp_path / "train.bin")
    assert tf.tokens.dtype == np.uint16 and tf.header.eot_id == eot
    assert tf.tokens.tolist() == [*tok.encode(texts[0]), eot, *tok.encode(texts[1]), eot]
    assert [s["bytes"] for s in tf.header.sources] == [len(t.encode()) for t in texts]
    out = capsys.readouterr().out
    assert f"wrote {len(tf):,} uint16 tokens" in out and "tokens/byte" in out and "train.bin" in out

    assert main([*argv, str(tmp_path / "raw.bin"), "--no-eot", "--dtype", "uint32"]) == 0
    tf = TokenFile.open(tmp_path / "raw.bin")
    assert tf.tokens.dtype == np.uint32 and tf.header.eot_id is None
    assert tf.tokens.tolist() == tok.encode(texts[0]) + tok.encode(texts[1])


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


def test_accounting_command(capsys):
    assert (
        main(["accounting", "--config", "gpt2-124M", "--batch", "8", "--set", "n_kv_heads=4"]) == 0
    )
    out = capsys.readouterr().out
    assert "12·L·d²" in out and "heads 12 (kv 4)" in out
    assert all(kind in out for kind in ("MHA", "GQA", "MQA", "MLA"))
    assert main(["accounting", "--config", "gpt2-124M", "--set", "n_kv_heads=5"]) == 2
    assert "divisible by n_kv_heads" in capsys.readouterr().err
    assert main(["accounting", "--config", "gpt2-124M", "--set", "train.batch_size=2"]) == 2
    assert "only model.*" in capsys.readouterr().err


def test_memory_command_prints_the_run_configs_estimate(capsys):
    from lmforge.accounting import count_params, format_bytes
    from lmforge.train.config import load_run_config
    from lmforge.train.runtime import run_memory_estimate

    def peak(*sets: str) -> str:
        argv = ["memory", "--config", "gpt2-124M"]
        for item in sets:
            argv += ["--set", item]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "parameters" in out and "<- peak" in out
        return out.splitlines()[-1]

    small = ("train.batch_size=4", 'train.param_dtype="bfloat16"', 'optim.moment_dtype="bfloat16"')
    config = load_run_config("gpt2-124M", ["train.train_data=unused", *small])
    est = run_memory_estimate(config)
    n = count_params(config.model).total
    assert est.parameters == 2 * n and est.by_dtype("optimizer_state") == {
        "bf16": 4 * n,
        "fp32": 4 * n,
    }
    assert peak(*small) == f"estimated peak: {format_bytes(est.total)} (CUDA; the caching " + (
        "allocator adds its slack)"
    )
    # the settings reach the estimate: a smaller batch and bf16 moments need less
    default = run_memory_estimate(load_run_config("gpt2-124M", ["train.train_data=unused"]))
    assert est.total < default.total
    assert peak() == f"estimated peak: {format_bytes(default.total)} (CUDA; the caching " + (
        "allocator adds its slack)"
    )
    assert main(["memory", "--config", "gpt2-124M", "--set", 'train.param_dtype="fp8"']) == 2
    assert "param_dtype must be one of" in capsys.readouterr().err
    # "auto" stores bf16 weights in one process, float32 ones under torchrun
    assert main(["memory", "--config", "gpt2-124M"]) == 0
    assert "weights bfloat16" in capsys.readouterr().out
    assert main(["memory", "--config", "gpt2-124M", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "weights float32" in out and "FSDP" not in out
    fsdp = ["--set", "train.strategy=fsdp", "--world-size", "8"]
    assert main(["memory", "--config", "gpt2-124M", *fsdp]) == 0
    assert "FSDP's shards" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["memory", "--config", "gpt2-124M", "--world-size", "0"])
    assert "must be an integer >= 1" in capsys.readouterr().err
