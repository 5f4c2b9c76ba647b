"""Batches of token windows for next-token prediction: ``x`` the inputs, ``y`` the targets.

A batch is ``batch_size`` windows of ``context_length + 1`` consecutive tokens; ``x`` is each
window's first ``context_length`` tokens and ``y`` its last ``context_length``, so ``y[b, t]`` is
the token that follows ``x[b, t]``. The design choices:

- Random windows, not epochs. :func:`get_batch` draws each window's start independently and
  uniformly from every valid start, ``0`` to ``len(tokens) - context_length - 1`` inclusive (the
  last start still leaves a target for the last input), as nanoGPT's ``get_batch`` and Stanford
  CS336 assignment 1 do. Any offset can start a window, not only multiples of
  ``context_length``, so the model sees every token at every position; there is no shuffle
  buffer and no epoch boundary to resume from.
- One gather, no Python loop: the window indices are ``starts[:, None] + arange(T + 1)``, one
  numpy fancy index into the memory map, which reads only the pages under the windows.
- Each window is copied once, as ``int64`` (what ``nn.Embedding`` and ``cross_entropy`` index
  with); ``x`` and ``y`` are sliced from it after the copy to the device.
- On CUDA the host batch goes through page-locked (pinned) memory and is copied with
  ``non_blocking=True``, so the copy overlaps the GPU's work on the previous step (PyTorch's
  "pinned memory" guidance; nanoGPT does the same). The pinned buffers are a small ring reused
  batch after batch (:class:`PinnedRing`): a fresh ``pin_memory()`` per batch cost 3.5 ms of
  host time per step on an H200 host — a third of a stories-17M step's GPU time.
- Randomness comes from a ``numpy.random.Generator``, not a ``torch.Generator``: the starts index
  a numpy memory map, and :class:`~lmforge.data.sampler.WindowSampler` draws its starts with
  numpy too, so the data path has one random-number family. :func:`batch_from_starts` takes
  starts drawn elsewhere (by the sampler) and shares the gather and the copy.

Tokens may be a numpy array, an ``np.memmap`` (``TokenFile.tokens``) or a CPU tensor (viewed
as numpy without a copy). Tokens already on a GPU are refused: the point of the memory map is
that the corpus stays on disk and only the batch travels.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from lmforge.data.device import resolve_device

TokenArray = np.ndarray | torch.Tensor
"""A 1-D array of token ids: numpy array, ``np.memmap``, or CPU tensor."""


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_token_array(tokens: TokenArray) -> np.ndarray:
    """View ``tokens`` as a 1-D numpy array of integer ids, without copying arrays or tensors.

    Args:
        tokens: a 1-D numpy array, ``np.memmap``, CPU tensor, or sequence of ints.

    Returns:
        A 1-D integer numpy array (a view where possible).

    Raises:
        ValueError: when the tokens are on a GPU, not 1-D, or not integers.
    """
    if isinstance(tokens, torch.Tensor):
        if tokens.device.type != "cpu":
            raise ValueError(
                f"tokens must be on the CPU (a numpy array, memmap or CPU tensor), got a tensor "
                f"on {tokens.device}; only the batch is moved to the device"
            )
        tokens = tokens.numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array of ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {arr.dtype}")
    return arr


def count_starts(n_tokens: int, context_length: int) -> int:
    """How many windows of ``context_length + 1`` tokens fit in ``n_tokens`` tokens.

    Args:
        n_tokens: the number of tokens.
        context_length: the model's context length ``T``.

    Returns:
        ``n_tokens - context_length``: the valid starts are ``0`` to that minus one.

    Raises:
        ValueError: when ``context_length`` is not positive or there are fewer than
            ``context_length + 1`` tokens.
    """
    context_length = _check_positive_int("context_length", context_length)
    if n_tokens < context_length + 1:
        raise ValueError(
            f"{n_tokens:,} tokens are too few for context_length {context_length:,}: a window "
            f"needs context_length + 1 = {context_length + 1:,} tokens (inputs plus the last "
            f"target); use more data or a shorter context_length"
        )
    return n_tokens - context_length


def _gather(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> np.ndarray:
    """Windows ``tokens[s : s + T + 1]`` of each start, int64, shape ``(len(starts), T + 1)``."""
    index = starts[:, None] + np.arange(context_length + 1, dtype=np.int64)
    # np.asarray drops the np.memmap subclass that fancy indexing a memmap returns
    return np.asarray(tokens[index], dtype=np.int64)


class PinnedRing:
    """A few page-locked host buffers per batch shape, reused in turn for host-to-GPU copies.

    A buffer is refilled only after the copy that last read it has finished (a CUDA event per
    buffer; with ``slots`` buffers that copy was issued ``slots`` batches ago, so in a training
    loop the wait is empty). One ring serves one thread: the trainer's, or a caller's.
    """

    def __init__(self, slots: int = 4, max_shapes: int = 8) -> None:
        if slots < 1 or max_shapes < 1:
            raise ValueError(f"PinnedRing needs slots >= 1 and max_shapes >= 1, got {slots}")
        self.slots, self.max_shapes = slots, max_shapes
        self._rings: dict[tuple, tuple[list[torch.Tensor], list[torch.cuda.Event], list[int]]]
        self._rings = {}

    def copy(self, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """``array`` on the CUDA ``device``, copied asynchronously through a reused buffer."""
        key = (array.shape, array.dtype.str, device)
        if key not in self._rings:
            if len(self._rings) >= self.max_shapes:  # e.g. many last-batch shapes: start over
                self._rings.clear()
            dtype = torch.from_numpy(array[:0]).dtype
            shape = array.shape
            bufs = [torch.empty(shape, dtype=dtype, pin_memory=True) for _ in range(self.slots)]
            self._rings[key] = (bufs, [torch.cuda.Event() for _ in bufs], [0])
        bufs, events, turn = self._rings[key]
        i = turn[0]
        turn[0] = (i + 1) % self.slots
        events[i].synchronize()  # the copy that last read this buffer has finished
        bufs[i].numpy()[...] = array
        out = bufs[i].to(device, non_blocking=True)
        events[i].record(torch.cuda.current_stream(device))
        return out


_RING = PinnedRing()


def copy_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``; on CUDA through reused pinned memory, asynchronously
    (from the main thread; other threads get a fresh pinned buffer per call)."""
    w = torch.from_numpy(array)
    if device.type != "cuda":
        return w.to(device)
    if threading.current_thread() is threading.main_thread():
        return _RING.copy(array, device)
    return w.pin_memory().to(device, non_blocking=True)


