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
target), ``max |z|`` and ``max |raw|``; the caller sums them. :func:`head_cross_entropy` wraps
the whole head (matmul, kernel, gradient matmuls, chunk by chunk) as one custom operator, so
``torch.compile`` treats it as a single opaque call and the memory is that of eager mode.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["head_cross_entropy"]

_STATS = 4  # lse, nll, max |z|, max |raw|


@functools.cache
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


def _chunk_stats_and_grad(
    logits: Tensor,
    targets: Tensor,
    inv_n: Tensor,
    z_loss: float,
    cap: float,
    ignore_index: int,
    write_grad: bool,
    stats: Tensor,
) -> Tensor:
    """One launch over the rows of ``logits``: fills ``stats`` (``(rows, 4)`` float32, rows
    contiguous: ``lse, nll, max |z|, max |raw|``) and, with ``write_grad``, returns
    d(loss)/d(logits) in the logits' dtype (else ``logits`` itself, untouched)."""
    rows, vocab = logits.shape
    grad = torch.empty_like(logits) if write_grad else logits
    _kernel()[(rows,)](
        logits,
        grad,
        targets,
        inv_n,
        stats,
        logits.stride(0),
        grad.stride(0),
        vocab,
        ignore_index,
        float(z_loss),
        float(cap),
        HAS_CAP=cap > 0,
        WRITE_GRAD=write_grad,
        BLOCK=min(4096, max(16, 1 << (vocab - 1).bit_length())),
        num_warps=8 if vocab >= 8192 else 4,
    )
    return grad


_MM_OUT_DTYPE = "dtype_out" in torch.ops.aten.addmm.overloads()


def _accumulate_weight_grad(acc: Tensor, grad: Tensor, h: Tensor, first: bool) -> None:
    """``acc ← gradᵀ h`` (``first``) or ``acc ← acc + gradᵀ h``, in place, ``acc`` float32.

    On CUDA with bf16/fp16 inputs: one GEMM that adds ``acc`` in its epilogue and writes float32
    into ``acc`` itself (``addmm`` with ``out_dtype`` and ``out=acc``). The out-of-place ``addmm``
    first copied the (vocab, d) accumulator into a new tensor for every chunk: at ``gpt2-124M``
    eight copies of 155 MB, 0.6 ms of a 66 ms step (one H200). The first chunk ignores ``acc``
    (``beta=0``), so it need not be zeroed.
    """
    if _MM_OUT_DTYPE and acc.is_cuda and grad.dtype in (torch.bfloat16, torch.float16):
        torch.addmm(acc, grad.t(), h, beta=0.0 if first else 1.0, out_dtype=torch.float32, out=acc)
    elif first:
        acc.copy_(grad.t() @ h)
    else:
        acc.add_((grad.t() @ h).to(acc.dtype))


@torch.library.custom_op("lmforge::head_cross_entropy", mutates_args=())
def head_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    z_loss: float,
    cap: float,
    chunk_size: int,
    ignore_index: int,
    hidden_grad: bool,
    weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The LM head and its softmax cross-entropy, chunk by chunk, with the gradients.

    One opaque operation for ``torch.compile``: inside, per chunk of ``chunk_size`` rows, the
    head matmul (cuBLAS, in the inputs' dtype), the row kernel, and the two gradient matmuls,
    so that exactly one chunk of logits and one of their gradient exist at a time, whatever
    order a compiler would choose.

    Args:
        hidden: ``(rows, d)`` final hidden states, in the matmul dtype (bf16 under autocast).
        weight: ``(vocab, d)`` the head, in the same dtype.
        targets: ``(rows,)`` int64; ``ignore_index`` rows get no loss and a zero gradient.
        z_loss: weight of ``lse²``.
        cap: the soft-cap ``c`` (0 = none).
        chunk_size: rows per chunk.
        ignore_index: the ignored target value.
        hidden_grad: return d(loss)/d(hidden).
        weight_grad: return d(loss)/d(weight).

    Returns:
        ``stats`` ``(rows, 4)`` float32 (``lse, nll, max |z|, max |raw|``), d(loss)/d(hidden)
        ``(rows, d)`` in ``hidden``'s dtype and d(loss)/d(weight) ``(vocab, d)`` in float32
        (each an empty tensor when not asked for). The loss is the mean over valid rows.
    """
    rows = hidden.shape[0]
    valid = targets != ignore_index
    inv_n = 1.0 / valid.sum().clamp(min=1).to(torch.float32)
    stats = torch.empty(rows, _STATS, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if hidden_grad else hidden.new_empty(0)
    grad_weight = weight.new_empty(weight.shape if weight_grad else (0,), dtype=torch.float32)
    if rows == 0:
        grad_weight.zero_()
    write = hidden_grad or weight_grad
    for start in range(0, rows, chunk_size):
        end = min(start + chunk_size, rows)
        h = hidden[start:end]
        logits = h @ weight.t()
        grad = _chunk_stats_and_grad(
            logits, targets[start:end], inv_n, z_loss, cap, ignore_index, write, stats[start:end]
        )
        del logits  # one chunk of logits and one of their gradient alive at a time
        if hidden_grad:
            torch.mm(grad, weight, out=grad_hidden[start:end])
        if weight_grad:
            _accumulate_weight_grad(grad_weight, grad, h, first=start == 0)
        del grad
    return stats, grad_hidden, grad_weight


@head_cross_entropy.register_fake
def _(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    z_loss: float,
    cap: float,
    chunk_size: int,
    ignore_index: int,
    hidden_grad: bool,
    weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    stats = hidden.new_empty(hidden.shape[0], _STATS, dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if hidden_grad else hidden.new_empty(0)
    grad_weight = weight.new_empty(weight.shape if weight_grad else (0,), dtype=torch.float32)
    return stats, grad_hidden, grad_weight
