"""Evaluation on a token file: mean loss, perplexity and bits per byte.

Loss and perplexity depend on the tokenizer (a bigger vocabulary makes each token harder to
predict and covers more text), so runs with different tokenizers are compared in **bits per
byte**: the summed cross-entropy in bits over the UTF-8 bytes the target tokens stand for.
Special tokens stand for no text: they count neither bytes nor loss in bits per byte (the
convention of nanochat's ``evaluate_bpb``), while the mean loss covers every position.

The windows are the fixed, consecutive ones of :func:`lmforge.data.validation_batches`, so
every evaluation of every run sees the same tokens.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data import validation_batches
from lmforge.model import Transformer

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

__all__ = ["EvalResult", "evaluate", "token_byte_lengths"]

_ROWS = 4096  # logits rows per chunk: 4096 x 50,304 float32 = 0.8 GB


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured.

    Attributes:
        loss: mean cross-entropy (nats) over every target position.
        perplexity: ``exp(loss)``.
        bits_per_byte: summed loss in bits over the bytes of the (non-special) targets;
            ``None`` without token byte lengths.
        tokens: target positions evaluated.
        accuracy: the share of targets predicted exactly (argmax), for the masked-LM objective;
            ``None`` for next-token evaluation.
    """

    loss: float
    perplexity: float
    bits_per_byte: float | None
    tokens: int
    accuracy: float | None = None


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each id stands for: ``len(vocab[id])``, 0 for special tokens and padding ids.

    Args:
        tokenizer: the tokenizer that made the token file.
        vocab_size: the model's vocabulary size (>= ``tokenizer.n_vocab``).
    """
    lengths = np.zeros(vocab_size, dtype=np.int64)
    special = set(tokenizer.special_tokens.values())
    for token_id, token in tokenizer.vocab.items():
        if token_id < vocab_size and token_id not in special:
            lengths[token_id] = len(token)
    return lengths


def _token_losses(
    model: Transformer, hidden: torch.Tensor, targets: torch.Tensor, autocast: Any
) -> torch.Tensor:
    """Per-token cross-entropy (float64), the logits made ``_ROWS`` rows at a time so that a
    large vocabulary's float32 logits never exist for the whole batch at once."""
    out = []
    for h, t in zip(hidden.split(_ROWS), targets.split(_ROWS), strict=True):
        with autocast:
            logits = model.logits(h)
        out.append(F.cross_entropy(logits.float(), t, reduction="none").double())
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: Transformer,
    tokens: np.ndarray,
    *,
    batch_size: int,
    context_length: int,
    device: torch.device | str,
    max_batches: int | None = None,
    token_bytes: np.ndarray | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Evaluate a model on the fixed validation windows of ``tokens``.

    Args:
        model: the model (its ``forward_hidden`` and ``logits``).
        tokens: a 1-D token array or memmap.
        batch_size: windows per forward pass.
        context_length: window length.
        device: where to run.
        max_batches: evaluate at most this many batches (``None``: the whole file).
        token_bytes: bytes per id (:func:`token_byte_lengths`) for bits per byte.
        autocast_dtype: run the forward under autocast to this dtype (e.g. ``torch.bfloat16``).

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: ``tokens`` too short for one window (from ``validation_batches``).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    byte_table = None if token_bytes is None else torch.as_tensor(token_bytes, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    bits_loss = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        for x, y in validation_batches(
            tokens, batch_size, context_length, device, max_batches=max_batches
        ):
            with autocast:
                hidden, _ = model.forward_hidden(x)
            losses = _token_losses(model, hidden.flatten(0, 1), y.flatten(), autocast)
            loss_sum += losses.sum()
            count += y.numel()
            if byte_table is not None:
                nb = byte_table[y.flatten()]
                bits_loss += (losses * (nb > 0)).sum()
                n_bytes += nb.sum()
    finally:
        model.train(was_training)
    loss = loss_sum.item() / count
    bpb = None
    if byte_table is not None and n_bytes.item() > 0:
        bpb = bits_loss.item() / math.log(2) / n_bytes.item()
    return EvalResult(
        loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bpb, tokens=count
    )
