"""Training on several token files at once: sampling weights, a seeded mixture sampler, batches.

A mixture trains on ``k`` token files (languages, domains); each window lies whole inside one
file. The design choices:

- **Weights from sizes and a temperature.** :func:`mixture_weights` draws source ``i`` with
  probability ``n_i^alpha / sum_j n_j^alpha`` for sizes ``n_i`` in tokens. ``alpha = 1`` (the
  default) is proportional to size, as concatenating the files would be; ``alpha < 1`` flattens
  it, up-sampling small sources; ``alpha = 0`` is uniform. The multilingual recipe: ``0.5`` in
  XLM (Lample & Conneau 2019), ``0.3`` in XLM-R (Conneau et al. 2020, "Unsupervised
  Cross-lingual Representation Learning at Scale") and mT5 (Xue et al. 2021), temperature
  ``1 / alpha = 5`` in Arivazhagan et al. 2019 ("Massively Multilingual Neural Machine
  Translation in the Wild"). Explicit ``weights`` replace the rule. Powers are taken in log
  space, so none overflows.
- **One stream, split like** :class:`~lmforge.data.sampler.WindowSampler`. Step ``s`` draws
  from ``Generator(PCG64(SeedSequence([seed, s])))``: each window's source (a uniform through
  the weights' cumulative sum), then, source by source in index order, the starts, uniform
  over that file's valid starts. Ranks and micro-batches slice the global batch as
  ``WindowSampler`` does (it does the checks), so DDP ranks reproduce the single-process run.
  With one source nothing extra is drawn: the stream is ``WindowSampler``'s and its state
  loads, so a trainer can use this class for one file or many.
- **The realised mixture is counted and stored.** Every rank draws the whole global batch, so
  all ranks count the same windows per source. The counts are saved in the state (re-deriving
  them would replay every step) and checked on load: they must sum to ``step * global_batch``.
- **Repetition is visible.** Up-sampling repeats a small source, and mT5 saw low-resource
  languages overfit at small ``alpha``; :attr:`MixtureSampler.source_epochs` says how often
  each file has been trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from lmforge.data.batches import TokenArray, _gather, _to_device, as_token_array, count_starts
from lmforge.data.device import resolve_device
from lmforge.data.sampler import WindowSampler, _check_int

_STATE_KIND = "MixtureSampler"
_WEIGHT_RTOL = 1e-9  # weights recomputed on another machine may differ in the last bit


def _check_sizes(sizes: Sequence[float]) -> np.ndarray:
    try:
        arr = np.asarray(sizes, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(
            f"sizes must be a non-empty list of positive numbers (tokens per source), got {sizes!r}"
        )
    return arr


def mixture_weights(
    sizes: Sequence[float], alpha: float | None = None, weights: Sequence[float] | None = None
) -> np.ndarray:
    """The probability of drawing each source: ``n_i^alpha`` normalised, or explicit weights.

    Args:
        sizes: each source's size ``n_i`` (tokens), all positive.
        alpha: the exponent (``1 / temperature``), finite and ``>= 0``: 1 is proportional to
            size, 0.3 is XLM-R's and mT5's choice, 0 is uniform. Default 1 when ``weights`` is
            also ``None``.
        weights: explicit non-negative weights, one per source, normalised to sum to 1; a
            zero weight leaves that source out. Exclusive with ``alpha``.

    Returns:
        float64 array of ``len(sizes)`` probabilities summing to 1.

    Raises:
        ValueError: empty or non-positive sizes, both ``alpha`` and ``weights``, a negative or
            non-finite ``alpha``, or weights of the wrong length, negative, non-finite or
            summing to zero.
    """
    n = _check_sizes(sizes)
    if weights is not None:
        if alpha is not None:
            raise ValueError(
                f"give mixture alpha ({alpha!r}) or explicit weights ({list(weights)!r}), not both"
            )
        return _normalised(weights, len(n))
    alpha = 1.0 if alpha is None else alpha
    number = isinstance(alpha, (int, float, np.number)) and not isinstance(alpha, bool)
    if not (number and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(
            f"mixture alpha must be finite and >= 0 (1: proportional to size, 0.3: XLM-R, "
            f"0: uniform), got {alpha!r}"
        )
    log_w = float(alpha) * np.log(n)
    w = np.exp(log_w - log_w.max())  # the largest is 1: no overflow for any alpha
    return w / w.sum()


def _normalised(weights: Sequence[float], k: int) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"mixture weights must be numbers, got {weights!r}") from None
    if w.ndim != 1 or w.size != k:
        raise ValueError(f"got {w.size} mixture weights for {k} sources: give one per source")
    if not np.all(np.isfinite(w) & (w >= 0)) or w.max() <= 0:
        raise ValueError(
            f"mixture weights must be finite and >= 0 with a positive sum, got {list(weights)!r}"
        )
    w = w / w.max()  # the sum of huge weights stays finite
    return w / w.sum()


class MixtureStarts(NamedTuple):
    """The windows of one (micro-)batch: the source of each window and its start in it."""

    sources: np.ndarray
    """int64 source indices, shape ``(B,)``."""
    starts: np.ndarray
    """int64 window starts, shape ``(B,)``, each valid in its own source."""


class MixtureSampler:
    """The ``(source, start)`` windows of each optimizer step, for one rank, from a seed.

    Args:
        sizes: tokens in each source file (``len(token_file)``), each at least
            ``context_length + 1``.
        context_length: ``T``; a window is ``T + 1`` tokens.
        global_batch: windows per optimizer step, summed over all ranks and micro-batches.
        seed: a non-negative integer that fixes the whole stream.
        alpha: the exponent of :func:`mixture_weights` (default 1: proportional to size).
        weights: explicit source weights instead of ``alpha``.
        rank: this process's data-parallel rank, ``0 <= rank < world_size``.
        world_size: the number of data-parallel ranks.
        grad_accum: micro-batches per optimizer step on each rank.

    Raises:
        ValueError: as :func:`mixture_weights` and ``WindowSampler`` do, and when a source is
            shorter than one window (naming the source and its size).

    Example::

        sampler = MixtureSampler([len(en), len(sw)], 256, 64, seed=0, alpha=0.3)
        for sources, starts in sampler.next_step():
            x, y = gather_mixture_batch([en.tokens, sw.tokens], sources, starts, 256, "cuda")
    """

    def __init__(
        self,
        sizes: Sequence[int],
        context_length: int,
        global_batch: int,
        seed: int,
        *,
        alpha: float | None = None,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        context_length = _check_int("context_length", context_length, 1)
        self.sizes = [_check_int(f"the size of source {i}", n, 1) for i, n in enumerate(sizes)]
        self._n_starts = np.array(
            [_source_starts(i, n, context_length) for i, n in enumerate(self.sizes)]
        )
        self.weights = mixture_weights(self.sizes, alpha, weights)
        """Probability of drawing each source."""
        self._cdf = np.cumsum(self.weights)
        self._last = int(np.flatnonzero(self.weights)[-1])  # where u * total == total lands
        # the checks and the split are WindowSampler's, whose stream is the one-source case
        split = {"rank": rank, "world_size": world_size, "grad_accum": grad_accum}
        self._windows = w = WindowSampler(
            sum(self.sizes), context_length, global_batch, seed, **split
        )
        self.context_length, self.global_batch, self.seed = w.context_length, w.global_batch, w.seed
        self.rank, self.world_size, self.grad_accum = w.rank, w.world_size, w.grad_accum
        self.micro_batch = w.micro_batch
        """Windows per micro-batch on this rank."""
        self._step = 0
        self._counts = np.zeros(len(self.sizes), dtype=np.int64)

    @property
    def n_sources(self) -> int:
        """The number of sources ``k``."""
        return len(self.sizes)

    @property
    def n_tokens(self) -> int:
        """Tokens in all sources together."""
        return sum(self.sizes)

    @property
    def step(self) -> int:
        """Optimizer steps taken: the index of the step :meth:`next_step` returns next."""
        return self._step

    @property
    def tokens_seen(self) -> int:
        """Target tokens trained on so far by all ranks: ``step * global_batch * T``."""
        return self._step * self.global_batch * self.context_length

    @property
    def epoch(self) -> float:
        """Tokens seen by all ranks over tokens in all sources."""
        return self.tokens_seen / self.n_tokens

    @property
    def source_epochs(self) -> np.ndarray:
        """Per source, target tokens trained on over its tokens: how often it was repeated."""
        return self._counts * self.context_length / np.asarray(self.sizes, dtype=np.float64)

    def realised_mixture(self) -> np.ndarray:
        """The fraction of windows drawn from each source so far (all zeros before a step).

        Returns:
            float64 array of ``n_sources`` fractions; they tend to :attr:`weights`.
        """
        total = int(self._counts.sum())
        return self._counts / total if total else np.zeros(self.n_sources)

    def global_starts(self, step: int) -> MixtureStarts:
        """All ``global_batch`` windows of optimizer step ``step``, for every rank.

        Args:
            step: the optimizer step, from 0.

        Returns:
            ``(sources, starts)``, int64 arrays of shape ``(global_batch,)``.

        Raises:
            ValueError: when ``step`` is negative.
        """
        if self.n_sources == 1:  # no source to draw: WindowSampler's stream, by construction
            starts = self._windows.global_starts(step)
            return MixtureStarts(np.zeros_like(starts), starts)
        step = _check_int("step", step, 0)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
        u = rng.random(self.global_batch) * self._cdf[-1]
        sources = np.minimum(np.searchsorted(self._cdf, u, side="right"), self._last)
        starts = np.empty(self.global_batch, dtype=np.int64)
        for s in range(self.n_sources):  # in index order: the order is part of the stream
            rows = np.flatnonzero(sources == s)
            if rows.size:
                starts[rows] = rng.integers(0, self._n_starts[s], size=rows.size, dtype=np.int64)
        return MixtureStarts(sources.astype(np.int64, copy=False), starts)

    def _split(self, batch: MixtureStarts) -> list[MixtureStarts]:
        per_rank = self.global_batch // self.world_size
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        shape = (self.grad_accum, self.micro_batch)
        sources, starts = (a[lo:hi].reshape(shape) for a in batch)
        return [MixtureStarts(src, st) for src, st in zip(sources, starts, strict=True)]

    def rank_starts(self, step: int) -> list[MixtureStarts]:
        """This rank's micro-batches of step ``step``, without advancing or counting.

        Args:
            step: the optimizer step, from 0.

        Returns:
            ``grad_accum`` pairs of ``micro_batch`` sources and starts, in micro-step order.

        Raises:
            ValueError: when ``step`` is negative.
        """
        return self._split(self.global_starts(step))

    def first_row(self, micro_step: int) -> int:
        """The index in the global batch of micro-batch ``micro_step``'s first window on this
        rank (rows are ``first_row(i) + arange(micro_batch)``): what per-window randomness,
        such as MLM masks, is keyed on so it does not depend on the split into ranks.

        Raises:
            ValueError: ``micro_step`` outside ``[0, grad_accum)``.
        """
        if not 0 <= micro_step < self.grad_accum:
            raise ValueError(f"micro_step must be in [0, {self.grad_accum}), got {micro_step}")
        return self.rank * (self.global_batch // self.world_size) + micro_step * self.micro_batch

    def next_step(self) -> list[MixtureStarts]:
        """This rank's micro-batches for the next optimizer step; advance and count the step.

        Returns:
            ``grad_accum`` pairs ``(sources, starts)`` of ``micro_batch`` windows each, in
            micro-step order; pass each to :func:`gather_mixture_batch`.
        """
        batch = self.global_starts(self._step)
        self._counts += np.bincount(batch.sources, minlength=self.n_sources)
        self._step += 1
        return self._split(batch)

    def state_dict(self) -> dict[str, Any]:
        """``WindowSampler``'s state (over all sources' tokens) plus the mixture, as JSON types.

        Rank, world size and accumulation are not part of the stream, so a run may resume with
        different ones.
        """
        return {
            **self._windows.state_dict(),
            "step": self._step,
            "kind": _STATE_KIND,
            "sizes": self.sizes,
            "weights": self.weights.tolist(),
            "counts": self._counts.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; with one source, a ``WindowSampler``'s state works too.

        Args:
            state: a dict from :meth:`state_dict`.

        Raises:
            ValueError: when the state is malformed, its counts disagree with its step, or its
                seed, context length, global batch, sizes or weights differ from this
                sampler's (it describes another stream).
        """
        self._windows.load_state_dict(state)  # the shared fields, with WindowSampler's messages
        step = self._windows.step  # (only checked: this sampler keeps its own step)
        if "kind" not in state:  # a WindowSampler's: the one-source stream
            if self.n_sources != 1:
                raise ValueError(
                    f"the saved state is a one-file WindowSampler's, but this mixture has "
                    f"{self.n_sources} sources: resume with the run's single training file"
                )
            state = {**state, **self.state_dict(), "counts": [step * self.global_batch]}
        missing = [k for k in ("kind", "sizes", "weights", "counts") if k not in state]
        if missing or state["kind"] != _STATE_KIND:
            raise ValueError(f"not a {_STATE_KIND} state (missing {missing}): pass state_dict()")
        counts = _check_counts(state["counts"], self.n_sources, step * self.global_batch)
        saved_w = np.asarray(state["weights"], dtype=np.float64)
        same_w = saved_w.shape == self.weights.shape and np.allclose(
            saved_w, self.weights, rtol=_WEIGHT_RTOL, atol=0
        )
        if state["sizes"] != self.sizes or not same_w:
            raise ValueError(
                f"the sampler state belongs to a different mixture: sizes {state['sizes']} and "
                f"weights {state['weights']} (saved) vs {self.sizes} and "
                f"{self.weights.tolist()} (this sampler). Construct the sampler with the saved "
                f"files and mixture to resume, or start afresh"
            )
        self._step, self._counts = step, counts

    def __repr__(self) -> str:
        weights = ", ".join(f"{w:.3f}" for w in self.weights)
        return (
            f"MixtureSampler(sizes={self.sizes}, weights=[{weights}], "
            f"context_length={self.context_length}, global_batch={self.global_batch}, "
            f"seed={self.seed}, rank={self.rank}, world_size={self.world_size}, "
            f"grad_accum={self.grad_accum}, step={self._step})"
        )


