"""A seeded, resumable stream of training windows, split across ranks and micro-batches.

The stream is global: the seed alone decides which ``global_batch`` window starts make up each
optimizer step, whatever the number of data-parallel ranks or gradient-accumulation steps.
Rank ``r`` of ``world_size`` takes the ``r``-th contiguous ``1 / world_size`` of each global
batch and cuts it into ``grad_accum`` contiguous micro-batches, so the union over ranks and
micro-steps is exactly the single-process global batch, and a run on 8 GPUs sees the same data
as the same run on one GPU with 8x the accumulation (the equivalence that makes the
global batch size, not the per-device one, the hyperparameter; Goyal et al. 2017, "Accurate,
Large Minibatch SGD").

Why a fresh generator per step, ``Generator(PCG64(SeedSequence([seed, step])))``, rather than
one generator advanced step by step: the sampler's whole state is the step counter. A
checkpoint stores one integer, any step can be recomputed directly (no replaying of earlier
draws), and a run can resume on a different number of ranks. ``SeedSequence`` hashes its entropy
words, so the streams of neighbouring steps are independent (NumPy, "Parallel random number
generation"). Exactness across NumPy upgrades is not promised: NEP 19 keeps bit generators
stable but lets ``Generator.integers`` change, so resume with the NumPy that started the run.

Windows are drawn with replacement, uniform over every valid start (as in
:func:`~lmforge.data.batches.get_batch`); :attr:`WindowSampler.epoch` therefore counts tokens
trained on over tokens in the file, an expected coverage rather than a pass over every token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmforge.data.batches import count_starts

_STATE_VERSION = 1
_STREAM_FIELDS = ("seed", "n_tokens", "context_length", "global_batch")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class WindowSampler:
    """The window starts of each optimizer step, for one rank, reproducible from a seed.

    Args:
        n_tokens: tokens in the training file (``len(token_file)``).
        context_length: ``T``; a window is ``T + 1`` tokens.
        global_batch: windows per optimizer step, summed over all ranks and micro-batches.
        seed: a non-negative integer that fixes the whole stream.
        rank: this process's data-parallel rank, ``0 <= rank < world_size``.
        world_size: the number of data-parallel ranks.
        grad_accum: micro-batches per optimizer step on each rank.

    Raises:
        ValueError: when a size is out of range, ``rank`` is not below ``world_size``, the file
            is shorter than one window, or ``global_batch`` is not divisible by
            ``world_size * grad_accum``.

    Example::

        sampler = WindowSampler(len(tf), 256, global_batch=64, seed=0, grad_accum=4)
        for starts in sampler.next_step():  # 4 micro-batches of 16 starts
            x, y = batch_from_starts(tf.tokens, starts, 256, "cuda")
    """

    def __init__(
        self,
        n_tokens: int,
        context_length: int,
        global_batch: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        self.n_tokens = _check_int("n_tokens", n_tokens, 0)
        self.context_length = _check_int("context_length", context_length, 1)
        self.global_batch = _check_int("global_batch", global_batch, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        self.grad_accum = _check_int("grad_accum", grad_accum, 1)
        if self.rank >= self.world_size:
            raise ValueError(f"rank {rank} must be below world_size {world_size}")
        self._n_starts = count_starts(self.n_tokens, self.context_length)
        split = self.world_size * self.grad_accum
        if self.global_batch % split:
            raise ValueError(
                f"global_batch {global_batch} is not divisible by world_size {world_size} x "
                f"grad_accum {grad_accum} = {split}: every rank and micro-step must get the "
                f"same number of windows; use a global_batch that is a multiple of {split}"
            )
        self.micro_batch = self.global_batch // split
        """Windows per micro-batch on this rank."""
        self._step = 0

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
        """Tokens seen by all ranks over tokens in the file (1.0: as many as the file holds)."""
        return self.tokens_seen / self.n_tokens

    def global_starts(self, step: int) -> np.ndarray:
        """All ``global_batch`` window starts of optimizer step ``step``, for every rank.

        Args:
            step: the optimizer step, from 0.

        Returns:
            int64 array of shape ``(global_batch,)``; rank ``r`` takes the ``r``-th contiguous
            slice of ``global_batch / world_size``.

        Raises:
            ValueError: when ``step`` is negative.
        """
        step = _check_int("step", step, 0)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
        return rng.integers(0, self._n_starts, size=self.global_batch, dtype=np.int64)

    def rank_starts(self, step: int) -> list[np.ndarray]:
        """This rank's micro-batches of step ``step``, without advancing the sampler.

        Args:
            step: the optimizer step, from 0.

        Returns:
            ``grad_accum`` int64 arrays of ``micro_batch`` starts each, in micro-step order.

        Raises:
            ValueError: when ``step`` is negative.
        """
        per_rank = self.global_batch // self.world_size
        mine = self.global_starts(step)[self.rank * per_rank : (self.rank + 1) * per_rank]
        return list(mine.reshape(self.grad_accum, self.micro_batch))

    def next_step(self) -> list[np.ndarray]:
        """This rank's micro-batches for the next optimizer step, and advance one step.

        Returns:
            ``grad_accum`` int64 arrays of ``micro_batch`` starts each, in micro-step order;
            pass each to :func:`~lmforge.data.batches.batch_from_starts`.
        """
        starts = self.rank_starts(self._step)
        self._step += 1
        return starts

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position and the settings that define its stream, JSON-serialisable.

        Rank, world size and accumulation are not part of the stream, so a run may resume with
        different ones.
        """
        fields = {name: getattr(self, name) for name in _STREAM_FIELDS}
        return {"version": _STATE_VERSION, "step": self._step, **fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next step is the one after the saved position.

        Args:
            state: a dict from :meth:`state_dict`.

        Raises:
            ValueError: when the state is malformed, or its seed, token count, context length
                or global batch differ from this sampler's (it describes another stream).
        """
        version = state.get("version") if isinstance(state, dict) else None
        if version != _STATE_VERSION:
            raise ValueError(
                f"not a WindowSampler state of version {_STATE_VERSION} (got a "
                f"{type(state).__name__} with version {version!r}): pass sampler.state_dict()"
            )
        missing = [k for k in ("step", *_STREAM_FIELDS) if k not in state]
        if missing:
            raise ValueError(f"the sampler state is missing {missing}")
        step = _check_int("the saved step", state["step"], 0)
        diffs = [
            f"{name} {state[name]!r} (saved) vs {getattr(self, name)!r} (this sampler)"
            for name in _STREAM_FIELDS
            if state[name] != getattr(self, name)
        ]
        if diffs:
            raise ValueError(
                "the sampler state belongs to a different data stream: "
                + "; ".join(diffs)
                + ". Construct the sampler with the saved settings to resume, or start afresh"
            )
        self._step = step

    def __repr__(self) -> str:
        return (
            f"WindowSampler(n_tokens={self.n_tokens:,}, context_length={self.context_length}, "
            f"global_batch={self.global_batch}, seed={self.seed}, rank={self.rank}, "
            f"world_size={self.world_size}, grad_accum={self.grad_accum}, step={self._step})"
        )
