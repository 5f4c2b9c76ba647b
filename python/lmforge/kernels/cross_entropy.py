"""Softmax cross-entropy of one chunk of LM-head logits, and its gradient, in two passes.

The reference is the PyTorch arithmetic of :mod:`lmforge.model.loss` (``logsumexp``, gather,
``softmax - onehot``). Compiled by inductor it materialises the chunk's logits in float32 and
reads them about five times (cast, max-abs metric, ``logsumexp``, target gather, gradient): for
GPT-2's 50 K vocabulary that is most of a training step's memory traffic outside the matmuls.

Here one program per row reads the bf16 (or fp16/fp32) logits twice and writes the gradient
once, in the logits' dtype, into a new buffer:

1. an online softmax normaliser over the vocabulary in blocks (running max ``m`` and sum
   ``s·e^{-m}``, rescaled when the max grows; Milakov & Gimelshein 2018), with the max-abs
   metrics and the target's logit on the way;
2. with gradients wanted: ``(p · (1 + 2 w lse) - onehot) · valid / n``, times the soft-cap's
   derivative ``1 - (z / c)²`` when the logits are capped ``z = c · tanh(raw / c)``.

Arithmetic is float32 throughout. Per row it returns ``lse``, the NLL (0 for an ignored
target), ``max |z|`` and ``max |raw|``; the caller sums them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chunk_cross_entropy"]

_STATS = 4  # lse, nll, max |z|, max |raw|


def _kernel():  # built on first use: importing Triton costs a second, and CPUs never need it
    import triton
    import triton.language as tl

    @triton.jit
    def ce_rows(
        X,
        GRAD,
        T,
        INV_N,
        OUT,
        stride_x,
        stride_g,
        vocab,
        ignore_index,
        z_loss,
        cap,
        HAS_CAP: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row = X + row * stride_x
        target = tl.load(T + row)
        valid = target != ignore_index
        m = -float("inf")
        s = 0.0
        max_z = 0.0
        max_raw = 0.0
        for off in range(0, vocab, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            inside = cols < vocab
            raw = tl.load(x_row + cols, mask=inside, other=0.0).to(tl.float32)
            z = raw
            if HAS_CAP:
                z = cap * (2.0 * tl.sigmoid(2.0 * raw / cap) - 1.0)
            max_raw = tl.maximum(max_raw, tl.max(tl.where(inside, tl.abs(raw), 0.0), axis=0))
            max_z = tl.maximum(max_z, tl.max(tl.where(inside, tl.abs(z), 0.0), axis=0))
            z = tl.where(inside, z, -float("inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        safe = tl.where(valid, target, 0)
        raw_t = tl.load(x_row + safe).to(tl.float32)
        z_t = raw_t
        if HAS_CAP:
            z_t = cap * (2.0 * tl.sigmoid(2.0 * raw_t / cap) - 1.0)
        nll = tl.where(valid, lse - z_t, 0.0)
        out = OUT + row * 4
        tl.store(out, lse)
        tl.store(out + 1, nll)
        tl.store(out + 2, max_z)
        tl.store(out + 3, max_raw)
        if WRITE_GRAD:
            row_scale = tl.where(valid, tl.load(INV_N), 0.0)
            coef = row_scale * (1.0 + 2.0 * z_loss * lse)
            g_row = GRAD + row * stride_g
            for off in range(0, vocab, BLOCK):
                cols = off + tl.arange(0, BLOCK)
                inside = cols < vocab
                raw = tl.load(x_row + cols, mask=inside, other=0.0).to(tl.float32)
                z = raw
                if HAS_CAP:
                    z = cap * (2.0 * tl.sigmoid(2.0 * raw / cap) - 1.0)
                g = tl.exp(z - lse) * coef - tl.where(cols == safe, row_scale, 0.0)
                if HAS_CAP:
                    g = g * (1.0 - (z / cap) * (z / cap))
                tl.store(g_row + cols, g.to(GRAD.dtype.element_ty), mask=inside)

    return ce_rows


_KERNEL = None


@torch.library.custom_op("lmforge::chunk_cross_entropy", mutates_args=())
def chunk_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    inv_n: Tensor,
    z_loss: float,
    cap: float,
    ignore_index: int,
    write_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Per-row loss statistics of ``logits`` and, optionally, d(loss)/d(logits).

    Args:
        logits: ``(rows, vocab)`` raw head outputs (before soft-capping), unit stride in vocab.
        targets: ``(rows,)`` int64; ``ignore_index`` rows get no loss and a zero gradient.
        inv_n: 0-d float32, 1 / (number of valid targets in the whole batch).
        z_loss: weight of ``lse²``.
        cap: the soft-cap ``c`` (0 = none).
        ignore_index: the ignored target value.
        write_grad: also return the gradient.

    Returns:
        ``stats`` ``(rows, 4)`` float32 (``lse, nll, max |z|, max |raw|``) and the gradient in
        the logits' dtype (an empty tensor when ``write_grad`` is false).
    """
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    rows, vocab = logits.shape
    stats = torch.empty(rows, _STATS, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if write_grad else logits.new_empty(0)
    if rows:
        _KERNEL[(rows,)](
            logits,
            grad if write_grad else logits,
            targets,
            inv_n,
            stats,
            logits.stride(0),
            grad.stride(0) if write_grad else 0,
            vocab,
            ignore_index,
            float(z_loss),
            float(cap),
            HAS_CAP=cap > 0,
            WRITE_GRAD=write_grad,
            BLOCK=min(4096, max(16, 1 << (vocab - 1).bit_length())),
            num_warps=8 if vocab >= 8192 else 4,
        )
    return stats, grad


@chunk_cross_entropy.register_fake
def _(
    logits: Tensor,
    targets: Tensor,
    inv_n: Tensor,
    z_loss: float,
    cap: float,
    ignore_index: int,
    write_grad: bool,
) -> tuple[Tensor, Tensor]:
    stats = logits.new_empty(logits.shape[0], _STATS, dtype=torch.float32)
    return stats, torch.empty_like(logits) if write_grad else logits.new_empty(0)
