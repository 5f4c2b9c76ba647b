"""Fixed validation batches: the same windows on every call, so losses compare across runs.

Training draws random windows (:func:`~lmforge.data.batches.get_batch`); validation must not,
or two evaluations of one model would differ by sampling noise and two runs could not be
compared. The validation set is therefore the first ``n_windows`` consecutive, non-overlapping
windows of the file: window ``i`` has inputs ``tokens[i*T : (i+1)*T]`` and targets one token
on, so every token from the second to the ``n_windows * T + 1``-th is predicted exactly once
(the first token has no context; the ``(len - 1) % T`` trailing tokens that do not fill a window
are left out). This is the non-overlapping ("strided with stride T") evaluation of Hugging
Face's perplexity guide: cheaper than a sliding window, and the same for every model of one
context length. The windows depend only on the token count, ``context_length``, ``batch_size``
and ``max_batches``, never on a seed.

Averages: the last batch may hold fewer windows. Sum the per-token losses over all batches and
divide by :attr:`ValidationBatches.n_target_tokens` to get the mean loss per target token (a
mean of per-batch means would over-weight the last batch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.data.batches import (
    TokenArray,
    _check_positive_int,
    as_token_array,
    batch_from_starts,
    count_starts,
)
from lmforge.data.device import resolve_device


class ValidationBatches:
    """The fixed validation windows of a token array, batched; iterable any number of times.

    Use :func:`validation_batches` to make one.

    Attributes:
        batch_size: windows per batch (the last batch may hold fewer).
        context_length: ``T``, input tokens per window.
        n_windows: the number of windows covered.
        n_target_tokens: target tokens covered, ``n_windows * T``: divide summed losses by it.
    """

    def __init__(
        self,
        tokens: TokenArray,
        batch_size: int,
        context_length: int,
        device: str | torch.device,
        *,
        max_batches: int | None = None,
    ) -> None:
        self._device = resolve_device(device)
        self._tokens = as_token_array(tokens)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        count_starts(len(self._tokens), context_length)  # at least one window, or raise
        self.context_length = int(context_length)
        n_windows = (len(self._tokens) - 1) // self.context_length
        if max_batches is not None:
            max_batches = _check_positive_int("max_batches", max_batches)
            n_windows = min(n_windows, max_batches * self.batch_size)
        self.n_windows = n_windows
        self.n_target_tokens = n_windows * self.context_length

    def __len__(self) -> int:
        """The number of batches."""
        return -(-self.n_windows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches, int64 of shape ``(batch, T)``, in file order."""
        for lo in range(0, self.n_windows, self.batch_size):
            hi = min(lo + self.batch_size, self.n_windows)
            starts = np.arange(lo, hi, dtype=np.int64) * self.context_length
            yield batch_from_starts(self._tokens, starts, self.context_length, self._device)

    def __repr__(self) -> str:
        return (
            f"ValidationBatches(n_windows={self.n_windows:,}, batch_size={self.batch_size}, "
            f"context_length={self.context_length}, n_target_tokens={self.n_target_tokens:,})"
        )


def validation_batches(
    tokens: TokenArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    *,
    max_batches: int | None = None,
) -> ValidationBatches:
    """Consecutive non-overlapping windows from the start of ``tokens``, the same every call.

    Args:
        tokens: 1-D token ids (numpy array, ``np.memmap`` such as ``TokenFile.tokens``, or CPU
            tensor).
        batch_size: windows per batch; the last batch may hold fewer.
        context_length: ``T``, input tokens per window.
        device: where batches go (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
        max_batches: evaluate at most this many batches (the first ones); default: every
            whole window in the file.

    Returns:
        An iterable of ``(x, y)`` int64 tensors of shape ``(batch, T)``, with ``len()`` (the
        number of batches), ``n_windows`` and ``n_target_tokens`` (``n_windows * T``).

    Raises:
        ValueError: an invalid or unavailable device, a non-positive size, fewer than
            ``context_length + 1`` tokens, or tokens that are not 1-D integers on the CPU.
    """
    return ValidationBatches(tokens, batch_size, context_length, device, max_batches=max_batches)
