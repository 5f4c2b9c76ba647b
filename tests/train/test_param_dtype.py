"""``train.param_dtype = "bfloat16"``: every weight stored in bf16 with AdamW's float32 masters.
On the CPU: the run trains like the float32 run of the same seed, checkpoints hold the bf16
weights and their masters, resume is exact (a run keeps its param_dtype, which ``"auto"`` takes
on resume), and the checkpoint loads for sampling as a float32 model; ``"auto"`` keeps float32
weights on the CPU; on CUDA (``gpu``): ``"auto"`` stores bf16 weights and trains like float32
under autocast and graphs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_trainer import interrupt_after, tiny_config, train_losses

from lmforge.cli import main
from lmforge.model.export import load_safetensors
from lmforge.train.artifacts import load_trained
from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer

STEPS = ["train.log_interval=1", "train.eval_interval=0", "train.keep_checkpoints=0"]
BF16 = ['train.param_dtype="bfloat16"']


def _checkpoint(run_dir, step: int) -> dict:
    return torch.load(run_dir / f"ckpt-{step:08d}" / "checkpoint.pt", weights_only=False)


def test_bf16_weights_train_like_float32_and_keep_masters(stories_data, tmp_path):
    steps = [*STEPS, "train.max_iters=30", "optim.lr=3e-3"]
    ref = Trainer(tiny_config(stories_data, tmp_path / "fp32", *steps)).fit().run_dir
    trainer = Trainer(tiny_config(stories_data, tmp_path / "bf16", *steps, *BF16))
    run = trainer.fit().run_dir
    ref_losses, losses = train_losses(ref), train_losses(run)
    assert losses[1] == pytest.approx(ref_losses[1], abs=0.02)  # the same weights, rounded
    assert losses[1] - losses[30] > 1.0, losses  # it learns
    assert losses[30] == pytest.approx(ref_losses[30], abs=0.03)  # and as the float32 run does
    params = list(trainer.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert all(b.dtype == torch.float32 for b in trainer.model.rope.buffers())
    masters = [trainer.optimizer.state[p]["master"] for p in params]
    assert all(m.dtype == torch.float32 for m in masters)
    # each weight is its master rounded; the masters keep what bf16 cannot hold
    assert all(torch.equal(m.bfloat16(), p.detach()) for m, p in zip(masters, params, strict=True))
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters)
    saved = _checkpoint(run, 30)
    assert all(v.dtype == torch.bfloat16 for k, v in saved["model"].items() if "rope" not in k)
    assert sum("master" in s for s in saved["optimizer"]["state"].values()) == len(params)


def test_bf16_weights_resume_exactly(stories_data, tmp_path, monkeypatch):
    extra = [*STEPS, *BF16, "train.max_iters=8", "train.ckpt_interval=4"]
    whole = Trainer(tiny_config(stories_data, tmp_path / "a", *extra)).fit()
    interrupt_after(
        monkeypatch, 4, lambda: Trainer(tiny_config(stories_data, tmp_path / "b", *extra))
    )
    auto = [e for e in extra if e not in BF16]  # "auto" resumes with the run's own dtype
    resumed = Trainer(tiny_config(stories_data, tmp_path / "b", *auto), resume=True)
    assert resumed.iteration == 4 and resumed.config.train.param_dtype == "bfloat16"
    assert 'param_dtype = "bfloat16"' in (tmp_path / "b" / "config.toml").read_text()
    resumed.fit()
    assert train_losses(tmp_path / "b") == train_losses(whole.run_dir)
    a, b = _checkpoint(whole.run_dir, 8), _checkpoint(tmp_path / "b", 8)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["master"], b["optimizer"]["state"][i]["master"])


def test_auto_param_dtype_keeps_float32_weights_on_the_cpu(stories_data, tmp_path):
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *STEPS, "train.max_iters=8"))
    assert trainer.config.train.param_dtype == "float32"  # what the run's config records
    assert 'param_dtype = "float32"' in (tmp_path / "run" / "config.toml").read_text()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_a_bf16_checkpoint_loads_as_a_float32_model(stories_data, tmp_path):
    extra = [*STEPS, *BF16, "train.max_iters=2", "optim.warmup_iters=0"]
    run = Trainer(tiny_config(stories_data, tmp_path / "run", *extra)).fit().run_dir
    trained = load_trained(run)
    weights = _checkpoint(run, 2)["model"]
    for name, p in trained.model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p.detach(), weights[name].float()), name
    idx = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(trained.model(idx).logits).all()
    # exported as bf16: the checkpoint's weights exactly, half the size of a float32 export
    for dtype in ("float32", "bfloat16"):
        assert main(["export", str(run), "--out", str(tmp_path / dtype), "--dtype", dtype]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "auto")]) == 0  # as the run stored
    for folder in ("bfloat16", "auto"):
        exported = load_safetensors(tmp_path / folder)
        for name, p in exported.named_parameters():
            assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), weights[name]), name
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("float32", "bfloat16")}
    assert size["bfloat16"] < 0.51 * size["float32"]
    hf = ["export", str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]
    assert main([*hf, "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (['train.param_dtype="float16"'], "param_dtype must be one of"),
        ([*BF16, "train.dtype=fp32"], 'set train.dtype = "bf16"'),
        ([*BF16, 'optim.name="sgd"'], "master weights.*adamw and adam.*'sgd'"),
        ([*BF16, 'optim.name="muon"'], "master weights.*'muon'"),
    ],
)
def test_param_dtype_settings_are_checked(extra, match):
    with pytest.raises(ValueError, match=match):
        load_run_config("stories-17M", ["train.train_data=unused", *extra])


@pytest.mark.gpu
def test_bf16_weights_on_cuda_train_like_float32_under_graphs(stories_data, tmp_path, caplog):
    """The production path: CUDA bf16 autocast over bf16 weights, the step replayed as CUDA
    graphs, the fused Triton AdamW updating every master (norms and embeddings included), then
    evaluation and sampling at the end."""
    runs = {}
    for dtype in ("float32", "auto"):  # "auto": bf16 weights for one process on CUDA
        extra = [*STEPS, "train.max_iters=30", "optim.lr=3e-3", "train.eval_interval=30"]
        extra += ["train.device=cuda", "train.compile=true", 'train.compile_mode="reduce-overhead"']
        extra += [f'train.param_dtype="{dtype}"', "train.sample_tokens=16"]
        trainer = Trainer(tiny_config(stories_data, tmp_path / dtype, *extra))
        with caplog.at_level("INFO", logger="lmforge.train.trainer"):
            runs[dtype] = train_losses(trainer.fit().run_dir)
        assert "memory model: peak" in caplog.text  # logged at the start of a CUDA run
        params = list(trainer.model.parameters())
        stored = torch.float32 if dtype == "float32" else torch.bfloat16
        assert all(p.dtype == stored and p.is_cuda for p in params)
        assert (tmp_path / dtype / "sample.txt").read_text().strip()
    assert runs["auto"][1] == pytest.approx(runs["float32"][1], abs=0.02)
    assert runs["auto"][30] == pytest.approx(runs["float32"][30], abs=0.05)
    assert runs["auto"][1] - runs["auto"][30] > 1.0


def test_bf16_weights_keep_moe_routers_in_float32(stories_data, tmp_path):
    """The routers' weights stay float32 (the gate decides discrete choices, DeepSeek-V3 keeps
    it in fp32) and train without masters; every other weight is bf16 with its master."""
    moe = ["model.moe.n_routed_experts=4", "model.moe.top_k=2", "model.moe.expert_d_ff=32"]
    extra = [*STEPS, *BF16, *moe, "train.max_iters=6", "optim.warmup_iters=0"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    losses = train_losses(trainer.fit().run_dir)
    assert all(math.isfinite(v) for v in losses.values())
    for name, p in trainer.model.named_parameters():
        router = name.endswith("router.weight")
        assert p.dtype == (torch.float32 if router else torch.bfloat16), name
        assert ("master" in trainer.optimizer.state[p]) != router, name


@pytest.mark.gpu
def test_moe_with_default_weights_on_cuda_trains_under_graphs(stories_data, tmp_path):
    """The default on one GPU with an MoE: bf16 weights beside the routers' float32 ones (two
    dtype buckets in the fused AdamW), the step replayed as CUDA graphs, the loss-free bias
    updated between replays; it learns as the float32-weight run does."""
    moe = ["model.moe.n_routed_experts=8", "model.moe.top_k=2", "model.moe.expert_d_ff=48"]
    moe += ["model.moe.router=sigmoid"]
    runs = {}
    for dtype in ("float32", "auto"):
        extra = [*STEPS, *moe, "train.max_iters=30", "optim.lr=3e-3", "train.device=cuda"]
        extra += ["train.compile=true", 'train.compile_mode="reduce-overhead"']
        extra += [f'train.param_dtype="{dtype}"']
        trainer = Trainer(tiny_config(stories_data, tmp_path / dtype, *extra))
        runs[dtype] = train_losses(trainer.fit().run_dir)
    for name, p in trainer.model.named_parameters():  # the "auto" run
        router = name.endswith("router.weight")
        assert p.dtype == (torch.float32 if router else torch.bfloat16), name
    assert runs["auto"][1] - runs["auto"][30] > 1.0, runs["auto"]
    assert runs["auto"][30] == pytest.approx(runs["float32"][30], abs=0.05)
