"""Data-parallel training in 2 CPU processes (gloo, launched by torchrun) against one process.

``N`` ranks with ``grad_accum = G`` draw the windows of one process with ``grad_accum = G * N``,
so the loss curves and the final weights agree. They agree to rounding, not bit for bit: DDP
sums each rank's accumulated gradient and averages over ranks, one process sums all
micro-batches in one order, and float32 addition is not associative. Measured over 6 steps:
losses within 1e-7 relative, weights within ~2e-6 of each tensor's largest entry (Adam divides
by ``sqrt(v)``, so a rounding difference in a near-zero gradient moves its weight by up to a
learning-rate step); hence ``rtol=1e-5, atol=1e-6``. Resuming FSDP in 2 ranks is exact. FSDP
runs here write the gathered ``checkpoint.pt`` (``train.checkpoint_format = "torch"``); the
sharded default is tested in ``test_dcp_checkpoint``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer import TINY, tiny_config, train_losses

import lmforge
from lmforge.train.artifacts import load_trained
from lmforge.train.checkpoint import read_checkpoint
from lmforge.train.trainer import Trainer

STEPS = ["train.max_iters=6", "train.ckpt_interval=2", "train.keep_checkpoints=0"]
STEPS += ["train.log_interval=1", "train.eval_interval=0", "train.batch_size=4"]
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_train(data: dict[str, Path], out: Path, *extra: str, resume: bool = False) -> None:
    """``torchrun --nproc-per-node=2 -m lmforge train ...`` on the CPU."""
    cmd = ["-m", "lmforge", "train", "--config", "stories-17M", "--data", str(data["train"])]
    cmd += ["--tokenizer", str(data["tokenizer"]), "--out", str(out)]
    cmd += ["--resume"] if resume else []
    for item in [*TINY, *STEPS, *extra]:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the children import the lmforge this process imported (the installed wheel in CI)
    root = Path(lmforge.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    for _ in range(2):  # a free port may be taken before torchrun binds it: try another
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
        launch += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}"]
        done = subprocess.run([*launch, *cmd], env=env, capture_output=True, text=True, timeout=180)
        err = done.stderr.lower()
        if done.returncode == 0 or not ("address already in use" in err or "eaddrinuse" in err):
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.count("trained 6 steps") == 1  # rank 0 alone reports


def single(data: dict[str, Path], out: Path, *extra: str, resume: bool = False) -> Path:
    cfg = tiny_config(data, out, *STEPS, "train.grad_accum=4", *extra)
    return Trainer(cfg, resume=resume).fit().run_dir


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The step-6 weights, from a ``checkpoint.pt`` or a sharded (DCP) checkpoint."""
    folder = run / "ckpt-00000006"
    if (folder / "checkpoint.pt").is_file():
        return read_checkpoint(folder / "checkpoint.pt")["model"]
    return dict(load_trained(folder).model.state_dict())


