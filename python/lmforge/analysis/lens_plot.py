"""The logit lens as a heatmap PNG: layers up, positions across.

:func:`save_heatmap` draws one cell per layer and position of a
:class:`~lmforge.analysis.logit_lens.LogitLensResult`, coloured by the probability the lens
gives the true next token and labelled with the lens's top-1 token, the picture of
nostalgebraist (2020, "interpreting GPT: the logit lens").

Design choices:

- **The embedding at the bottom**, the last block at the top: the residual stream flows up, and
  the top row is the model's own prediction. The input tokens label the bottom axis and the
  true next tokens the top one, so a cell reads "after this layer, at this token, the next
  token was this likely".
- **A fixed colour scale** from 0 to 1 (viridis, perceptually uniform), so heatmaps of
  different texts and checkpoints compare; the last position, which has no next token, is
  grey. The label colour flips with the cell's brightness to stay legible.
- **At most ``max_positions`` columns**, the first ones (logged when cut): beyond a few dozen
  the labels cannot be read; slice the text, or use :func:`~lmforge.analysis.format_table`.
- **No global matplotlib state**, as in :mod:`lmforge.train.plot`: a bare ``Figure`` on the
  Agg canvas, and the PNG written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmforge._atomic import write_atomic
from lmforge.analysis.logit_lens import LogitLensResult, token_label
from lmforge.tokenizer import Tokenizer

__all__ = ["save_heatmap"]

log = logging.getLogger(__name__)

_LABEL_CHARS = 9  # cell and tick labels longer than this are cut


def _annotate(ax: Axes, result: LogitLensResult, tokenizer: Tokenizer, n: int) -> None:
    """Write the top-1 token in every cell, dark on bright cells and light on dark ones."""
    for layer in range(result.n_layers):
        for t in range(n):
            p = float(result.target_probs[layer, t])
            colour = "black" if np.isnan(p) or p > 0.55 else "white"
            label = token_label(tokenizer, int(result.top_ids[layer, t, 0]), _LABEL_CHARS)
            ax.text(t, layer, label, ha="center", va="center", fontsize=7, color=colour)


def _tick_labels(ax: Axes, result: LogitLensResult, tokenizer: Tokenizer, n: int) -> None:
    """Input tokens along the bottom, true next tokens along the top, layer names up the side."""
    ids = result.input_ids.tolist()
    ax.set_xticks(range(n), [token_label(tokenizer, i, _LABEL_CHARS) for i in ids[:n]])
    ax.set_xlabel("input token")
    ax.set_yticks(range(result.n_layers), list(result.layer_names))
    top = ax.secondary_xaxis("top")
    nxt = [token_label(tokenizer, i, _LABEL_CHARS) for i in ids[1 : n + 1]]
    top.set_xticks(range(len(nxt)), nxt)
    top.set_xlabel("true next token")
    for axis, align in ((ax, "right"), (top, "left")):
        for label in axis.get_xticklabels():
            label.set(rotation=45, ha=align, rotation_mode="anchor", fontsize=8)


def save_heatmap(
    result: LogitLensResult,
    tokenizer: Tokenizer,
    path: str | os.PathLike[str],
    *,
    max_positions: int = 48,
    title: str | None = None,
) -> Path:
    """Write the logit lens heatmap as a PNG.

    Args:
        result: what :func:`~lmforge.analysis.logit_lens.logit_lens` returned.
        tokenizer: the model's tokenizer, to label the tokens.
        path: the PNG to write (its folder is created).
        max_positions: draw at most this many positions, the first ones.
        title: the figure's title (default: says what the rows, cells and colours are).

    Returns:
        The path written.

    Raises:
        ValueError: ``max_positions < 1``.
        OSError: the PNG cannot be written.
    """
    if isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1:
        raise ValueError(f"max_positions must be a positive int, got {max_positions!r}")
    n = min(result.n_positions, max_positions)
    if n < result.n_positions:
        log.info("heatmap: drawing the first %d of %d positions", n, result.n_positions)
    probs = np.ma.masked_invalid(result.target_probs[:, :n].numpy())
    fig = Figure(figsize=(2.5 + 0.62 * n, 2.2 + 0.42 * result.n_layers), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(
        probs,
        origin="lower",
        aspect="auto",
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    _annotate(ax, result, tokenizer, n)
    _tick_labels(ax, result, tokenizer, n)
    fig.colorbar(image, ax=ax, label="p(true next token)", fraction=0.05, pad=0.02)
    fig.suptitle(title or "logit lens: top-1 token per layer, colour = p(true next token)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=110))
    log.info("wrote %s", out)
    return out
