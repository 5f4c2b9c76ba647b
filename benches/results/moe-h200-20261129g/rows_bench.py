"""Micro-benchmark: lmforge's MoE row kernels against variants with ``k`` a compile-time constant.

Times ``gather_sum`` (with and without weights) and ``combine_backward`` at (a) N = 32,768,
k = 8, d = 768 and (b) k = 2, bf16, CUDA events over 50 calls, and checks the variants' outputs
against the package's. Run on the device machine with the wheel installed; writes
``$OUT/rows-bench.json``. (The package's kernel has since taken the unrolled gather-and-sum.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from lmforge.kernels import moe_rows


@triton.jit
def gather_sum_unrolled(
    SRC, IDX, W, OUT, d, K: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr
):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < d
    r0 = tl.load(IDX + t * K).to(tl.int64)
    acc = tl.load(SRC + r0 * d + cols, mask=inside, other=0.0).to(tl.float32)
    if HAS_W:
        acc = acc * tl.load(W + t * K).to(tl.float32)
    for j in tl.static_range(1, K):
        r = tl.load(IDX + t * K + j).to(tl.int64)
        row = tl.load(SRC + r * d + cols, mask=inside, other=0.0).to(tl.float32)
        if HAS_W:
            row = row * tl.load(W + t * K + j).to(tl.float32)
        acc += row
    tl.store(OUT + t * d + cols, acc.to(OUT.dtype.element_ty), mask=inside)


@triton.jit
def combine_bwd_unrolled(HS, G, IDX, DY, DHS, DG, d, K: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # d <= BLOCK: dy is loaded once
    cols = tl.arange(0, BLOCK)
    inside = cols < d
    dy = tl.load(DY + t * d + cols, mask=inside, other=0.0).to(tl.float32)
    for j in tl.static_range(K):
        r = tl.load(IDX + t * K + j).to(tl.int64)
        g = tl.load(G + t * K + j).to(tl.float32)
        h = tl.load(HS + r * d + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(DHS + r * d + cols, (g * dy).to(DHS.dtype.element_ty), mask=inside)
        tl.store(DG + t * K + j, tl.sum(h * dy, axis=0).to(DG.dtype.element_ty))


def timed(fn: Callable[[], object], n: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def bench_shape(name: str, n: int, k: int, d: int) -> dict[str, dict]:
    """Every variant at one shape: ``{key: {ms, tbs, equal}}``."""
    res: dict[str, dict] = {}
    src = torch.randn(n * k, d, device="cuda", dtype=torch.bfloat16)
    idx = torch.randperm(n * k, device="cuda").view(n, k)
    w = torch.rand(n, k, device="cuda", dtype=torch.float32)
    dy = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    moved = (n * k * d + n * d) * 2
    for has_w in (True, False):
        weights = w if has_w else None
        ref = moe_rows.gather_sum(src, idx, weights)
        for warps in (4, 8):
            for block in (256, 1024):
                out = torch.empty_like(ref)
                grid = (n, -(-d // block))
                args = (src, idx, w if has_w else idx, out, d)
                kw = dict(K=k, HAS_W=has_w, BLOCK=block, num_warps=warps)

                def run(args=args, kw=kw, grid=grid) -> None:
                    gather_sum_unrolled[grid](*args, **kw)

                run()
                ms = timed(run)
                key = f"{name}/gather_sum/w{int(has_w)}/unrolled/b{block}/nw{warps}"
                res[key] = dict(ms=ms, tbs=moved / ms / 1e9, equal=torch.equal(out, ref))
        ms = timed(lambda weights=weights: moe_rows.gather_sum(src, idx, weights))
        res[f"{name}/gather_sum/w{int(has_w)}/package"] = dict(ms=ms, tbs=moved / ms / 1e9)
    moved = (2 * n * k * d + n * d) * 2  # reads dy and hs, writes dhs
    dhs_ref, dg_ref = moe_rows.combine_backward(src, w, idx, dy)
    for warps in (4, 8):
        dhs, dg = torch.empty_like(src), torch.empty_like(w)

        def run_bwd(warps=warps, dhs=dhs, dg=dg) -> None:
            combine_bwd_unrolled[(n,)](
                src, w, idx, dy, dhs, dg, d, K=k, BLOCK=1024, num_warps=warps
            )

        run_bwd()
        same = torch.equal(dhs, dhs_ref) and torch.allclose(dg, dg_ref, rtol=1e-5, atol=1e-4)
        ms = timed(run_bwd)
        res[f"{name}/combine_bwd/unrolled/nw{warps}"] = dict(
            ms=ms, tbs=moved / ms / 1e9, equal=same
        )
    ms = timed(lambda: moe_rows.combine_backward(src, w, idx, dy))
    res[f"{name}/combine_bwd/package"] = dict(ms=ms, tbs=moved / ms / 1e9)
    return res


def main() -> None:
    res = {**bench_shape("a", 32768, 8, 768), **bench_shape("b", 32768, 2, 768)}
    for key, v in res.items():
        print(f"{key:45s} {v['ms']:.4f} ms {v['tbs']:.2f} TB/s {v.get('equal', '')}")
    out = os.environ.get("OUT", "/tmp")
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=res)
    with open(f"{out}/rows-bench.json", "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
