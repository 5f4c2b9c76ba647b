"""The tensors of the LM head and loss during a training step, listed one by one.

Companion of :mod:`lmforge.accounting.activations` for the model's last stage: final RMSNorm →
LM head → cross-entropy. ``N = batch · seq`` tokens, ``C = min(loss_chunk_size, N)`` rows per
chunk, ``V`` the vocabulary, ``d`` the width. The logits are the largest tensor of a small
model (32 K tokens × 50 K vocab × 4 bytes = 6.6 GB), so the two loss paths differ most here:

**Chunked** (``return_logits=False``, what the trainer runs;
:func:`lmforge.model.loss.lm_head_loss`, Liger-Kernel's fused linear cross-entropy): the
gradients of the hidden states and of the head weight are computed in the forward pass, chunk
by chunk, and saved; backward only scales them. Eager mode:

| phase             | tensor                                           | elements | dtype |
|-------------------|--------------------------------------------------|----------|-------|
| saved             | d loss / d hidden (all chunks, concatenated)     | N·d      | fp32  |
| saved             | d loss / d head weight                           | V·d      | fp32  |
| forward transient | final hidden states                              | N·d      | fp32  |
|                   | autocast copy of the head weight                 | V·d      | bf16  |
|                   | one chunk of logits (matmul output)              | C·V      | bf16  |
|                   | the same in float32                              | C·V      | fp32  |
|                   | softmax, its scaled copy, the scatter-add result | 3·C·V    | fp32  |
|                   | the previous chunk's gradient (2+ chunks)        | C·V      | bf16  |
| backward          | the scaled gradients handed back                 | N·d, V·d | fp32  |

Compiled, Inductor fuses each chunk's softmax, gradient and casts: one bf16 and one fp32
``C·V`` buffer are alive at a time. The partition saves the per-chunk matmul outputs (bf16
``d loss / d hidden`` chunks, and the per-chunk head-weight gradients while ``k = ⌈N/C⌉``
of them are no larger than their float32 sum) and sums them in the backward.

With the Triton kernel (:mod:`lmforge.kernels.cross_entropy`, on a GPU) the whole head is one
opaque operator, compiled or not: beside what eager mode saves, the inputs cast to the matmul
dtype, the hidden-state gradient in that dtype, per-row statistics (``4·N`` fp32) and one chunk
of logits and of their gradient, both in the matmul dtype; no float32 ``C·V`` buffer exists.

**Full logits** (``return_logits=True``), eager: float32 logits saved by ``logsumexp`` (and
returned), the head matmul's bf16 input and weight copy saved; in the forward one more ``N·V``
float32 buffer (``logsumexp``'s ``exp``, or ``abs`` for the metric); in the backward four:
``exp(z - lse)``, its product with the incoming gradient, ``gather``'s scatter, their sum.
Compiled, the forward's extra buffer is the bf16 matmul output and the backward holds two
float32 and one bf16 ``N·V`` gradients.

The final RMSNorm saves its input (``N·d``, fp32) and inverse RMS (``N``), as in a block.
Measured against ``torch.cuda.max_memory_allocated`` on an H200 (PyTorch 2.11) with
``tests/accounting/memory_probe.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.accounting.activations import DTYPE_BYTES, TensorGroup
from lmforge.model.config import ModelConfig

__all__ = ["LossTensors", "loss_tensors"]


@dataclass(frozen=True)
class LossTensors:
    """The head and loss's rows, by when they are alive.

    Attributes:
        saved: alive from the end of the forward pass to the head's backward.
        forward_transient: alive at the forward pass's worst moment (the last loss chunk).
        backward_transient: created by the head's backward, beside ``saved``.
    """

    saved: list[TensorGroup]
    forward_transient: list[TensorGroup]
    backward_transient: list[TensorGroup]


def loss_tensors(
    cfg: ModelConfig,
    n: int,
    *,
    residual: str,
    compute: str,
    chunked: bool,
    chunk_size: int,
    compiled: bool,
    kernel: bool = False,
) -> LossTensors:
    """The rows of the module docstring for ``n`` tokens.

    Args:
        cfg: the model's shape.
        n: tokens in the micro-batch.
        residual: dtype of the residual stream and the parameters.
        compute: dtype of the matmuls.
        chunked: the chunked, fused head loss (``return_logits=False``).
        chunk_size: rows per chunk (``Transformer.loss_chunk_size``).
        compiled: ``torch.compile``'s fused kernels instead of eager ops.
        kernel: the chunked loss runs the Triton cross-entropy kernel.

    Returns:
        The :class:`LossTensors`.
    """
    d, v = cfg.d_model, cfg.vocab_size
    norm = [
        TensorGroup("final-norm input", n * d, residual),
        TensorGroup("final-norm inverse RMS", n, "fp32"),
    ]
    copy = [] if compute == residual else [TensorGroup("head weight copy", v * d, compute)]
    if chunked:
        return _chunked(cfg, n, residual=residual, compute=compute, chunk_size=chunk_size,
                        compiled=compiled, kernel=kernel, norm=norm, copy=copy)  # fmt: skip
    logits = [TensorGroup("float32 logits", n * v, "fp32")]
    head_in = [] if compute == residual else [TensorGroup("head input copy", n * d, compute)]
    if compiled:  # fused: the bf16 matmul output, then two float32 gradients and a bf16 one
        fwd = [TensorGroup("logits (matmul output)", n * v, compute)]
        bwd = [
            TensorGroup("d loss / d logits, float32", 2 * n * v, "fp32"),
            TensorGroup("d loss / d logits, matmul dtype", n * v, compute),
        ]
    else:
        fwd = [TensorGroup("logsumexp's exp buffer", n * v, "fp32")]
        bwd = [
            TensorGroup("d loss / d logits: two paths, their sum, a temporary", 4 * n * v, "fp32")
        ]
    return LossTensors(norm + logits + head_in + copy, fwd, bwd)


def _chunked(
    cfg: ModelConfig,
    n: int,
    *,
    residual: str,
    compute: str,
    chunk_size: int,
    compiled: bool,
    kernel: bool,
    norm: list[TensorGroup],
    copy: list[TensorGroup],
) -> LossTensors:
    """The chunked, fused head loss's rows (module docstring)."""
    d, v = cfg.d_model, cfg.vocab_size
    c = min(chunk_size, n)
    chunks = -(-n // c)
    saved = [
        TensorGroup("d loss / d hidden", n * d, residual),
        TensorGroup("d loss / d head weight", v * d, residual),
    ]
    hidden = [TensorGroup("final hidden states", n * d, residual)]
    if kernel:  # one opaque operator: the same tensors compiled or not
        work = [
            TensorGroup("per-row loss statistics", 4 * n, "fp32"),
            TensorGroup("logits chunk", c * v, compute),
            TensorGroup("d loss / d logits chunk", c * v, compute),
        ]
        if compute != residual:  # the inputs cast to the matmul dtype, the gradient in it
            work.append(TensorGroup("final hidden states, matmul dtype", n * d, compute))
            work.append(TensorGroup("d loss / d hidden, matmul dtype", n * d, compute))
        return LossTensors(norm + saved, hidden + copy + work, saved)
    logits = [TensorGroup("logits chunk", c * v, compute)] if compute != "fp32" else []
    logits.append(TensorGroup("logits chunk, float32 (fused softmax and gradient)", c * v, "fp32"))
    if compiled:
        per_chunk_w = chunks * DTYPE_BYTES[compute] <= DTYPE_BYTES[residual]
        saved = [
            TensorGroup("d loss / d hidden chunks", n * d, compute),
            TensorGroup("d loss / d head weight, per chunk", chunks * v * d, compute)
            if per_chunk_w
            else TensorGroup("d loss / d head weight", v * d, residual),
        ]
        bwd = [TensorGroup("d loss / d hidden, float32", n * d, residual)]
        return LossTensors(norm + saved, logits, bwd)
    work = [TensorGroup("softmax, scaled, scatter-added (d loss / d logits)", 3 * c * v, "fp32")]
    if chunks > 1:  # still bound to a Python name while the next chunk is computed
        work.append(TensorGroup("previous chunk's d loss / d logits", c * v, compute))
    return LossTensors(norm + saved, hidden + copy + logits + work, saved)
