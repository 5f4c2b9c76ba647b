"""Training an MoE model on the bundled stories (CPU): ``lmforge train`` logs the MoE metrics
and the loss falls; resuming restores the loss-free bias buffers bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_trainer import TINY, interrupt_after, records, tiny_config, train_losses

from lmforge.cli import main
from lmforge.train.trainer import Trainer

MOE_TINY = [
    "model.moe.n_routed_experts=8",
    "model.moe.top_k=2",
    "model.moe.expert_d_ff=48",
    "model.moe.bias_update_rate=0.01",  # large enough to move visibly in a few steps
]


def _stories_moe_argv(stories_data, out, extra: list[str]) -> list[str]:
    """``lmforge train --config stories-moe`` on the bundled stories, shrunk to ``TINY`` and
    ``MOE_TINY``, with ``extra`` overrides."""
    argv = ["train", "--config", "stories-moe", "--data", str(stories_data["train"])]
    argv += ["--val-data", str(stories_data["val"]), "--tokenizer", str(stories_data["tokenizer"])]
    argv += ["--out", str(out)]
    for item in [*TINY, *MOE_TINY, *extra]:
        argv += ["--set", item]
    return argv


def test_lmforge_train_moe_logs_metrics_and_lowers_the_loss(stories_data, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["train.max_iters=60", "optim.lr=3e-3", "train.log_interval=10"]
    extra += ["train.eval_interval=60", "train.dtype=fp32"]
    assert main(_stories_moe_argv(stories_data, out, extra)) == 0
    capsys.readouterr()
    losses = train_losses(out)
    assert losses[10] - losses[60] > 1.0, losses
    last = [r for r in records(out) if "loss" in r][-1]
    # stories-moe keeps block 0 dense: block 1 is the MoE layer of this 2-layer model
    assert not any(k.startswith("moe/L0/") for k in last)
    shares = [last[f"moe/L1/load/{j}"] for j in range(8)]
    assert sum(shares) == pytest.approx(1.0)
    assert last["moe/L1/max_load_ratio"] == pytest.approx(max(shares) * 8)
    assert last["moe/max_load_ratio"] == last["moe/L1/max_load_ratio"]
    assert last["moe/L1/dropped"] == 0.0  # dropless
    for key in ("router_entropy", "aux_loss", "seq_aux_loss", "z_loss"):
        assert last[f"moe/L1/{key}"] > 0, key
    assert last["loss/moe_seq_aux"] == pytest.approx(1e-4 * last["moe/L1/seq_aux_loss"])
    assert last["moe/L1/bias_min"] < 0 < last["moe/L1/bias_max"]  # the bias has moved
    config = json.loads((sorted(out.glob("ckpt-*"))[-1] / "config.json").read_text())
    assert config["moe"]["router"] == "sigmoid" and config["moe"]["n_routed_experts"] == 8


@pytest.mark.parametrize(
    ("expert_dtype", "moments"), [("float32", None), ("bfloat16", None), ("bfloat16", "bfloat16")]
)
def test_resume_restores_the_bias_buffers(
    stories_data, tmp_path, monkeypatch, expert_dtype, moments
):
    """Bit for bit, also with bfloat16 experts (their float32 masters in the optimizer's
    state, which the checkpoint carries) and with AdamW's moments in bfloat16."""
    extra = [*MOE_TINY, "model.moe.router=sigmoid", "model.moe.seq_aux_loss_weight=1e-4"]
    extra += [f'model.moe.expert_dtype="{expert_dtype}"']
    extra += [f'optim.moment_dtype="{moments}"'] if moments else []
    extra += ["train.max_iters=8", "train.ckpt_interval=4", "train.log_interval=1"]
    extra += ["train.eval_interval=0", "train.keep_checkpoints=0"]
    whole = Trainer(tiny_config(stories_data, tmp_path / "a", *extra)).fit()

    interrupt_after(
        monkeypatch, 4, lambda: Trainer(tiny_config(stories_data, tmp_path / "b", *extra))
    )
    resumed = Trainer(tiny_config(stories_data, tmp_path / "b", *extra), resume=True)
    bias = resumed.model.layers[0].mlp.router.expert_bias
    assert resumed.iteration == 4 and bias.abs().sum() > 0  # restored, not re-initialised
    resumed.fit()
    assert train_losses(tmp_path / "b") == train_losses(whole.run_dir)
    a = torch.load(whole.run_dir / "ckpt-00000008" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt-00000008" / "checkpoint.pt", weights_only=False)
    biases = [k for k in a["model"] if k.endswith("expert_bias")]
    assert len(biases) == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    experts = [k for k in a["model"] if ".experts." in k]
    assert experts and all(a["model"][k].dtype == getattr(torch, expert_dtype) for k in experts)
    masters = [s["master"] for s in a["optimizer"]["state"].values() if "master" in s]
    assert len(masters) == (len(experts) if expert_dtype == "bfloat16" else 0)
    moment = torch.bfloat16 if moments else torch.float32
    assert all(s["exp_avg"].dtype == moment for s in a["optimizer"]["state"].values())


def test_bf16_experts_with_accumulation_sum_their_gradients_in_float32(stories_data, tmp_path):
    extra = [*MOE_TINY, 'model.moe.expert_dtype="bfloat16"', "train.grad_accum=3"]
    extra += ["train.max_iters=2", "train.log_interval=1", "train.eval_interval=0"]
    extra += ["optim.warmup_iters=0"]
    trainer = Trainer(tiny_config(stories_data, tmp_path / "run", *extra))
    run = trainer.fit().run_dir
    experts = [p for n, p in trainer.model.named_parameters() if ".experts." in n]
    assert trainer.grad_sums is not None and trainer.grad_sums.params == experts
    assert all(s is not None and s.dtype == torch.float32 for s in trainer.grad_sums._sums)
    assert all(math.isfinite(loss) for loss in train_losses(run).values())


def test_init_from_a_dense_run_upcycles_with_the_dense_first_loss(stories_data, tmp_path):
    steps = ["train.max_iters=3", "train.log_interval=1", "train.eval_interval=0"]
    steps += ["train.dtype=fp32", "optim.warmup_iters=0"]
    dense = Trainer(tiny_config(stories_data, tmp_path / "dense", *steps)).fit().run_dir
    start = [f'train.init_from="{dense}"', "train.max_iters=2", "train.log_interval=1"]
    start += ["train.eval_interval=0", "train.dtype=fp32", "optim.warmup_iters=0"]
    again = Trainer(tiny_config(stories_data, tmp_path / "again", *start)).fit().run_dir
    moe = [*start, "model.moe.n_routed_experts=4", "model.moe.aux_loss_weight=0"]
    upcycled = Trainer(tiny_config(stories_data, tmp_path / "moe", *moe)).fit().run_dir
    first, first_moe = train_losses(again)[1], train_losses(upcycled)[1]
    assert first < train_losses(dense)[1] - 0.05  # it did start from the trained weights
    assert first_moe == pytest.approx(first, rel=1e-6)  # step 1 runs the initial weights
    records_moe = [r for r in records(upcycled) if "loss" in r]
    assert "moe/L0/max_load_ratio" in records_moe[0]
    with pytest.raises(ValueError, match="cannot start a dense run"):
        Trainer(tiny_config(stories_data, tmp_path / "back", f'train.init_from="{upcycled}"'))


def test_in_batch_balancing_caps_every_training_step(stories_data, tmp_path, capsys):
    """``moe.batch_load_cap``: each logged step's load is within the band, the load before the
    offsets is logged beside it, and the bias still learns (from the loads before)."""
    out = tmp_path / "run"
    extra = ["train.max_iters=30", "train.log_interval=1", "train.eval_interval=30"]
    extra += ["train.dtype=fp32", "model.moe.batch_load_cap=1.1"]
    assert main(_stories_moe_argv(stories_data, out, extra)) == 0
    capsys.readouterr()
    steps = [r for r in records(out) if "loss" in r]
    assert len(steps) == 30
    before = [r["moe/L1/unbalanced_max_load_ratio"] for r in steps]
    after = [r["moe/L1/max_load_ratio"] for r in steps]
    assert all(a <= b + 1e-6 for a, b in zip(after, before, strict=True))
    assert max(after) <= 1.25 < max(before), (max(after), max(before))
    assert steps[-1]["moe/L1/bias_min"] < 0 < steps[-1]["moe/L1/bias_max"]
    assert any("val_loss" in r for r in records(out))
    config = json.loads((sorted(out.glob("ckpt-*"))[-1] / "config.json").read_text())
    assert config["moe"]["batch_load_cap"] == 1.1


def test_plot_has_an_moe_load_panel(tmp_path):
    from lmforge.train.plot import _moe_layers, plot_run

    lines = [
        {"step": s, "loss": 5.0 - s / 10, "moe/L1/max_load_ratio": 2.0 - s / 10,
         "moe/L3/max_load_ratio": 1.5, "moe/L10/max_load_ratio": 1.2, "moe/dropped": 0.01}
        for s in range(1, 6)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert _moe_layers(lines) == ["moe/L1/", "moe/L3/", "moe/L10/"]
    assert _moe_layers([{"step": 1, "loss": 1.0}]) == []
    png = plot_run(tmp_path / "metrics.jsonl")
    from matplotlib.image import imread

    assert imread(png).shape[0] > 9 * 110  # a third panel (no lr/grad-norm panel here)


@pytest.mark.gpu
def test_moe_cuda_graph_replay_trains_like_plain_compile(stories_data, tmp_path):
    """An MoE run under ``compile_mode=reduce-overhead`` (the step replayed as CUDA graphs, the
    loss-free bias updated between replays) against the default mode: the same losses and the
    same bias buffers at the end, and the per-expert loads logged from the replayed graph.
    Float32 weights, as in the dense test of graph replay (``test_trainer``)."""
    runs, biases = {}, {}
    for mode in ("default", "reduce-overhead"):
        extra = ["train.max_iters=8", "train.log_interval=2", "train.eval_interval=4"]
        extra += ["train.device=cuda", "train.compile=true", f'train.compile_mode="{mode}"']
        extra += ["model.moe.router=sigmoid", 'train.param_dtype="float32"']
        trainer = Trainer(tiny_config(stories_data, tmp_path / mode, *MOE_TINY, *extra))
        trainer.fit()
        runs[mode] = train_losses(tmp_path / mode)
        buffers = trainer.model.named_buffers()
        biases[mode] = {k: v.cpu() for k, v in buffers if k.endswith("expert_bias")}
    assert sorted(runs["default"]) == [2, 4, 6, 8]
    for step, loss in runs["default"].items():
        assert runs["reduce-overhead"][step] == pytest.approx(loss, rel=1e-3), step
    assert len(biases["default"]) == 2
    assert biases["default"].keys() == biases["reduce-overhead"].keys()
    for name, bias in biases["default"].items():
        torch.testing.assert_close(biases["reduce-overhead"][name], bias, rtol=0, atol=1e-6)
    last = [r for r in records(tmp_path / "reduce-overhead") if "loss" in r][-1]
    assert sum(last[f"moe/L1/load/{j}"] for j in range(8)) == pytest.approx(1.0)
