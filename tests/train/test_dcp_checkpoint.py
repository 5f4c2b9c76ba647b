"""Sharded (``torch.distributed.checkpoint``) checkpoints: written by 2 FSDP ranks (gloo, CPU),
resumed in 2 ranks exactly and in 1 process within the data-parallel tolerance of
``test_distributed`` (float32 sums in another order), read by ``load_trained``; and in one
process, bit-identical to the plain ``checkpoint.pt`` format."""

from __future__ import annotations

import json

import pytest
import torch
from test_distributed import RTOL, final_weights, single, step_two, torchrun_train
from test_trainer import tiny_config, train_losses

from lmforge.train.artifacts import find_checkpoint, load_trained
from lmforge.train.checkpoint import read_checkpoint
from lmforge.train.dcp_checkpoint import DCP_METADATA, STATE_FILE, is_dcp
from lmforge.train.run_dir import RunDir

FSDP = ["train.grad_accum=2", "train.strategy=fsdp"]


def test_fsdp_writes_shards_that_resume_in_two_ranks_and_in_one(stories_data, tmp_path):
    run = tmp_path / "fsdp"
    torchrun_train(stories_data, run, *FSDP)  # checkpoint_format "auto": sharded under FSDP
    ckpt = run / "ckpt-00000002"
    names = {p.name for p in ckpt.iterdir()}
    assert names == {DCP_METADATA, "__0_0.distcp", "__1_0.distcp", STATE_FILE, "config.json"}
    assert all((ckpt / f"__{r}_0.distcp").stat().st_size > 10_000 for r in (0, 1))
    assert [s for s, _ in RunDir(run).checkpoints()] == [2, 4, 6]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staged leftovers
    meta = read_checkpoint(ckpt / STATE_FILE)
    assert meta["iteration"] == 2 and meta["model"] == {} and meta["optimizer"] is None
    assert meta["state"]["world_size"] == 2 and meta["state"]["sampler"]

    # load_trained (lmforge sample/eval/export) reassembles the whole model in one process
    assert find_checkpoint(run) == run / "ckpt-00000006" / STATE_FILE
    trained = load_trained(ckpt)
    assert trained.step == 2 and trained.tokenizer is not None
    weights = trained.model.state_dict()

    # in 2 ranks again: exactly the uninterrupted run
    again = step_two(run, tmp_path / "again")
    torchrun_train(stories_data, again, *FSDP, resume=True)
    assert train_losses(again) == {s: v for s, v in train_losses(run).items() if s > 2}
    for name, value in final_weights(run).items():
        assert torch.equal(final_weights(again)[name], value), name
    assert is_dcp(again / "ckpt-00000006")

    # in one process (grad_accum 4, the same global batch): plain checkpoints from step 3 on
    alone = single(stories_data, step_two(run, tmp_path / "alone"), resume=True)
    assert (alone / "ckpt-00000006" / "checkpoint.pt").is_file()
    losses, want = train_losses(alone), train_losses(run)
    assert sorted(losses) == [3, 4, 5, 6]
    for step in losses:
        assert losses[step] == pytest.approx(want[step], rel=RTOL), step
    got = final_weights(alone)
    for name, value in final_weights(run).items():
        torch.testing.assert_close(got[name], value, rtol=RTOL, atol=1e-6, msg=name)

    # and load_trained's step-2 weights are one process's after 2 steps of the same batches
    ref = read_checkpoint(
        single(stories_data, tmp_path / "ref") / "ckpt-00000002" / "checkpoint.pt"
    )
    for name, value in ref["model"].items():
        torch.testing.assert_close(weights[name], value, rtol=RTOL, atol=1e-6, msg=name)


def test_one_process_dcp_equals_the_plain_format_and_resumes_exactly(stories_data, tmp_path):
    plain = single(stories_data, tmp_path / "plain")
    sharded = single(stories_data, tmp_path / "dcp", "train.checkpoint_format=dcp")
    assert (
        is_dcp(sharded / "ckpt-00000004") and not (sharded / "ckpt-00000004/checkpoint.pt").exists()
    )
    assert train_losses(sharded) == train_losses(plain)
    want = read_checkpoint(plain / "ckpt-00000006" / "checkpoint.pt")["model"]
    got = load_trained(sharded).model.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name

    # resume from step 2: optimizer moments, RNGs and sampler restored, so bit-identical
    again = step_two(sharded, tmp_path / "again")
    resumed = single(stories_data, again, "train.checkpoint_format=dcp", resume=True)
    assert train_losses(resumed) == {s: v for s, v in train_losses(plain).items() if s > 2}
    got = load_trained(resumed).model.state_dict()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [3, 4, 5, 6]


