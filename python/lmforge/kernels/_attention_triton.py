"""The Triton code of :mod:`lmforge.kernels.attention` (imported on first use: importing Triton
costs a second, and CPUs never need it). Kept at module level so that one kernel may call
another, whatever Triton version resolves the names."""

# ruff: noqa: E501
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["attn_bwd_dkdv", "attn_bwd_dq", "attn_fwd"]


@triton.jit
def _tile(ptr, rows, n, sb, sh, st, d_idx, b, h):
    """Rows ``rows`` of head ``h`` of sequence ``b``, zeros past ``n`` (a zero probability
    times a finite row adds nothing): ``(len, D)``."""
    base = ptr + b.to(tl.int64) * sb + h.to(tl.int64) * sh
    where = base + rows[:, None].to(tl.int64) * st + d_idx[None, :]
    return tl.load(where, mask=(rows < n)[:, None], other=0.0)


@triton.jit
def _put(ptr, x, rows, n, sb, sh, st, d_idx, b, h):
    """Stores ``x`` as rows ``rows`` of head ``h`` of sequence ``b`` (those below ``n``), in the
    pointer's dtype: the inverse of :func:`_tile`."""
    base = ptr + b.to(tl.int64) * sb + h.to(tl.int64) * sh
    where = base + rows[:, None].to(tl.int64) * st + d_idx[None, :]
    tl.store(where, x.to(ptr.dtype.element_ty), mask=(rows < n)[:, None])


@triton.jit
def _program(n, BLOCK: tl.constexpr):
    """(head, first row) of this program. One grid axis (a second one stops at 65,535, which
    batch × heads may pass), a head's blocks side by side: their programs share its keys and
    values in L2."""
    blocks = tl.cdiv(n, BLOCK)
    return tl.program_id(0) // blocks, (tl.program_id(0) % blocks) * BLOCK


@triton.jit
def _softmax_block(s, v, m_i, l_i, acc):
    """One key block of the online softmax: scores ``s`` (log2 units, masked ones ``-inf``)
    fold into the running maximum ``m_i``, sum ``l_i`` and output ``acc``."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def attn_fwd(
    Q, K, V, OUT, LSE,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    bh, start = _program(n, BM)
    b, h = bh // heads, bh % heads
    kvh = h // group
    rows = start + tl.arange(0, BM)
    d_idx = tl.arange(0, D)
    q = _tile(Q, rows, n, sqb, sqh, sqt, d_idx, b, h)
    tl.static_assert(BM % BN == 0)  # the unmasked loop ends at a block edge
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    # blocks wholly below the diagonal: no mask (BM is a multiple of BN)
    for lo in range(0, start, BN):
        cols = lo + tl.arange(0, BN)
        k = _tile(K, cols, n, skb, skh, skt, d_idx, b, kvh)
        v = _tile(V, cols, n, svb, svh, svt, d_idx, b, kvh)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        m_i, l_i, acc = _softmax_block(s, v, m_i, l_i, acc)
    # the diagonal blocks: a key may be seen by the queries at or after it
    for lo in range(start, tl.minimum(start + BM, n), BN):
        cols = lo + tl.arange(0, BN)
        k = _tile(K, cols, n, skb, skh, skt, d_idx, b, kvh)
        v = _tile(V, cols, n, svb, svh, svt, d_idx, b, kvh)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        seen = (cols[None, :] <= rows[:, None]) & (cols < n)[None, :]
        m_i, l_i, acc = _softmax_block(tl.where(seen, s, float("-inf")), v, m_i, l_i, acc)
    _put(OUT, acc / l_i[:, None], rows, n, sob, soh, sot, d_idx, b, h)
    tl.store(LSE + bh.to(tl.int64) * n + rows, m_i + tl.log2(l_i), mask=rows < n)


@triton.jit
def attn_bwd_dq(
    Q, K, V, OUT, DO, LSE, DELTA, DQ,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdb, sdh, sdt, sgb, sgh, sgt,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    bh, start = _program(n, BM)
    b, h = bh // heads, bh % heads
    kvh = h // group
    rows = start + tl.arange(0, BM)
    d_idx = tl.arange(0, D)
    q = _tile(Q, rows, n, sqb, sqh, sqt, d_idx, b, h)
    do = _tile(DO, rows, n, sdb, sdh, sdt, d_idx, b, h)
    o = _tile(OUT, rows, n, sob, soh, sot, d_idx, b, h)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * n + rows, delta, mask=rows < n)
    lse = tl.load(LSE + bh.to(tl.int64) * n + rows, mask=rows < n, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BM, D], dtype=tl.float32)
    for lo in range(0, tl.minimum(start + BM, n), BN):
        cols = lo + tl.arange(0, BN)
        k = _tile(K, cols, n, skb, skh, skt, d_idx, b, kvh)
        v = _tile(V, cols, n, svb, svh, svt, d_idx, b, kvh)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        seen = (cols[None, :] <= rows[:, None]) & (cols < n)[None, :]
        p = tl.exp2(tl.where(seen, s, float("-inf")) - lse[:, None])
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    _put(DQ, dq * scale, rows, n, sgb, sgh, sgt, d_idx, b, h)


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt, skgb, skgh, skgt, svgb, svgh, svgt,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    bkv, start = _program(n, BN)
    kv_heads = heads // group
    b, kvh = bkv // kv_heads, bkv % kv_heads
    cols = start + tl.arange(0, BN)
    d_idx = tl.arange(0, D)
    k = _tile(K, cols, n, skb, skh, skt, d_idx, b, kvh)
    v = _tile(V, cols, n, svb, svh, svt, d_idx, b, kvh)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, D], dtype=tl.float32)
    first = (start // BM) * BM  # the query block holding this key block's diagonal
    for g in range(group):
        h = kvh * group + g
        bh = b * heads + h
        for lo in range(first, n, BM):
            rows = lo + tl.arange(0, BM)
            q = _tile(Q, rows, n, sqb, sqh, sqt, d_idx, b, h)
            do = _tile(DO, rows, n, sdb, sdh, sdt, d_idx, b, h)
            lse = tl.load(LSE + bh.to(tl.int64) * n + rows, mask=rows < n, other=0.0)
            delta = tl.load(DELTA + bh.to(tl.int64) * n + rows, mask=rows < n, other=0.0)
            st = tl.dot(k, tl.trans(q)) * qk_scale  # (keys, queries)
            seen = (cols[:, None] <= rows[None, :]) & (rows < n)[None, :]
            pt = tl.exp2(tl.where(seen, st, float("-inf")) - lse[None, :])
            dv += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q)
    _put(DK, dk * scale, cols, n, skgb, skgh, skgt, d_idx, b, kvh)
    _put(DV, dv, cols, n, svgb, svgh, svgt, d_idx, b, kvh)
