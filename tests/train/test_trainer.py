"""The trainer on real text (CPU): the loss falls, resume is bit-identical, a NaN stops the run
with the last good checkpoint kept, and the CLI commands around a run work."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.cli import main
from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer, TrainingError

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
    "train.sample_tokens=0",
]


def tiny_config(data, out, *extra):
    overrides = [
        *TINY,
        f'train.train_data="{data["train"]}"',
        f'train.val_data="{data["val"]}"',
        f'train.tokenizer="{data["tokenizer"]}"',
        f'train.out_dir="{out}"',
        *extra,
    ]
    return load_run_config("stories-17M", overrides)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def interrupt_after(monkeypatch, steps: int, make) -> None:  # type: ignore[no-untyped-def]
    """Fit ``make()``'s trainer until the process dies in step ``steps + 1`` (a
    ``KeyboardInterrupt`` there), leaving what it checkpointed; ``Trainer._step`` is restored."""
    step = Trainer._step
    calls = {"n": 0}

    def crash(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == steps + 1:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "_step", crash)
    with pytest.raises(KeyboardInterrupt):
        make().fit()
    monkeypatch.setattr(Trainer, "_step", step)


def test_loss_falls_on_real_text(stories_data, tmp_path, caplog):
    cfg = tiny_config(
        stories_data,
        tmp_path / "run",
        "train.max_iters=60",
        "optim.lr=3e-3",
        "train.log_interval=10",
        "train.eval_interval=30",
    )
    with caplog.at_level("INFO", logger="lmforge.train.trainer"):
        result = Trainer(cfg).fit()
    assert "12·L·d²" in caplog.text and "d_model/n_layers" in caplog.text  # the shape report
    assert "precision: weights float32 (train.param_dtype auto); compute float32" in caplog.text
    losses = train_losses(result.run_dir)
    assert losses[10] - losses[60] > 1.0, losses
    assert result.val is not None and result.val.loss < math.log(512) - 1.0
    assert 0 < result.val.bits_per_byte < 8
    assert result.tokens == 60 * 8 * 64
    val = [r for r in records(result.run_dir) if "val_loss" in r]
    assert [r["step"] for r in val] == [30, 60] and val[1]["val_loss"] < val[0]["val_loss"]
    assert (result.run_dir / "tokenizer.json").is_file()
    assert (result.run_dir / "config.toml").is_file()


def test_resume_is_bit_identical(stories_data, tmp_path, monkeypatch):
    extra = ["train.max_iters=8", "train.ckpt_interval=4", "train.log_interval=1"]
    extra += ["train.eval_interval=0", "train.keep_checkpoints=0"]
    whole = Trainer(tiny_config(stories_data, tmp_path / "a", *extra)).fit()

    interrupt_after(
        monkeypatch, 4, lambda: Trainer(tiny_config(stories_data, tmp_path / "b", *extra))
    )
    torch.manual_seed(12345)  # resume must not depend on the process's RNG state
    resumed = Trainer(tiny_config(stories_data, tmp_path / "b", *extra), resume=True)
    assert resumed.iteration == 4
    resumed.fit()
    assert train_losses(tmp_path / "b") == train_losses(whole.run_dir)
    a = torch.load(whole.run_dir / "ckpt-00000008" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt-00000008" / "checkpoint.pt", weights_only=False)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_nan_loss_stops_and_keeps_last_good_checkpoint(stories_data, tmp_path, monkeypatch):
    extra = ["train.max_iters=10", "train.ckpt_interval=2", "train.log_interval=1"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    step = Trainer._step

    def nan_at_3(self):
        loss, ce, norm, metrics = step(self)
        if self.iteration == 2:  # the third step (0-based count before the increment)
            loss = loss * float("nan")
        return loss, ce, norm, metrics

    monkeypatch.setattr(Trainer, "_step", nan_at_3)
    with pytest.raises(TrainingError, match="loss \\(nan\\).*ckpt-00000002"):
        trainer.fit()
    assert [p.name for p in sorted((tmp_path / "run").glob("ckpt-*"))][-1] == "ckpt-00000002"


def test_non_finite_gradient_is_never_checkpointed(stories_data, tmp_path, monkeypatch):
    """An inf gradient at a checkpoint step: the loss of that step is still finite, yet the
    update is poisoned, so the checkpoint of that step must not be written."""
    extra = ["train.max_iters=10", "train.ckpt_interval=2", "train.log_interval=5"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    backward = torch.Tensor.backward

    def poisoned(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        if trainer.iteration == 3:  # the fourth step, a checkpoint step
            next(trainer.model.parameters()).grad.view(-1)[0] = float("inf")

    monkeypatch.setattr(torch.Tensor, "backward", poisoned)
    with pytest.raises(TrainingError, match="gradient norm .*ckpt-00000002"):
        trainer.fit()
    assert [p.name for p in sorted((tmp_path / "run").glob("ckpt-*"))][-1] == "ckpt-00000002"


def test_resume_applies_new_optimizer_settings_and_refuses_model_changes(stories_data, tmp_path):
    extra = ["train.max_iters=6", "train.eval_interval=0", "train.log_interval=1"]
    Trainer(tiny_config(stories_data, tmp_path / "run", *extra)).fit()
    more = [*extra, "train.max_iters=8"]
    with pytest.raises(ValueError, match="model.rope_theta \\(checkpoint 10000.0, now 500.0\\)"):
        Trainer(
            tiny_config(stories_data, tmp_path / "run", *more, "model.rope_theta=500.0"),
            resume=True,
        )
    with pytest.raises(ValueError, match="does not fit this model: missing keys"):
        Trainer(tiny_config(stories_data, tmp_path / "run", *more, "model.n_layers=3"), resume=True)
    with pytest.raises(ValueError, match="train.batch_size"):
        Trainer(
            tiny_config(stories_data, tmp_path / "run", *more, "train.batch_size=4"), resume=True
        )
    trainer = Trainer(
        tiny_config(stories_data, tmp_path / "run", *more, "optim.weight_decay=0.0"), resume=True
    )
    assert trainer.iteration == 6
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)
    trainer.fit()
    assert sorted(train_losses(tmp_path / "run")) == list(range(1, 9))


def test_cuda_oom_becomes_an_actionable_error(stories_data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", "train.max_iters=6"))

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "step_model", oom)
    with pytest.raises(TrainingError, match="out of memory.*estimated peak.*batch_size"):
        trainer.fit()


def test_resume_without_checkpoint_starts_afresh(stories_data, tmp_path):
    trainer = Trainer(tiny_config(stories_data, tmp_path / "new", "train.max_iters=6"), resume=True)
    assert trainer.iteration == 0 and (tmp_path / "new" / "config.toml").is_file()


def test_eot_id_comes_from_the_data_so_document_mask_just_works(stories_data, tmp_path):
    extra = ["train.max_iters=6", "model.document_mask=true"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    assert trainer.config.model.eot_id == trainer.train_files[0].header.eot_id is not None
    trainer.fit()
    with pytest.raises(ValueError, match="model.eot_id is 3 but the training data"):
        Trainer(tiny_config(stories_data, tmp_path / "other", *extra, "model.eot_id=3"))


def test_schedule_longer_than_the_run_is_refused_up_front(stories_data, tmp_path):
    with pytest.raises(ValueError, match="warmup_iters .*lower optim.warmup_iters"):
        Trainer(tiny_config(stories_data, tmp_path / "run", "train.max_iters=2"))


def test_vocab_smaller_than_tokenizer_is_refused(stories_data, tmp_path):
    cfg = tiny_config(stories_data, tmp_path / "run", "train.max_iters=6", "model.vocab_size=256")
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(cfg)


def test_cli_train_sample_eval_plot_export(stories_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", "stories-17M", "--data", str(stories_data["train"])]
    argv += ["--val-data", str(stories_data["val"]), "--tokenizer", str(stories_data["tokenizer"])]
    argv += ["--out", str(run)]
    for item in [*TINY, "train.max_iters=6", "train.eval_interval=6", "train.sample_tokens=10"]:
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained 6 steps" in out and "bits/byte" in out and "sample:" in out

    assert main(["sample", str(run), "--max-new-tokens", "8", "--prompt", "Once"]) == 0
    assert capsys.readouterr().out.startswith("Once")
    assert main(["sample", str(run), "--prompt", "Once upon a time " * 40]) == 2
    assert "shorten it" in capsys.readouterr().err
    argv_resume = ["train", "--out", str(run), "--resume", "--set", "train.max_iters=8"]
    assert main(argv_resume) == 0  # the run's own config.toml, extended by two steps
    assert "trained 8 steps" in capsys.readouterr().out
    assert main(["eval", str(run), "--data", str(stories_data["val"]), "--batches", "2"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(run), "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "model.safetensors").is_file()
    lora = tmp_path / "lora.pt"
    argv = ["finetune", str(run), "--data", str(stories_data["train"]), "--out", str(lora)]
    assert main([*argv, "--steps", "3", "--rank", "2", "--no-progress"]) == 0
    assert "trainable of" in capsys.readouterr().out and lora.is_file()
    argv = ["quantize", str(run), "--out", str(tmp_path / "q"), "--data", str(stories_data["val"])]
    assert main([*argv, "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "perplexity on" in out and (tmp_path / "q" / "quantized.pt").is_file()


def test_mixture_logs_the_realised_mixture_and_resumes_exactly(stories_data, tmp_path, monkeypatch):
    two = f'train.train_data=["{stories_data["train"]}", "{stories_data["val"]}"]'
    extra = [two, "train.mixture_alpha=0.3", "train.max_iters=8", "train.ckpt_interval=4"]
    extra += ["train.log_interval=2", "train.eval_interval=0", "train.keep_checkpoints=0"]
    whole = Trainer(tiny_config(stories_data, tmp_path / "a", *extra)).fit()
    mixes = [r for r in records(whole.run_dir) if "mix/train" in r]
    assert [r["step"] for r in mixes] == [2, 4, 6, 8]
    assert all(r["mix/train"] + r["mix/val"] == pytest.approx(1.0) for r in mixes)
    assert mixes[-1]["mix/val"] > 0.1 and mixes[-1]["epoch/val"] > mixes[-1]["epoch/train"]

    interrupt_after(
        monkeypatch, 4, lambda: Trainer(tiny_config(stories_data, tmp_path / "b", *extra))
    )
    Trainer(tiny_config(stories_data, tmp_path / "b", *extra), resume=True).fit()
    assert records(tmp_path / "b")[-1]["mix/val"] == mixes[-1]["mix/val"]
    assert train_losses(tmp_path / "b") == train_losses(whole.run_dir)
    with pytest.raises(ValueError, match="train.mixture_alpha \\(checkpoint 0.3, now 0.5\\)"):
        Trainer(
            tiny_config(stories_data, tmp_path / "b", *extra, "train.mixture_alpha=0.5"),
            resume=True,
        )


@pytest.mark.gpu
def test_cuda_graph_replay_trains_like_plain_compile(stories_data, tmp_path):
    """``compile_mode=reduce-overhead`` replays the step as CUDA graphs: same losses as the
    default mode (the same kernels; rounding may differ in the last bits), metrics logged.
    Float32 weights, so that last-bit differences stay in the last bits (bf16 weights, the
    default on one GPU, under graphs: ``test_param_dtype``)."""
    runs = {}
    for mode in ("default", "reduce-overhead"):
        cfg = tiny_config(
            stories_data,
            tmp_path / mode,
            "train.max_iters=8",
            "train.log_interval=2",
            "train.eval_interval=4",
            "train.device=cuda",
            "train.compile=true",
            f'train.compile_mode="{mode}"',
            'train.param_dtype="float32"',
        )
        Trainer(cfg).fit()
        runs[mode] = train_losses(tmp_path / mode)
    assert sorted(runs["default"]) == [2, 4, 6, 8]
    for step, loss in runs["default"].items():
        assert runs["reduce-overhead"][step] == pytest.approx(loss, rel=1e-4), step
    logged = records(tmp_path / "reduce-overhead")
    assert any("logits/max_abs" in r for r in logged)