def test_the_commands_read_a_sharded_run(stories_data, tmp_path, capsys):
    from safetensors.torch import load_file

    from lmforge.cli import main

    run = single(stories_data, tmp_path / "run", "train.checkpoint_format=dcp")
    assert main(["sample", str(run), "--max-new-tokens", "8", "--prompt", "Once"]) == 0
    assert capsys.readouterr().out.startswith("Once")
    assert main(["eval", str(run), "--data", str(stories_data["val"]), "--batches", "2"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path / "st")]) == 0
    assert "exported step 6" in capsys.readouterr().out
    exported = load_file(tmp_path / "st" / "model.safetensors")
    weights = load_trained(run).model.state_dict()
    assert exported and all(torch.equal(v, weights[k]) for k, v in exported.items())


def test_prune_keeps_the_newest_sharded_checkpoints(stories_data, tmp_path):
    run = single(
        stories_data, tmp_path / "run", "train.checkpoint_format=dcp", "train.keep_checkpoints=2"
    )
    assert [s for s, _ in RunDir(run).checkpoints()] == [4, 6]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt-")) == [
        "ckpt-00000004",
        "ckpt-00000006",
    ]
    # a staged folder without its DCP index is not a checkpoint
    RunDir(run).stage(8)
    (run / "ckpt-00000008").mkdir()
    (run / "ckpt-00000008" / STATE_FILE).write_bytes(b"")
    assert RunDir(run).latest() == run / "ckpt-00000006"


def test_checkpoint_format_is_validated(stories_data, tmp_path):
    with pytest.raises(ValueError, match="train.checkpoint_format must be one of"):
        tiny_config(stories_data, tmp_path, "train.max_iters=1", "train.checkpoint_format=zip")


def test_a_sharded_checkpoint_of_another_model_is_refused(stories_data, tmp_path):
    from lmforge.model import build_model
    from lmforge.train.checkpoint import CheckpointError
    from lmforge.train.dcp_checkpoint import load_weights

    run = single(stories_data, tmp_path / "run", "train.checkpoint_format=dcp")
    other = tiny_config(stories_data, tmp_path, "train.max_iters=1", "model.d_ff=128").model
    with pytest.raises(CheckpointError, match=r"does not fit .*mlp"):
        load_weights(run / "ckpt-00000002", build_model(other))
    with pytest.raises(FileNotFoundError, match="no DCP checkpoint"):
        load_weights(tmp_path, build_model(other))


def test_ddp_can_write_shards_that_fsdp_resumes(stories_data, tmp_path):
    """DDP's replicated tensors are written once; FSDP reads them back as its shards."""
    run = tmp_path / "ddp"
    torchrun_train(stories_data, run, "train.grad_accum=2", "train.checkpoint_format=dcp")
    assert is_dcp(run / "ckpt-00000002")
    assert not (run / "ckpt-00000002" / "checkpoint.pt").exists()
    assert read_checkpoint(run / "ckpt-00000002" / STATE_FILE)["state"]["world_size"] == 2
    again = step_two(run, tmp_path / "fsdp")
    torchrun_train(stories_data, again, *FSDP, resume=True)  # auto: sharded again
    losses, want = train_losses(again), train_losses(run)
    assert sorted(losses) == [3, 4, 5, 6]
    for step in losses:
        assert losses[step] == pytest.approx(want[step], rel=RTOL), step
    got = final_weights(again)
    for name, value in final_weights(run).items():
        torch.testing.assert_close(got[name], value, rtol=RTOL, atol=1e-6, msg=name)


def test_weights_with_separate_w1_w3_load_from_a_sharded_checkpoint(tmp_path):
    """A DCP checkpoint written before the MoE experts' w1 and w3 became one w13 parameter
    still gives its weights to one process (``lmforge sample``/``eval``/``export``)."""
    import torch.distributed.checkpoint as dcp

    from lmforge.model import Transformer
    from lmforge.model.config import ModelConfig
    from lmforge.model.moe import MoEConfig
    from lmforge.train.dcp_checkpoint import load_sharded

    moe = MoEConfig(n_routed_experts=4, top_k=2)
    cfg = ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=2, n_heads=2, moe=moe)
    torch.manual_seed(0)
    saved = Transformer(cfg)
    legacy = {k: v.detach().clone() for k, v in saved.state_dict().items()}
    for key in [k for k in legacy if k.endswith("experts.w13")]:
        w1, w3 = legacy.pop(key).chunk(2, dim=1)
        legacy[key[:-1]], legacy[key[:-2] + "3"] = w1.contiguous(), w3.contiguous()
    dcp.save({"model": legacy}, checkpoint_id=tmp_path, no_dist=True)
    loaded = Transformer(cfg)
    load_sharded(tmp_path, loaded, None)
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
