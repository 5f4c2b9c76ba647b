"""Block configurations of lmforge's causal attention kernels, in GPU time (a developer tool).

:mod:`lmforge.kernels.attention` picks ``(query rows, key rows, warps, pipeline stages)`` per
head dimension (``_config``). This times each candidate at the presets' attention shapes:
the forward op and the backward op, each captured ten times in one CUDA graph and replayed
(eager timings of these kernels measure Triton's Python launch, not the GPU), beside SDPA's
forward captured the same way.

    python benches/tune_attention.py [--shapes 17M,124M,1B] [--out PATH]

Results: a table on stdout and one JSON file in ``benches/results/``. The twelfth session's
run is ``benches/results/h200-20261129-s12/tune-attn2.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_graph_ms, default_out_path, print_table, write_gpu_result  # noqa: E402

SHAPES = {"17M": (128, 256, 16, 32), "124M": (32, 1024, 12, 64), "1B": (16, 1024, 16, 128)}
"""(batch, seq, heads, head_dim) of each preset's attention."""

CONFIGS = [
    (64, 64, 4, 1),
    (64, 64, 4, 2),
    (64, 64, 4, 3),
    (128, 64, 4, 2),
    (128, 64, 8, 2),
    (64, 32, 4, 2),
    (64, 32, 4, 1),
    (128, 128, 8, 2),
    (32, 32, 2, 2),
    (128, 32, 4, 2),
]
"""Candidates ``(BM, BN, warps, stages)``; the forward needs ``BM % BN == 0``."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="17M,124M,1B")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch
    import torch.nn.functional as F

    import lmforge.kernels.attention as attention

    if not torch.cuda.is_available():
        print("needs a CUDA GPU; nothing measured")
        return 0
    chosen = attention._config
    results: dict = {}
    rows = []
    for shape in args.shapes.split(","):
        batch, seq, heads, dim = SHAPES[shape]
        gen = torch.Generator(device="cuda").manual_seed(0)
        qkv = torch.randn(batch, seq, 3, heads, dim, device="cuda", generator=gen).bfloat16()
        grad = torch.randn(batch, seq, heads, dim, device="cuda", generator=gen).bfloat16()
        grad = grad.transpose(1, 2)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        scale = 1 / math.sqrt(dim)

        sdpa = partial(F.scaled_dot_product_attention, q, k, v, is_causal=True)
        row = {"sdpa_forward_ms": cuda_graph_ms(sdpa)}
        rows.append([shape, "sdpa", f"{row['sdpa_forward_ms'] * 1e3:.1f}", "", ""])
        out, lse = attention._forward(q, k, v, scale)
        for cfg in CONFIGS:
            attention._config = lambda d, backward, cfg=cfg: cfg  # type: ignore[assignment]
            try:
                fwd = cuda_graph_ms(partial(attention._forward, q, k, v, scale))
                bwd = cuda_graph_ms(partial(attention._backward_op, q, k, v, out, lse, grad, scale))
            except Exception as e:  # a configuration the compiler refuses (shared memory)
                row[str(cfg)] = {"error": str(e).splitlines()[0][:200]}
                rows.append([shape, str(cfg), "-", "-", str(e).splitlines()[0][:40]])
                continue
            finally:
                attention._config = chosen  # type: ignore[assignment]
            row[str(cfg)] = {"forward_ms": fwd, "backward_ms": bwd}
            mark = "*" if cfg in (chosen(dim, False), chosen(dim, True)) else ""
            rows.append([shape, str(cfg), f"{fwd * 1e3:.1f}", f"{bwd * 1e3:.1f}", mark])
        results[shape] = row
    print_table(["shape", "config", "forward µs", "backward µs", "chosen"], rows)
    out_path = args.out or default_out_path("tune-attention")
    write_gpu_result(out_path, "tune-attention", results)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