def _source_starts(index: int, n_tokens: int, context_length: int) -> int:
    try:
        return count_starts(n_tokens, context_length)
    except ValueError as err:
        raise ValueError(f"source {index} (of {n_tokens:,} tokens): {err}") from None


def _check_counts(counts: Any, k: int, total: int) -> np.ndarray:
    ok = isinstance(counts, list) and len(counts) == k
    ok = ok and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
    if not ok or sum(counts) != total:
        raise ValueError(
            f"the saved source counts {counts!r} are not {k} non-negative integers summing to "
            f"step x global_batch = {total}: the state is corrupt"
        )
    return np.array(counts, dtype=np.int64)


def gather_mixture_batch(
    token_arrays: Sequence[TokenArray],
    sources: np.ndarray,
    starts: np.ndarray,
    context_length: int,
    device: str | torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of windows ``token_arrays[sources[b]][starts[b] : starts[b] + T + 1]``.

    One gather per source present (as :func:`~lmforge.data.batches.batch_from_starts` does
    for one file), then one copy to the device.

    Args:
        token_arrays: each source's 1-D token ids (numpy array, ``np.memmap`` or CPU tensor).
        sources: 1-D integer source index of each window.
        starts: 1-D integer start of each window in its source, as long as ``sources``.
        context_length: ``T``, the number of input tokens per window.
        device: where the batch goes (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).

    Returns:
        ``(x, y)``, int64 tensors of shape ``(len(starts), T)`` on ``device``, rows in the
        order of ``starts``; ``y`` is ``x`` shifted one token on.

    Raises:
        ValueError: an unavailable device, no token arrays, sources and starts that are empty,
            not 1-D integers or of different lengths, a source index out of range, a source
            too short for ``context_length``, or a start out of its source's range.
    """
    dev = resolve_device(device)
    return _to_device(gather_mixture_windows(token_arrays, sources, starts, context_length), dev)


def gather_mixture_windows(
    token_arrays: Sequence[TokenArray],
    sources: np.ndarray,
    starts: np.ndarray,
    context_length: int,
) -> np.ndarray:
    """The windows of :func:`gather_mixture_batch` on the host: int64 ``(len(starts), T + 1)``.

    Raises:
        ValueError: as :func:`gather_mixture_batch` (for the arguments it shares).
    """
    sources, starts = _check_index_arrays(sources, starts, len(token_arrays))
    windows = np.empty((len(starts), context_length + 1), dtype=np.int64)
    for s in np.unique(sources).tolist():
        rows = np.flatnonzero(sources == s)
        arr = as_token_array(token_arrays[s])
        n_starts = _source_starts(s, len(arr), context_length)
        lo, hi = int(starts[rows].min()), int(starts[rows].max())
        if lo < 0 or hi >= n_starts:
            raise ValueError(
                f"start {lo if lo < 0 else hi:,} is out of range for source {s} of {len(arr):,} "
                f"tokens: with context_length {context_length:,}, starts are 0 to {n_starts - 1:,}"
            )
        windows[rows] = _gather(arr, starts[rows], context_length)
    return windows


def _check_index_arrays(sources: Any, starts: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    src, st = np.asarray(sources), np.asarray(starts)
    for name, a in (("sources", src), ("starts", st)):
        if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"{name} must be a non-empty 1-D integer array, got shape {a.shape} of {a.dtype}"
            )
    if src.shape != st.shape:
        raise ValueError(f"sources and starts differ in length: {src.size} vs {st.size}")
    bad = src[(src < 0) | (src >= k)]
    if bad.size:
        raise ValueError(f"source index {int(bad[0])} is out of range for {k} token arrays")
    return src.astype(np.int64, copy=False), st.astype(np.int64, copy=False)