def _to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    w = copy_to_device(windows, device)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def batch_from_starts(
    tokens: TokenArray,
    starts: np.ndarray,
    context_length: int,
    device: str | torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of windows at the given starts (e.g. from a ``WindowSampler``).

    Args:
        tokens: 1-D token ids (numpy array, ``np.memmap`` or CPU tensor).
        starts: 1-D integer array of window starts, each in ``0 .. len(tokens) - T - 1``.
        context_length: ``T``, the number of input tokens per window.
        device: where the batch goes (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).

    Returns:
        ``(x, y)``, int64 tensors of shape ``(len(starts), T)`` on ``device``, with
        ``x[b] = tokens[starts[b] : starts[b] + T]`` and ``y[b]`` the same shifted by one.

    Raises:
        ValueError: an unavailable device, too few tokens for ``context_length``, or starts
            that are empty, not 1-D integers, or out of range.
    """
    dev = resolve_device(device)
    arr = as_token_array(tokens)
    n_starts = count_starts(len(arr), context_length)
    starts = np.asarray(starts)
    if starts.ndim != 1 or starts.size == 0 or not np.issubdtype(starts.dtype, np.integer):
        raise ValueError(
            f"starts must be a non-empty 1-D integer array, got shape {starts.shape} of "
            f"{starts.dtype}"
        )
    lo, hi = int(starts.min()), int(starts.max())
    if lo < 0 or hi >= n_starts:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"start {bad:,} is out of range: with {len(arr):,} tokens and context_length "
            f"{context_length:,}, starts must be between 0 and {n_starts - 1:,}"
        )
    return _to_device(_gather(arr, starts.astype(np.int64, copy=False), context_length), dev)


def get_batch(
    tokens: TokenArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    *,
    generator: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of windows at random starts, uniform over every valid start.

    Args:
        tokens: 1-D token ids (numpy array, ``np.memmap`` such as ``TokenFile.tokens``, or
            CPU tensor).
        batch_size: ``B``, the number of windows.
        context_length: ``T``, the number of input tokens per window.
        device: where the batch goes (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
        generator: the ``numpy.random.Generator`` to draw starts from, for reproducible
            batches (e.g. ``np.random.default_rng(0)``); default: a fresh unseeded one.

    Returns:
        ``(x, y)``, int64 tensors of shape ``(B, T)`` on ``device``; ``y`` is ``x`` shifted
        one token on (``y[:, :-1] == x[:, 1:]``).

    Raises:
        ValueError: an invalid or unavailable device, a non-positive ``batch_size`` or
            ``context_length``, fewer than ``context_length + 1`` tokens, or tokens that are
            not 1-D integers on the CPU.
        TypeError: when ``generator`` is not a ``numpy.random.Generator``.
    """
    dev = resolve_device(device)
    batch_size = _check_positive_int("batch_size", batch_size)
    arr = as_token_array(tokens)
    n_starts = count_starts(len(arr), context_length)
    if generator is None:
        generator = np.random.default_rng()
    elif not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"generator must be a numpy.random.Generator (e.g. np.random.default_rng(0)), "
            f"got {type(generator).__name__}"
        )
    starts = generator.integers(0, n_starts, size=batch_size, dtype=np.int64)
    return _to_device(_gather(arr, starts, context_length), dev)
