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
def attn_fwd(
    Q, K, V, OUT, LSE,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    # one axis (a second one stops at 65,535, which B·H may pass), the blocks of a head
    # side by side: their programs share its keys and values in L2
    blocks = tl.cdiv(n, BM)
    bh = tl.program_id(0) // blocks
    start = (tl.program_id(0) % blocks) * BM
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
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # the diagonal blocks: a key may be seen by the queries at or after it
    for lo in range(start, tl.minimum(start + BM, n), BN):
        cols = lo + tl.arange(0, BN)
        k = _tile(K, cols, n, skb, skh, skt, d_idx, b, kvh)
        v = _tile(V, cols, n, svb, svh, svt, d_idx, b, kvh)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        seen = (cols[None, :] <= rows[:, None]) & (cols < n)[None, :]
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    obase = OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    live = (rows < n)[:, None]
    tl.store(
        obase + rows[:, None].to(tl.int64) * sot + d_idx[None, :],
        out.to(OUT.dtype.element_ty),
        mask=live,
    )
    tl.store(LSE + bh.to(tl.int64) * n + rows, m_i + tl.log2(l_i), mask=rows < n)


@triton.jit
def attn_bwd_dq(
    Q, K, V, OUT, DO, LSE, DELTA, DQ,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdb, sdh, sdt, sgb, sgh, sgt,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    # one axis (a second one stops at 65,535, which B·H may pass), the blocks of a head
    # side by side: their programs share its keys and values in L2
    blocks = tl.cdiv(n, BM)
    bh = tl.program_id(0) // blocks
    start = (tl.program_id(0) % blocks) * BM
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
    gbase = DQ + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh
    live = (rows < n)[:, None]
    tl.store(
        gbase + rows[:, None].to(tl.int64) * sgt + d_idx[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=live,
    )


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt, skgb, skgh, skgt, svgb, svgh, svgt,
    n, heads, group, scale,
    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    blocks = tl.cdiv(n, BN)
    bkv = tl.program_id(0) // blocks
    start = (tl.program_id(0) % blocks) * BN
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
    live = (cols < n)[:, None]
    kbase = DK + b.to(tl.int64) * skgb + kvh.to(tl.int64) * skgh
    vbase = DV + b.to(tl.int64) * svgb + kvh.to(tl.int64) * svgh
    tl.store(
        kbase + cols[:, None].to(tl.int64) * skgt + d_idx[None, :],
        (dk * scale).to(DK.dtype.element_ty),
        mask=live,
    )
    tl.store(
        vbase + cols[:, None].to(tl.int64) * svgt + d_idx[None, :],
        dv.to(DV.dtype.element_ty),
        mask=live,
    )
