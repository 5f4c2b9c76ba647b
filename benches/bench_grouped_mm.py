"""The experts' GEMMs alone: torch._grouped_mm against matmuls of the same FLOPs (not a test).

The MoE benchmark (``bench_moe.py``) finds the grouped GEMMs of the experts slower per FLOP than
the dense model's matmuls. This measures that gap on its own, for the two MoE shapes of
``bench_moe.py`` at batch 32 x 1024 (``a``: 64 experts of width 256, top-8; ``b``: 8 experts of
width 1024, top-2; ``d_model`` 768), forward and backward of one SwiGLU expert layer's GEMMs
(gate and up stacked, then down), bf16, on the GPU:

* ``grouped``: ``torch._grouped_mm`` over the rows sorted by expert, as lmforge's dispatch runs;
* ``loop``: one ``torch.mm`` per expert (the counts known on the host, which a compiled model
  cannot have without a device-to-host copy per layer);
* ``dense``: one ``torch.mm`` over all rows with a single expert's weights (the same FLOPs; what
  the dense model's MLP runs at).

Counts are balanced, or drawn with a max/mean load of about ``--skew`` (the imbalance the routers
leave per step on real text). TFLOP/s count 6 x rows x d_model x (3 x width) per layer.

    python benches/bench_grouped_mm.py [--shapes a,b] [--skew 1.5] [--iters 50] [--out PATH]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_out_path, print_table, write_gpu_result  # noqa: E402

SHAPES = {"a": (64, 256, 8), "b": (8, 1024, 2)}  # experts, width, top-k
D_MODEL, TOKENS = 768, 32 * 1024


def counts_for(n_experts: int, rows: int, skew: float, gen) -> list[int]:
    """Rows per expert summing to ``rows``: equal, or the first expert at ``skew`` x the mean and
    the others sharing the rest with random weights in 0.5..1.5."""
    import torch

    if skew <= 1.0:
        counts = [rows // n_experts] * n_experts
    else:
        top = int(skew * rows / n_experts)
        rest = torch.rand(n_experts - 1, generator=gen) + 0.5
        counts = [top] + [int(x) for x in rest / rest.sum() * (rows - top)]
    counts[-1] += rows - sum(counts)
    return counts


def swiglu_layer(impl: str, xs, w13, w2, counts: list[int]):
    """Forward of the stacked gate/up GEMM, SwiGLU and the down GEMM, ``impl`` as above."""
    import torch
    import torch.nn.functional as F

    def act(h):
        g, u = h.chunk(2, dim=-1)
        return F.silu(g) * u

    if impl == "grouped":
        offs = torch.tensor(counts, device=xs.device).cumsum(0).to(torch.int32)
        h = act(torch._grouped_mm(xs, w13.mT, offs=offs))
        return torch._grouped_mm(h, w2.mT, offs=offs)
    if impl == "dense":
        return act(xs @ w13[0].t()) @ w2[0].t()
    outs, start = [], 0
    for e, n in enumerate(counts):
        x = xs[start : start + n]
        outs.append(act(x @ w13[e].t()) @ w2[e].t())
        start += n
    return torch.cat(outs)


def measure(shape: str, impl: str, skew: float, iters: int) -> dict:
    import torch

    n_experts, width, top_k = SHAPES[shape]
    rows = TOKENS * top_k
    gen = torch.Generator().manual_seed(0)
    counts = counts_for(n_experts, rows, skew, gen)
    dev = torch.device("cuda")
    xs = torch.randn(rows, D_MODEL, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w13 = (torch.randn(n_experts, 2 * width, D_MODEL, device=dev) * 0.02).bfloat16()
    w2 = (torch.randn(n_experts, D_MODEL, width, device=dev) * 0.02).bfloat16()
    w13.requires_grad_(True)
    w2.requires_grad_(True)
    grad = torch.randn(rows, D_MODEL, device=dev, dtype=torch.bfloat16)

    def step() -> None:
        out = swiglu_layer(impl, xs, w13, w2, counts)
        out.backward(grad)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    flops = 6 * rows * D_MODEL * 3 * width
    return {
        "ms": ms,
        "tflops": flops / ms / 1e9,
        "max_mean_load": max(counts) / (rows / n_experts),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="a,b")
    p.add_argument("--skew", type=float, default=1.5, help="max/mean load of the skewed counts")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available() or not hasattr(torch, "_grouped_mm"):
        print("needs a CUDA GPU and torch._grouped_mm (PyTorch >= 2.8); nothing measured")
        return 0
    results: dict = {}
    rows = []
    for shape in args.shapes.split(","):
        for skew in (1.0, args.skew):
            for impl in ("dense", "grouped", "loop"):
                if impl == "dense" and skew != 1.0:
                    continue
                r = measure(shape, impl, skew, args.iters)
                results[f"{shape}/{impl}/skew{skew:g}"] = r
                rows.append(
                    [
                        shape,
                        impl,
                        f"{r['max_mean_load']:.2f}",
                        f"{r['ms']:.3f}",
                        f"{r['tflops']:.0f}",
                    ]
                )
    print_table(["shape", "impl", "max/mean", "ms fwd+bwd", "TFLOP/s"], rows)
    out = args.out or default_out_path("grouped-mm")
    write_gpu_result(out, "grouped_mm", results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
