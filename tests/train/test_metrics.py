"""Metrics logging: JSON Lines records, tolerant reads, resume truncation, and the optional
progress bar, TensorBoard and W&B outputs (faked, so no package or network is needed)."""

from __future__ import annotations

import json
import logging
import math
import sys
import types

import numpy as np
import pytest
import torch

from lmforge.train.metrics import MetricsError, MetricsLogger, read_metrics


def test_log_and_read_back(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the folder is created
    with MetricsLogger(path, progress=False) as logger:
        record = logger.log(
            10, loss=torch.tensor(2.5), lr=np.float32(0.5), tokens=640, name="x", mfu=None
        )
        logger.log(20, loss=float("nan"), grad_norm=torch.tensor([math.inf]), ok=True)
    assert record == {"step": 10, "loss": 2.5, "lr": 0.5, "tokens": 640, "name": "x", "mfu": None}
    lines = path.read_text().splitlines()
    assert json.loads(lines[1]) == {"step": 20, "loss": None, "grad_norm": None, "ok": True}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert read_metrics(path) == [record, {"step": 20, "loss": None, "grad_norm": None, "ok": True}]
    # a second session appends
    with MetricsLogger(path, initial=20, progress=False) as logger:
        logger.log(30, loss=1.0)
    assert [r["step"] for r in read_metrics(path)] == [10, 20, 30]


def test_vectors_log_one_number_per_element(tmp_path):
    with MetricsLogger(tmp_path / "m.jsonl", progress=False) as logger:
        record = logger.log(1, load=torch.tensor([0.25, 0.75]), one=torch.tensor([2.0]))
    assert record == {"step": 1, "load/0": 0.25, "load/1": 0.75, "one": 2.0}
    assert read_metrics(tmp_path / "m.jsonl") == [record]
    with MetricsLogger(tmp_path / "e.jsonl", progress=False) as logger:
        with pytest.raises(MetricsError, match="'load' is an empty tensor"):
            logger.log(1, load=torch.zeros(0))


def test_bad_values(tmp_path):
    with MetricsLogger(tmp_path / "m.jsonl", progress=False) as logger:
        with pytest.raises(MetricsError, match=r"'loss' is a tensor of shape \(2, 2\)"):
            logger.log(1, loss=torch.ones(2, 2))
        with pytest.raises(MetricsError, match="'cfg' is a dict"):
            logger.log(1, cfg={})
        with pytest.raises(ValueError, match="step"):
            logger.log(-1, loss=1.0)
    with pytest.raises(ValueError, match="closed"):
        logger.log(2, loss=1.0)
    logger.close()  # idempotent
    assert read_metrics(tmp_path / "m.jsonl") == []


def test_read_tolerates_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert "torn last line" in caplog.text
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=r"m.jsonl:2 is not a JSON object"):
        read_metrics(path)
    path.write_text("[1, 2]\n{}\n")
    with pytest.raises(MetricsError, match="a list, not an object"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "missing.jsonl")


def test_reopening_repairs_and_drops_records_after_initial(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLogger(path, progress=False) as logger:
        for step in (10, 20, 30):
            logger.log(step, loss=1.0 / step)
    with path.open("a") as f:
        f.write('{"step": 40, "lo')  # the process died mid-record
    # resume from the checkpoint at step 20: steps 30 and 40 will be logged again
    with MetricsLogger(path, initial=20, progress=False) as logger:
        logger.log(30, loss=0.5)
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [
        (10, 0.1),
        (20, 0.05),
        (30, 0.5),
    ]
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_progress_bar(tmp_path, capsys):
    with MetricsLogger(tmp_path / "m.jsonl", tqdm_total=100, initial=10) as logger:
        logger.log(50, loss=2.0, tokens_per_s=12_345.0)
        logger.log(50, val_loss=2.25)
        assert logger._bar.n == 50
    err = capsys.readouterr().err
    assert "50/100" in err and "loss 2 val 2.25 tok/s 12.3k" in err


def test_missing_integrations_warn_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with caplog.at_level(logging.WARNING):
        with MetricsLogger(tmp_path / "m.jsonl", progress=False, tensorboard=True, wandb=True) as m:
            m.log(1, loss=1.0)
            m.log(2, loss=0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "TensorBoard is not installed" in warnings[0] and "wandb" in warnings[1]
    assert len(read_metrics(tmp_path / "m.jsonl")) == 2


def test_integrations_receive_numbers(tmp_path, monkeypatch):
    calls: list[tuple] = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("tb_dir", log_dir))

        def add_scalar(self, key, value, step):
            calls.append(("tb", key, value, step))

        def close(self):
            calls.append(("tb_close",))

    class Run:
        def log(self, values, step):
            calls.append(("wandb", values, step))

        def finish(self):
            calls.append(("wandb_finish",))

    def init(**kwargs):
        calls.append(("wandb_init", kwargs["project"], kwargs["name"], kwargs["config"]))
        return Run()

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer)
    )
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = tmp_path / "myrun"
    with MetricsLogger(
        run / "metrics.jsonl", progress=False, tensorboard=True, wandb=True, run_config={"a": 1}
    ) as logger:
        logger.log(5, loss=torch.tensor(1.5), note="text", mfu=None)
    assert calls == [
        ("tb_dir", str(run / "tensorboard")),
        ("wandb_init", "lmforge", "myrun", {"a": 1}),
        ("tb", "loss", 1.5, 5),
        ("wandb", {"loss": 1.5}, 5),
        ("tb_close",),
        ("wandb_finish",),
    ]
