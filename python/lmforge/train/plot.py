"""Training curves: one PNG from a run's ``metrics.jsonl``.

:func:`plot_run` draws, one panel under another:

(a) train and validation loss against tokens seen (or steps, when tokens were not logged);
(b) throughput in tokens/s and model FLOPs utilisation (MFU) against steps;
(c) the learning rate and the gradient norm against steps, when they were logged;
(d) for a Mixture-of-Experts run, each MoE layer's max/mean expert load (1 is perfect balance)
    and the dropped fraction against steps.

Design choices:

- **Tokens on the loss axis.** Loss against tokens compares runs of different batch sizes and
  is the axis of the scaling-law literature (Kaplan et al. 2020; Hoffmann et al. 2022);
  ``log_x`` gives their log-scale view. Validation records that lack ``tokens`` get it from
  their step, interpolated along the training records.
- **Raw and smoothed train loss.** Per-step loss is noisy; a faint raw line keeps spikes
  visible while an exponential moving average shows the trend (TensorBoard's smoothing).
- **Plot what exists.** Each series is drawn only if some record has it, so validation-only
  records, CPU runs without MFU, or a run without gradient clipping all plot cleanly.
- **No global matplotlib state.** The figure is a bare ``matplotlib.figure.Figure`` rendered
  by the Agg canvas, not ``pyplot``: nothing opens a window, the caller's backend is left
  alone, and plotting from a training process needs no display. The PNG is written
  atomically, so a viewer refreshing it never reads half a file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmforge._atomic import write_atomic
from lmforge.train.metrics import read_metrics
from lmforge.train.run_dir import METRICS_FILE, PLOTS_DIR

__all__ = ["plot_run"]

log = logging.getLogger(__name__)

_PNG_NAME = "metrics.png"
_SMOOTH_MIN_POINTS = 20  # fewer train-loss points than this are drawn raw only


def _paths(source: Path, out_png: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    if not source.exists():
        raise FileNotFoundError(f"no run directory or metrics file at {source}: check the path")
    if source.is_dir():
        metrics, default_out = source / METRICS_FILE, source / PLOTS_DIR / _PNG_NAME
        if not metrics.is_file():
            raise FileNotFoundError(
                f"no {METRICS_FILE} in {source}: is it a run directory, and has the run logged "
                "a step yet?"
            )
    else:
        metrics, default_out = source, source.with_suffix(".png")
    return metrics, Path(out_png) if out_png is not None else default_out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _series(records: list[dict[str, Any]], key: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` over the records that have a number for both ``x`` and ``key``."""
    pts = [(r[x], r[key]) for r in records if _is_number(r.get(x)) and _is_number(r.get(key))]
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _fill_tokens(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with ``tokens`` interpolated from ``step`` where missing (e.g. val records)."""
    steps, tokens = _series(records, "tokens", "step")
    if len(steps) == 0:
        return records
    order = np.argsort(steps)
    filled = []
    for r in records:
        if not _is_number(r.get("tokens")) and _is_number(r.get("step")):
            r = {**r, "tokens": float(np.interp(r["step"], steps[order], tokens[order]))}
        filled.append(r)
    return filled


def _ema(y: np.ndarray, span: int) -> np.ndarray:
    alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
    for i, v in enumerate(y):
        acc = alpha * v + (1 - alpha) * acc if np.isfinite(v) else acc
        out[i] = acc
    return out


def _loss_panel(ax: Axes, records: list[dict[str, Any]], x: str, log_x: bool) -> None:
    keys = ("loss", "val_loss")
    if not any(_is_number(r.get(k)) for r in records for k in keys):
        keys = ("bpb", "val_bpb")  # a run that logs only bits per byte
    train_x, train_y = _series(records, keys[0], x)
    if len(train_x) >= _SMOOTH_MIN_POINTS:
        ax.plot(train_x, train_y, color="C0", alpha=0.3, linewidth=0.8)
        smooth = _ema(train_y, max(2, len(train_y) // 50))
        ax.plot(train_x, smooth, color="C0", label=f"train {keys[0]} (smoothed)")
    elif len(train_x):
        ax.plot(train_x, train_y, color="C0", label=f"train {keys[0]}")
    val_x, val_y = _series(records, keys[1], x)
    if len(val_x):
        ax.plot(val_x, val_y, "o-", color="C1", markersize=3, label=keys[1].replace("_", " "))
    ax.set_xlabel("tokens seen" if x == "tokens" else "step")
    ax.set_ylabel(keys[0])
    ax.set_title("loss")
    if log_x:
        ax.set_xscale("log")
    _finish_axes(ax, [ax])


def _twin_panel(
    ax: Axes, records: list[dict[str, Any]], left: tuple[str, str], right: tuple[str, str]
) -> None:
    """Series ``left`` on ``ax`` and ``right`` on a twin y axis, against steps."""
    axes = [ax]
    for (key, label), target, color in ((left, ax, "C2"), (right, None, "C3")):
        xs, ys = _series(records, key, "step")
        if not len(xs):
            continue
        if target is None:
            target = ax.twinx()
            axes.append(target)
        if key == "mfu":
            ys = ys * 100
        target.plot(xs, ys, color=color, label=label)
        target.set_ylabel(label, color=color)
    ax.set_xlabel("step")
    ax.set_title(f"{left[1]} and {right[1]}")
    _finish_axes(ax, axes)


def _moe_layers(records: list[dict[str, Any]]) -> list[str]:
    """The ``moe/L{i}/`` prefixes that logged a load ratio, in layer order."""
    found = {k[: -len("max_load_ratio")] for r in records for k in r}
    found = {k for k in found if k.startswith("moe/L") and k.endswith("/")}
    return sorted(found, key=lambda k: int(k[len("moe/L") : -1]))


def _moe_panel(ax: Axes, records: list[dict[str, Any]], layers: list[str]) -> None:
    """Each MoE layer's max/mean expert load (dotted: before in-batch balancing, when it ran),
    and the mean dropped fraction (twin axis)."""
    axes = [ax]
    for i, prefix in enumerate(layers):
        xs, ys = _series(records, prefix + "max_load_ratio", "step")
        ax.plot(xs, ys, color=f"C{i % 10}", label=f"layer {prefix[len('moe/L') : -1]}")
        xs, ys = _series(records, prefix + "unbalanced_max_load_ratio", "step")
        if len(xs):
            ax.plot(xs, ys, color=f"C{i % 10}", linestyle=":", linewidth=0.8)
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_ylabel("max / mean expert load")
    xs, ys = _series(records, "moe/dropped", "step")
    if len(xs) and np.any(ys > 0):
        twin = ax.twinx()
        twin.plot(xs, ys * 100, color="black", linestyle="--", label="dropped %")
        twin.set_ylabel("dropped %")
        axes.append(twin)
    ax.set_xlabel("step")
    ax.set_title("MoE expert load")
    _finish_axes(ax, axes)


def _finish_axes(ax: Axes, axes: list[Axes]) -> None:
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)


def _title(name: str, records: list[dict[str, Any]]) -> str:
    parts = [name, f"step {max((r.get('step') or 0) for r in records)}"]
    for key in ("loss", "val_loss"):
        last = [r[key] for r in records if _is_number(r.get(key))]
        if last:
            parts.append(f"{key.replace('_', ' ')} {last[-1]:.4g}")
    return " | ".join(parts)


def plot_run(
    source: str | os.PathLike[str],
    out_png: str | os.PathLike[str] | None = None,
    *,
    x: Literal["auto", "tokens", "step"] = "auto",
    log_x: bool = False,
) -> Path:
    """Plot a run's loss, throughput and optimizer curves into one PNG.

    Args:
        source: a run directory (its ``metrics.jsonl``) or a metrics file.
        out_png: where to write; default ``plots/metrics.png`` in a run directory, or the
            metrics file's path with a ``.png`` suffix.
        x: the loss panel's x axis: ``"tokens"``, ``"step"``, or ``"auto"`` (tokens when
            logged, else steps).
        log_x: a log-scale x axis for the loss panel.

    Returns:
        The PNG written.

    Raises:
        FileNotFoundError: when ``source`` or its metrics file does not exist.
        ValueError: when the metrics file holds no records, ``x`` is unknown, or
            ``x="tokens"`` but no record has ``tokens``.
        lmforge.train.metrics.MetricsError: when the metrics file is corrupt.
        OSError: when the PNG cannot be written.
    """
    if x not in ("auto", "tokens", "step"):
        raise ValueError(f"x must be 'auto', 'tokens' or 'step', got {x!r}")
    metrics, out = _paths(Path(source), out_png)
    records = read_metrics(metrics)
    if not records:
        raise ValueError(f"{metrics} holds no records: has the run logged a step yet?")
    has_tokens = any(_is_number(r.get("tokens")) for r in records)
    if x == "tokens" and not has_tokens:
        raise ValueError(f"x='tokens', but no record in {metrics} has 'tokens'; use x='step'")
    x_key = "tokens" if x == "tokens" or (x == "auto" and has_tokens) else "step"
    if x_key == "tokens":
        records = _fill_tokens(records)
    has_optim = any(_is_number(r.get(k)) for r in records for k in ("lr", "grad_norm"))
    moe_layers = _moe_layers(records)
    n_panels = 2 + has_optim + bool(moe_layers)
    fig = Figure(figsize=(8, 3.0 * n_panels + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    _loss_panel(panels[0], records, x_key, log_x)
    _twin_panel(panels[1], records, ("tokens_per_s", "tokens/s"), ("mfu", "MFU %"))
    if has_optim:
        _twin_panel(panels[2], records, ("lr", "learning rate"), ("grad_norm", "grad norm"))
    if moe_layers:
        _moe_panel(panels[-1], records, moe_layers)
    name = metrics.parent.resolve().name if metrics.name == METRICS_FILE else metrics.stem
    fig.suptitle(_title(name, records))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=110))
    log.info("wrote %s", out)
    return out
