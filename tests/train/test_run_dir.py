"""Run directories: creating vs resuming, folder-atomic checkpoint saves, listing and pruning."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lmforge._atomic import write_text_atomic
from lmforge.train import checkpoint as checkpoint_module
from lmforge.train.checkpoint import load_checkpoint
from lmforge.train.run_dir import (
    CHECKPOINT_FILE,
    MODEL_CONFIG_FILE,
    RunDir,
    RunDirError,
    parse_checkpoint_step,
)

CONFIG = {"d_model": 4, "n_layers": 1}


def model_and_opt(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 4)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def hidden(run: RunDir) -> list[str]:
    return sorted(p.name for p in run.path.iterdir() if p.name.startswith("."))


def test_layout_and_save(tmp_path):
    run = RunDir.create(tmp_path / "runs" / "a")
    assert run.path.is_dir() and run.checkpoints() == [] and run.latest() is None
    assert run.config_path.name == "config.toml" and run.metrics_path.name == "metrics.jsonl"
    assert run.tokenizer_path.name == "tokenizer.json" and run.plots_dir.name == "plots"
    model, opt = model_and_opt()
    folder = run.save(100, model, opt, CONFIG, sampler={"step": 100})
    assert folder == run.checkpoint_dir(100) == run.path / "ckpt-00000100"
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE, MODEL_CONFIG_FILE]
    assert json.loads((folder / MODEL_CONFIG_FILE).read_text()) == CONFIG
    restored, restored_opt = model_and_opt(seed=1)
    state: dict = {}
    assert load_checkpoint(folder / CHECKPOINT_FILE, restored, restored_opt, state=state) == 100
    assert state == {"sampler": {"step": 100}}
    torch.testing.assert_close(restored.weight, model.weight)
    assert run.latest() == folder and hidden(run) == []


def test_create_refuses_an_existing_run_unless_resuming(tmp_path):
    run = RunDir.create(tmp_path)  # an existing, empty folder is fine
    write_text_atomic(run.config_path, "[model]\n")
    with pytest.raises(RunDirError, match="already holds a run.*--resume"):
        RunDir.create(tmp_path)
    assert RunDir.create(tmp_path, resume=True).path == tmp_path
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        RunDir.create(tmp_path / "file")
    assert RunDir.create(tmp_path / "new", resume=True).checkpoints() == []


def test_checkpoints_sorted_and_incomplete_ignored(tmp_path):
    run = RunDir.create(tmp_path)
    model, opt = model_and_opt()
    for step in (20, 3, 1000):
        run.save(step, model, opt, CONFIG)
    (tmp_path / "ckpt-7").mkdir()  # hand-made and unpadded, but complete: counted
    (tmp_path / "ckpt-7" / CHECKPOINT_FILE).write_bytes(b"")
    (tmp_path / "ckpt-5000").mkdir()  # no checkpoint.pt: not a checkpoint
    (tmp_path / ".ckpt-00009000.0123456789ab.tmp").mkdir()  # an interrupted save
    (tmp_path / ".ckpt-00009000.0123456789ab.tmp" / CHECKPOINT_FILE).write_bytes(b"")
    (tmp_path / "ckpt-notes").mkdir()
    assert [s for s, _ in run.checkpoints()] == [3, 7, 20, 1000]
    assert run.latest() == tmp_path / "ckpt-00001000"
    assert parse_checkpoint_step("ckpt-00000042") == 42 and parse_checkpoint_step("x") is None


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path)
    model, opt = model_and_opt()
    run.save(1, model, opt, CONFIG)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        run.save(2, model, opt, CONFIG)
    monkeypatch.undo()
    assert [s for s, _ in run.checkpoints()] == [1] and hidden(run) == []
    with pytest.raises(ValueError, match="JSON-serialisable"):
        run.save(3, model, opt, {"bad": object()})
    with pytest.raises(ValueError, match="step"):
        run.save(-1, model, opt, CONFIG)
    assert [s for s, _ in run.checkpoints()] == [1] and hidden(run) == []


def test_resave_same_step_replaces(tmp_path):
    run = RunDir.create(tmp_path)
    run.save(5, *model_and_opt(seed=0), CONFIG)
    model, opt = model_and_opt(seed=1)
    run.save(5, model, opt, {"d_model": 8})
    restored, _ = model_and_opt(seed=2)
    load_checkpoint(run.checkpoint_dir(5) / CHECKPOINT_FILE, restored)
    torch.testing.assert_close(restored.weight, model.weight)
    assert json.loads((run.checkpoint_dir(5) / MODEL_CONFIG_FILE).read_text()) == {"d_model": 8}
    assert len(run.checkpoints()) == 1 and hidden(run) == []


def test_prune(tmp_path):
    run = RunDir.create(tmp_path)
    model, opt = model_and_opt()
    for step in (1, 2, 3, 4):
        run.save(step, model, opt, CONFIG)
    assert run.prune(0) == [] and run.prune(None) == [] and len(run.checkpoints()) == 4
    assert run.prune(2) == [run.checkpoint_dir(1), run.checkpoint_dir(2)]
    assert [s for s, _ in run.checkpoints()] == [3, 4]
    assert run.prune(1) == [run.checkpoint_dir(3)]
    assert run.prune(1) == [] and run.latest() == run.checkpoint_dir(4)
    assert hidden(run) == []
    with pytest.raises(ValueError, match="keep_last"):
        run.prune(-1)


def test_resume_cleans_leftovers(tmp_path):
    run = RunDir.create(tmp_path)
    model, opt = model_and_opt()
    run.save(1, model, opt, CONFIG)
    # a crash while replacing ckpt-2 left only its .old copy; another left a temp folder
    run.save(2, model, opt, CONFIG).rename(tmp_path / ".ckpt-00000002.0123456789ab.old")
    (tmp_path / ".ckpt-00000003.0123456789ab.tmp").mkdir()
    (tmp_path / ".config.toml.0123456789ab.tmp").write_text("partial")
    assert [s for s, _ in run.checkpoints()] == [1]
    RunDir.create(tmp_path, resume=True)
    assert [s for s, _ in run.checkpoints()] == [1, 2] and hidden(run) == []


def test_write_text_atomic(tmp_path):
    path = tmp_path / "config.toml"
    write_text_atomic(path, "a = 1\n")
    write_text_atomic(path, "ü = 2\n")
    assert path.read_text(encoding="utf-8") == "ü = 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_sharded_checkpoint_is_staged_then_published(tmp_path):
    """Ranks write a DCP checkpoint into the staged folder; only publish makes it a checkpoint,
    replacing one at the same step; a staged leftover is cleaned on resume."""
    from lmforge.train.checkpoint import read_checkpoint, save_checkpoint
    from lmforge.train.dcp_checkpoint import STATE_FILE, is_dcp, load_weights, save_sharded

    run = RunDir.create(tmp_path / "run")
    model, opt = model_and_opt()
    run.save(3, model, opt, CONFIG)
    tmp = run.stage(3)
    save_sharded(tmp, model, opt)
    save_checkpoint(tmp / STATE_FILE, nn.Module(), None, 3, world_size=2)
    assert run.latest() == run.checkpoint_dir(3) and not is_dcp(run.latest())
    assert run.publish(tmp, 3, CONFIG) == run.checkpoint_dir(3)
    folder = run.checkpoint_dir(3)
    assert is_dcp(folder) and not (folder / CHECKPOINT_FILE).exists()
    assert json.loads((folder / MODEL_CONFIG_FILE).read_text()) == CONFIG
    assert run.checkpoints() == [(3, folder)] and hidden(run) == []
    assert read_checkpoint(folder / STATE_FILE)["state"] == {"world_size": 2}
    other, _ = model_and_opt(seed=1)
    assert load_weights(folder, other) == 3
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)
    run.stage(4)
    assert len(hidden(run)) == 1 and [s for s, _ in run.checkpoints()] == [3]
    RunDir.create(run.path, resume=True)
    assert hidden(run) == []
