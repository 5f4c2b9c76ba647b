"""Reference math: ``softmax``, ``cross_entropy``, ``scaled_dot_product_attention``, ``softcap``.

Plain, readable PyTorch versions of the operations the model is built on. The training path uses
fused kernels (``F.scaled_dot_product_attention``, FlexAttention, the chunked head loss in
:mod:`lmforge.model.loss`); these references are what the tests hold the fast paths to.

Design choices:

* **Numerical stability by max subtraction**: ``softmax(x) = softmax(x - max x)`` and
  ``log Σ exp(x) = m + log Σ exp(x - m)`` with ``m = max x``, so no ``exp`` overflows even for
  logits scaled by 1000 (the standard trick; CS336 assignment 1, §3.5).
* **Boolean masks mean "may attend"** (True = keep), the convention of
  ``F.scaled_dot_product_attention``; masked scores become ``-inf`` before the softmax.
* **Soft-capping** ``c · tanh(x / c)`` (Gemma 2, Gemma Team 2024) bounds logits smoothly to
  ``(-c, c)`` and is close to the identity for ``|x| << c``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "at_least_float32",
    "cross_entropy",
    "scaled_dot_product_attention",
    "softcap",
    "softmax",
]


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if its dtype is narrower (bf16, fp16), else unchanged (float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax along ``dim``.

    Args:
        x: any floating tensor.
        dim: the dimension that sums to one.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


def cross_entropy(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    Computed as ``logsumexp(logits) - logits[target]`` with the max subtracted first, so it stays
    finite for huge logits.

    Args:
        logits: ``(..., vocab)`` unnormalised scores.
        targets: integer ``(...)`` class ids; entries equal to ``ignore_index`` are left out.
        ignore_index: the target value that marks a position without a loss.

    Returns:
        A scalar: the mean over the positions not ignored (0 when every position is ignored).

    Raises:
        ValueError: if the shapes of ``logits`` and ``targets`` do not match.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} + (vocab,)"
        )
    m = logits.amax(dim=-1, keepdim=True)
    lse = (m + torch.log(torch.exp(logits - m).sum(dim=-1, keepdim=True))).squeeze(-1)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    target_logit = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    nll = torch.where(valid, lse - target_logit, 0.0)
    return nll.sum() / valid.sum().clamp(min=1)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> Tensor:
    """``softmax(q kᵀ / sqrt(d) + mask) v``, the textbook formula (Vaswani et al. 2017).

    Args:
        q: ``(..., seq_q, head_dim)`` queries.
        k: ``(..., seq_k, head_dim)`` keys.
        v: ``(..., seq_k, d_v)`` values.
        mask: optional boolean ``(..., seq_q, seq_k)`` (broadcastable); True = may attend.
            Every query must be allowed at least one key.

    Returns:
        ``(..., seq_q, d_v)``.

    Raises:
        ValueError: if ``mask`` is not boolean.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ v


def softcap(x: Tensor, cap: float) -> Tensor:
    """Smoothly bound ``x`` to ``(-cap, cap)``: ``cap · tanh(x / cap)``.

    Args:
        x: any floating tensor.
        cap: the bound; must be > 0.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    return cap * torch.tanh(x / cap)
