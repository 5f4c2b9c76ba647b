"""Padding a batch of sequences of unequal length, with the attention mask that goes with it.

Design choices:

* **Right padding**: row ``b`` holds its tokens at positions ``0 … len_b - 1``, so positions
  (RoPE) are those of the sequence alone and ``[CLS]`` stays at position 0.
* **The mask says which positions are real** (True), the convention of
  :meth:`lmforge.model.Encoder.forward`'s ``attention_mask``; the model turns it into a
  key-padding mask. Labels are padded with ``-100`` by the same function (``pad_value=-100``),
  so padded positions carry no loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pad_sequences"]


def pad_sequences(
    rows: Sequence[Sequence[int]], pad_value: int, *, length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad integer sequences into one tensor.

    Args:
        rows: the sequences (token ids or per-token labels), each non-empty.
        pad_value: what fills the padded positions (the ``[PAD]`` id, or ``-100`` for labels).
        length: the padded length (default: the longest row); rows longer than it are an error.

    Returns:
        ``(values, mask)``: int64 ``(len(rows), length)`` and bool ``(len(rows), length)``,
        True at real positions.

    Raises:
        ValueError: no rows, an empty row, or a row longer than ``length``.
    """
    if len(rows) == 0:
        raise ValueError("no rows to pad")
    lengths = [len(row) for row in rows]
    if min(lengths) == 0:
        raise ValueError(f"row {lengths.index(0)} is empty: every row needs a token")
    width = max(lengths) if length is None else length
    if max(lengths) > width:
        raise ValueError(f"a row of {max(lengths)} exceeds the padded length {width}")
    values = torch.full((len(rows), width), pad_value, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.int64)
        mask[i, : len(row)] = True
    return values, mask
