"""Causal self-attention for short sequences: forward and backward in three Triton passes.

``F.scaled_dot_product_attention`` takes cuDNN's kernels on an H100/H200, which are built for
long sequences and large heads. At the ``stories-17M`` shape (256 positions, 16 heads of 32
dimensions, 128 sequences; one H200) they spend 0.44 ms a layer (forward 94 µs, the backward
268 µs plus a pass that precomputes ``rowsum(dO ∘ O)`` and one that converts the float32 ``dQ``
its atomics accumulate), where the bytes take ~0.1 ms at 4 TB/s.

Here, as in FlashAttention-2 (Dao 2023), with the online softmax and recomputation:

* **forward**: one program per block of queries of one head loops over the key/value blocks up
  to the diagonal (the blocks before it unmasked, the diagonal one masked), keeps the running
  maximum and sum in float32, and writes the output and the log-sum-exp (base 2) per row;
* **dQ**: one program per block of queries recomputes the probabilities from the log-sum-exp,
  forms ``rowsum(dO ∘ O)`` itself (and stores it for the next pass), and accumulates ``dQ``
  over the key/value blocks up to the diagonal: no atomics, no float32 copy of ``dQ``;
* **dK, dV**: one program per block of keys of one key/value head loops over the query heads
  of its group (grouped-query attention needs no copied heads) and over the query blocks from
  the diagonal on.

The probabilities enter the matmuls in the inputs' 16-bit dtype, as in FlashAttention; every
sum is float32. At the ``stories-17M`` shape in the trained model (one H200, under CUDA graphs):
forward 92 µs, dQ 105 µs, dK/dV 112 µs, 308 µs a layer against cuDNN's 445; the step 10.2 →
10.0 ms. At 1024 positions (``gpt2-124M``) they lose: forward 198 µs against 153, backward
568 against cuDNN's 539 (``benches/results/h200-20261129-s12/``).

The custom operators ``lmforge::causal_attention`` and its backward are opaque
to ``torch.compile``. :func:`lmforge.model.attention.attend` takes this path for plain causal
attention of 16-bit tensors on CUDA up to :data:`MAX_SEQ` positions; the reference is SDPA.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["HEAD_DIMS", "MAX_SEQ", "causal_attention", "supports"]

MAX_SEQ = 256
"""The longest sequence :func:`lmforge.model.attention.attend` sends here: faster than cuDNN
at 256 positions, slower at 1024 (not measured in between); beyond, SDPA."""

HEAD_DIMS = (16, 32, 64, 128)
"""Head dimensions the kernels take (powers of two, a whole row per program)."""


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether ``(q, k, v)`` (``(B, H, T, D)`` and twice ``(B, Hkv, T, D)``) fit these kernels:
    16-bit, one dtype and device, the same batch, length and head dimension (values as wide as
    keys: not MLA's narrower values), query heads a multiple of key/value heads, the head
    dimension in :data:`HEAD_DIMS` and contiguous, at most :data:`MAX_SEQ` positions."""
    return (
        q.dim() == k.dim() == v.dim() == 4
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.dtype == v.dtype == q.dtype
        and k.device == v.device == q.device
        and v.shape == k.shape
        and q.shape[0] == k.shape[0]
        and q.shape[2:] == k.shape[2:]
        and q.shape[-1] in HEAD_DIMS
        and q.shape[-2] <= MAX_SEQ
        and k.shape[1] > 0
        and q.shape[1] % k.shape[1] == 0
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    )


def _config(d: int, backward: bool) -> tuple[int, int, int, int]:
    """(query rows, key rows, warps, pipeline stages) of a program, by head dimension: the
    fastest of ten tried on an H200 (``benches/results/h200-20261129-s12/tune-attn2.json``; at
    ``stories-17M``'s shape the forward took 86–165 µs, the backward 206–517 µs across them).
    The backward's loops are short (a few blocks), so deeper pipelines only cost occupancy."""
    if backward:
        return (64, 64, 4, 1) if d <= 64 else (64, 64, 4, 2)
    return (64, 32, 4, 2) if d <= 32 else (64, 64, 4, 3)


