"""``train.objective = "mlm"``: the trainer builds the encoder, masks the stories' windows, and
the masked-token loss falls; checkpoints, resume, evaluation and the CLI around an MLM run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_trainer import interrupt_after

from lmforge import Tokenizer
from lmforge.cli import main
from lmforge.model import Encoder
from lmforge.model.config import ModelConfig
from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS
from lmforge.train.artifacts import load_trained
from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer

EOT = "<|endoftext|>"
TINY = [
    "model.vocab_size=512",
    "model.context_length=64",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=192",
    "optim.warmup_iters=5",
    "train.batch_size=8",
    "train.compile=false",
    "train.device=cpu",
    "train.progress=false",
    'train.objective="mlm"',
]


@pytest.fixture(scope="module")
def mlm_data(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> dict[str, Path]:
    """The first 300 KB of the stories sample, with a tokenizer that has the encoder specials."""
    root = tmp_path_factory.mktemp("mlm")
    docs = [d for d in sample_corpus.read_text(encoding="utf-8")[:300_000].split(EOT) if d]
    (root / "train.txt").write_text(EOT.join(docs[:-3]) + EOT, encoding="utf-8")
    (root / "val.txt").write_text(EOT.join(docs[-3:-1]) + EOT, encoding="utf-8")
    specials = (EOT, *ENCODER_SPECIAL_TOKENS)
    tok = Tokenizer.train(root / "train.txt", 500, special_tokens=specials, progress=False)
    tok.save(root / "tokenizer.json")
    for name in ("train", "val"):
        tok.encode_files(root / f"{name}.txt", root / f"{name}.bin", progress=False)
    return {
        "tokenizer": root / "tokenizer.json",
        "train": root / "train.bin",
        "val": root / "val.bin",
    }


def config(data: dict[str, Path], out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_run_config(
        "stories-17M",
        [
            *TINY,
            f'train.train_data="{data["train"]}"',
            f'train.val_data="{data["val"]}"',
            f'train.tokenizer="{data["tokenizer"]}"',
            f'train.out_dir="{out}"',
            *extra,
        ],
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mlm_run_lowers_the_masked_token_loss(mlm_data, tmp_path, capsys):
    extra = ["train.max_iters=60", "optim.lr=3e-3", "train.log_interval=10"]
    cfg = config(mlm_data, tmp_path / "run", *extra, "train.eval_interval=30")
    assert cfg.model.causal is False  # the objective makes the model bidirectional
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, Encoder)
    result = trainer.fit()
    lines = records(result.run_dir)
    losses = {r["step"]: r["loss"] for r in lines if "loss" in r}
    # from about ln(500) = 6.2 (uniform) to below the token-frequency level in 60 steps
    assert losses[10] - losses[60] > 0.6, losses
    assert all(0 <= r["accuracy"] <= 1 for r in lines if "loss" in r)
    val = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in val] == [30, 60] and val[1]["val_loss"] < val[0]["val_loss"]
    assert val[1]["val_loss"] < math.log(500) - 0.7
    assert all(0 < r["val_accuracy"] < 1 for r in val)
    assert result.val is not None and result.val.bits_per_byte is None
    assert not (result.run_dir / "sample.txt").exists()  # the preset's sample_tokens: skipped

    trained = load_trained(result.run_dir)
    assert isinstance(trained.model, Encoder) and trained.config.causal is False
    assert main(["eval", str(result.run_dir), "--data", str(mlm_data["val"])]) == 0
    assert "masked-token loss" in capsys.readouterr().out
    assert main(["sample", str(result.run_dir), "--max-new-tokens", "5"]) == 2
    assert "cannot generate" in capsys.readouterr().err


def test_mlm_resume_is_bit_identical(mlm_data, tmp_path, monkeypatch):
    extra = ["train.max_iters=8", "train.ckpt_interval=4", "train.log_interval=1"]
    extra += ["train.eval_interval=0", "train.keep_checkpoints=0"]
    whole = Trainer(config(mlm_data, tmp_path / "a", *extra)).fit()
    interrupt_after(monkeypatch, 4, lambda: Trainer(config(mlm_data, tmp_path / "b", *extra)))
    torch.manual_seed(1)
    Trainer(config(mlm_data, tmp_path / "b", *extra), resume=True).fit()

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in records(run) if "loss" in r}

    assert losses(tmp_path / "b") == losses(whole.run_dir)
    with pytest.raises(ValueError, match="train.mlm_probability"):
        more = [*extra, "train.max_iters=10", "train.mlm_probability=0.2"]
        Trainer(config(mlm_data, tmp_path / "b", *more), resume=True)


def test_objective_and_attention_must_agree(mlm_data, tmp_path, stories_data):
    with pytest.raises(ValueError, match='train it with train.objective = "mlm"'):
        config(mlm_data, tmp_path / "r", 'train.objective="clm"', "model.causal=false")
    with pytest.raises(ValueError, match="train.objective must be one of"):
        config(mlm_data, tmp_path / "r", 'train.objective="mask"')
    with pytest.raises(ValueError, match="needs train.tokenizer"):
        load_run_config(
            "stories-17M",
            [*TINY, f'train.train_data="{mlm_data["train"]}"', 'train.tokenizer=""'],
        )
    with pytest.raises(ValueError, match="mlm_probability"):
        config(mlm_data, tmp_path / "r", "train.mlm_probability=1.5")
    # a tokenizer without [CLS]/[MASK]: the error says how to add them
    plain = config(stories_data, tmp_path / "r", "train.max_iters=5")
    with pytest.raises(ValueError, match=r"no \[CLS\], \[SEP\], \[MASK\], \[PAD\].*--encoder"):
        Trainer(plain)


def test_causal_default_is_unchanged():
    assert ModelConfig(vocab_size=8, context_length=4, d_model=8, n_layers=1, n_heads=2).causal
