"""Training-curve plots: a valid PNG from synthetic metrics, whatever subset of series exists,
and clear errors for a missing or empty metrics file."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("matplotlib")

from lmforge.train.plot import plot_run  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def synthetic_run(n: int = 60, every_val: int = 10) -> list[dict]:
    """Train records every step with the full set of keys; val records with only val keys."""
    records = []
    for step in range(1, n + 1):
        records.append(
            {
                "step": step,
                "tokens": step * 4096,
                "loss": 5 * math.exp(-step / 20) + 1 + 0.05 * math.sin(step),
                "lr": 1e-3 * min(1, step / 10),
                "grad_norm": 1 / step,
                "tokens_per_s": 50_000 + 100 * step,
                "mfu": 0.3,
                "bpb": 1.5,
            }
        )
        if step % every_val == 0:
            records.append({"step": step, "val_loss": 5 * math.exp(-step / 20) + 1.1})
    records[5]["loss"] = None  # a non-finite loss logged as null
    return records


def is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_plot_run_dir(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", synthetic_run())
    out = plot_run(tmp_path)
    assert out == tmp_path / "plots" / "metrics.png" and is_png(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.png"]  # no temp files


def test_plot_metrics_file_with_partial_series(tmp_path):
    """No tokens, throughput or optimizer keys, a torn last line: still a plot, against steps."""
    path = tmp_path / "m.jsonl"
    records = [{"step": s, "loss": 3 / s} for s in range(1, 6)] + [{"step": 5, "val_loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "lo')
    out = plot_run(path, log_x=True)
    assert out == tmp_path / "m.png" and is_png(out)
    with pytest.raises(ValueError, match="no record .* has 'tokens'"):
        plot_run(path, tmp_path / "x.png", x="tokens")
    with pytest.raises(ValueError, match="x must be"):
        plot_run(path, x="time")  # type: ignore[arg-type]


def test_plot_to_given_path_and_val_only(tmp_path):
    path = tmp_path / "m.jsonl"
    write_metrics(path, [{"step": 10, "val_loss": 2.0, "val_bpb": 1.2}])
    out = plot_run(path, tmp_path / "deep" / "curves.png", x="step")
    assert out == tmp_path / "deep" / "curves.png" and is_png(out)


def test_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory or metrics file"):
        plot_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no records"):
        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()