@functools.cache
def _kernels():  # built on first use: importing Triton costs a second, and CPUs never need it
    from lmforge.kernels import _attention_triton as k

    return k.attn_fwd, k.attn_bwd_dq, k.attn_bwd_dkdv


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"causal_attention takes (B, H, T, D) queries and (B, Hkv, T, D) keys and values, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"causal_attention needs the same batch, length and head_dim, and query heads a "
            f"multiple of key/value heads: got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"causal_attention takes head_dim in {HEAD_DIMS}, got {q.shape[-1]}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("causal_attention needs the head dimension contiguous (stride 1)")


def _heads_major(like: Tensor, heads: int) -> Tensor:
    """An empty ``(B, heads, T, D)`` tensor like ``like``, laid out ``(B, T, heads, D)``: the
    layout of the projections, which reads back without a copy (real and fake alike)."""
    batch, _, n, d = like.shape
    return like.new_empty(batch, n, heads, d).transpose(1, 2)


def _strides(*tensors: Tensor) -> tuple[int, ...]:
    """The batch, head and position strides of each ``(B, H, T, D)`` tensor, in order: what
    the kernels take after their pointers (the head dimension is contiguous)."""
    return tuple(st for t in tensors for st in t.stride()[:3])


@torch.library.custom_op("lmforge::causal_attention", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    batch, heads, n, d = q.shape
    group = heads // k.shape[1]
    out = _heads_major(q, heads)
    lse = q.new_empty(batch, heads, n, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    bm, bn, warps, stages = _config(d, backward=False)
    fwd, _, _ = _kernels()
    fwd[(batch * heads * -(-n // bm),)](
        q, k, v, out, lse, *_strides(q, k, v, out), n, heads, group, scale,
        D=d, BM=bm, BN=bn, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out, lse


@_forward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    batch, heads, n, _ = q.shape
    return _heads_major(q, heads), q.new_empty(batch, heads, n, dtype=torch.float32)


@torch.library.custom_op("lmforge::causal_attention_backward", mutates_args=())
def _backward_op(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    lse = lse.contiguous()  # indexed as (B·H, T) rows
    dq, dk, dv = _heads_major(q, heads), _heads_major(k, kv_heads), _heads_major(v, kv_heads)
    delta = torch.empty_like(lse)
    if dq.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    bm, bn, warps, stages = _config(d, backward=True)
    _, bwd_dq, bwd_dkdv = _kernels()
    bwd_dq[(batch * heads * -(-n // bm),)](
        q, k, v, out, grad, lse, delta, dq, *_strides(q, k, v, out, grad, dq),
        n, heads, group, scale,
        D=d, BM=bm, BN=bn, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    bwd_dkdv[(batch * kv_heads * -(-n // bn),)](
        q, k, v, grad, lse, delta, dk, dv, *_strides(q, k, v, grad, dk, dv),
        n, heads, group, scale,
        D=d, BM=bm, BN=bn, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return dq, dk, dv


@_backward_op.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    heads, kv_heads = q.shape[1], k.shape[1]
    return _heads_major(q, heads), _heads_major(k, kv_heads), _heads_major(v, kv_heads)


def _setup(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mark_non_differentiable(lse)  # a statistic for the backward, not an output to train
    ctx.scale = scale


def _backward(ctx, grad: Tensor, _grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _backward_op(q, k, v, out, lse, grad, ctx.scale)
    return dq, dk, dv, None


_forward.register_autograd(_backward, setup_context=_setup)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Causal softmax attention, ``softmax(q kᵀ · scale + causal mask) v``, with its gradient.

    Args:
        q: 16-bit ``(batch, heads, seq, head_dim)``, any strides with the last dimension
            contiguous (the ``(batch, seq, heads, head_dim)`` projections transposed are
            read in place).
        k: ``(batch, kv_heads, seq, head_dim)``; ``heads`` a multiple of ``kv_heads``
            (query head ``h`` reads key/value head ``h // (heads / kv_heads)``).
        v: like ``k``.
        scale: the logits' factor; ``1 / sqrt(head_dim)`` by default.

    Returns:
        ``(batch, heads, seq, head_dim)``, a view of a ``(batch, seq, heads, head_dim)``
        tensor.

    Raises:
        ValueError: shapes that do not match, a head dimension not in :data:`HEAD_DIMS`, or a
            head dimension that is not contiguous.
    """
    _check(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out, _ = _forward(q, k, v, float(scale))
    return out