def assert_same_run(run: Path, ref: Path, rtol: float = RTOL, atol: float = 1e-6) -> None:
    losses, want = train_losses(run), train_losses(ref)
    assert sorted(losses) == sorted(want) == list(range(1, 7))
    for step, loss in want.items():
        assert losses[step] == pytest.approx(loss, rel=rtol), (step, losses, want)
    got, exp = final_weights(run), final_weights(ref)
    assert got.keys() == exp.keys()
    for name, value in exp.items():
        torch.testing.assert_close(got[name], value, rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def reference(stories_data, tmp_path_factory) -> Path:
    """One process, grad_accum 4: the run 2 ranks of grad_accum 2 must reproduce."""
    return single(stories_data, tmp_path_factory.mktemp("single") / "run")


def step_two(run: Path, again: Path) -> Path:
    """A copy of ``run`` as it was after its step-2 checkpoint."""
    again.mkdir()
    shutil.copy(run / "config.toml", again / "config.toml")
    shutil.copytree(run / "ckpt-00000002", again / "ckpt-00000002")
    return again


def resume_alone(stories_data, run: Path, tmp_path: Path) -> Path:
    """Finish ``run`` from its step-2 checkpoint in one process."""
    return single(stories_data, step_two(run, tmp_path / "again"), resume=True)


def test_ddp_matches_one_process_and_resumes_alone(stories_data, reference, tmp_path):
    torchrun_train(stories_data, tmp_path / "ddp", "train.grad_accum=2")
    assert_same_run(tmp_path / "ddp", reference)
    saved = read_checkpoint(tmp_path / "ddp" / "ckpt-00000002" / "checkpoint.pt")
    assert saved["state"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in saved["model"])
    resumed = resume_alone(stories_data, tmp_path / "ddp", tmp_path)
    got, exp = final_weights(resumed), final_weights(reference)
    for name, value in exp.items():
        torch.testing.assert_close(got[name], value, rtol=RTOL, atol=1e-6, msg=name)
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [3, 4, 5, 6]


def test_fsdp_matches_one_process_and_its_checkpoint_resumes_alone(
    stories_data, reference, tmp_path
):
    """The gathered ``checkpoint.pt`` format (sharded checkpoints: test_dcp_checkpoint)."""
    fsdp = ["train.grad_accum=2", "train.strategy=fsdp", "train.checkpoint_format=torch"]
    torchrun_train(stories_data, tmp_path / "fsdp", *fsdp)
    assert (tmp_path / "fsdp" / "ckpt-00000002" / "checkpoint.pt").is_file()
    assert_same_run(tmp_path / "fsdp", reference)
    resumed = resume_alone(stories_data, tmp_path / "fsdp", tmp_path)
    got, exp = final_weights(resumed), final_weights(reference)
    for name, value in exp.items():
        torch.testing.assert_close(got[name], value, rtol=RTOL, atol=1e-6, msg=name)
    # and in 2 ranks again, the gathered checkpoint sharded back: exactly the same run
    sharded = step_two(tmp_path / "fsdp", tmp_path / "sharded")
    torchrun_train(stories_data, sharded, *fsdp, resume=True)
    assert train_losses(sharded) == {
        s: v for s, v in train_losses(tmp_path / "fsdp").items() if s > 2
    }
    for name, value in final_weights(tmp_path / "fsdp").items():
        assert torch.equal(final_weights(sharded)[name], value), name


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize(("strategy", "dtype"), [("ddp", "bf16"), ("fsdp", "fp32")])
def test_nccl_on_two_gpus_matches_one_gpu(stories_data, tmp_path, strategy, dtype):
    """The same run on 2 GPUs (NCCL) and on one; GPU kernels reduce in their own order, and
    cuBLAS picks algorithms per shape, hence a looser tolerance than the gloo runs. FSDP is
    compared in float32: in bf16 it computes with bf16 copies of the parameters
    (``MixedPrecisionPolicy``), which rounds differently from one process's autocast (seen on
    2 H200s: the bf16 comparison failed at this tolerance). Weights float32 in both: one
    process's ``param_dtype = "auto"`` would store them in bf16, two processes' in float32."""
    sets = ["train.device=cuda", f'train.dtype="{dtype}"', 'train.param_dtype="float32"']
    ref = single(stories_data, tmp_path / "one", *sets)
    run = tmp_path / strategy
    torchrun_train(stories_data, run, "train.grad_accum=2", f"train.strategy={strategy}", *sets)
    assert_same_run(run, ref, rtol=1e-4, atol=1e-5)


def test_fsdp_refuses_bf16_experts_beside_float32_weights():
    """FSDP shards one dtype per block; the message names the setting to change."""
    from lmforge.model import Transformer
    from lmforge.model.config import ModelConfig
    from lmforge.model.moe import MoEConfig
    from lmforge.train.distributed import DistContext, wrap_model

    moe = MoEConfig(n_routed_experts=4, top_k=2, expert_dtype="bfloat16")
    cfg = ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=1, n_heads=2, moe=moe)
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), is_main=True)
    with pytest.raises(ValueError, match=r"fsdp.*expert_dtype.*ddp"):
        wrap_model(Transformer(cfg), ctx, "fsdp", None)


def test_ddp_with_bf16_weights_matches_one_process(stories_data, tmp_path):
    """``train.param_dtype = "bfloat16"``: each rank sums its three micro-batches in float32 and
    DDP averages the ranks' bf16 gradients, one process sums all six in float32 — roundings apart
    (measured: each loss within 5e-5 relative), the same run."""
    bf16 = ['train.param_dtype="bfloat16"']
    ref = single(stories_data, tmp_path / "one", "train.grad_accum=6", *bf16)
    torchrun_train(stories_data, tmp_path / "ddp", "train.grad_accum=3", *bf16)
    losses, want = train_losses(tmp_path / "ddp"), train_losses(ref)
    assert sorted(losses) == sorted(want) == list(range(1, 7))
    for step, loss in want.items():
        assert losses[step] == pytest.approx(loss, rel=5e-4), step
    assert all(w.dtype == torch.bfloat16 for w in final_weights(tmp_path / "ddp").values())
