"""MoE in-batch balancing alone: what the offsets cost a layer, and how close they land (not a
test).

``model.moe.batch_load_cap`` adds, in every training forward pass of every MoE layer, per-expert
offsets found on the batch (:func:`lmforge.model.moe.balance.batch_balance_offsets`); at
``bench_moe.py``'s shape (a) that is 32 × 1024 tokens over 64 experts, top-8, in each of 11
layers, so every 90 µs a layer is ~1 ms a step. This times, on sigmoid scores whose rows come in
documents that favour their own experts (the per-batch skew the bias cannot know):

* ``route_topk``: the router's own top-k pass (the cost of one pass over the scores);
* ``histograms``: one round's Triton pass over the sampled rows (``balance_histograms``);
* ``offsets rR sS``: the whole function, ``R`` rounds over ``S`` sampled rows (``all``: every
  row), its eager ops captured in a CUDA graph (the trainer compiles it too, fusing the small
  ops: a little faster still);

each the GPU time of one call, from CUDA graphs of ten calls (launches cost nothing, as in the
trainer's graphs);

and reports the whole batch's max/mean load before and after the offsets.

    python benches/bench_balance.py [--rows 32768] [--experts 64] [--top-k 8] [--cap 1.2]
        [--rounds 1,2,3] [--sample 8192,all] [--iters 50] [--out PATH]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cuda_graph_ms, default_out_path, print_table, write_gpu_result  # noqa: E402


def skewed_scores(rows: int, experts: int, docs: int, spread: float, device: str):
    """Sigmoid scores, each of ``docs`` documents favouring its own experts."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    favour = torch.randn(docs, experts, generator=g) * spread
    noise = torch.randn(rows, experts, generator=g)
    per_doc = -(-rows // docs)
    return torch.sigmoid(noise + favour.repeat_interleave(per_doc, dim=0)[:rows]).to(device)


def graph_us(fn, iters: int) -> float:
    """GPU time of one ``fn()`` in µs (:func:`_common.cuda_graph_ms`)."""
    return cuda_graph_ms(fn, iters) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--cap", type=float, default=1.2)
    p.add_argument("--rounds", default="1,2,3")
    p.add_argument("--sample", default="8192,all", help="sampled rows; 'all' for every row")
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch

    from lmforge.kernels.balance_histograms import balance_histograms, thresholds
    from lmforge.kernels.route_topk import route_topk
    from lmforge.model.moe.balance import batch_balance_offsets, expert_counts

    if not torch.cuda.is_available():
        print("needs a CUDA GPU; nothing measured")
        return 0
    n, e, k = args.rows, args.experts, args.top_k
    scores = skewed_scores(n, e, args.docs, args.spread, "cuda")
    zeros = torch.zeros(e, device="cuda")
    mean = n * k / e

    def ratio(offsets) -> float:
        return float(expert_counts(route_topk(scores, offsets, k), e).max()) / mean

    results: dict = {"before": ratio(zeros)}
    rows = [
        [
            "route_topk (all rows)",
            f"{graph_us(lambda: route_topk(scores, zeros, k), args.iters):.0f}",
            "",
        ]
    ]
    edges = thresholds("cuda")
    samples = [None if s == "all" else int(s) for s in args.sample.split(",")]
    for sample in samples:
        stride = max(1, n // sample) if sample else 1
        part = scores[stride // 2 :: stride].contiguous()
        us = graph_us(lambda part=part: balance_histograms(part, zeros, edges, k), args.iters)
        rows.append([f"histograms ({part.shape[0]} rows)", f"{us:.0f}", ""])
        results[f"histograms/{part.shape[0]}"] = us
    for sample in samples:
        for r in (int(x) for x in args.rounds.split(",")):

            def offsets(x, r=r, sample=sample):
                return batch_balance_offsets(x, k, args.cap, r, sample)[0]

            us = graph_us(lambda offsets=offsets: offsets(scores), args.iters)
            after = ratio(offsets(scores))
            name = f"offsets r{r} s{sample or 'all'}"
            rows.append([name, f"{us:.0f}", f"{after:.3f}"])
            results[name] = dict(us=us, max_load_ratio=after)
    print(f"max/mean load before the offsets: {results['before']:.3f}")
    print_table(["what", "µs", "max/mean after"], rows)
    out = args.out or default_out_path("balance")
    write_gpu_result(out, "balance", dict(args=vars(args) | {"out": str(out)}, **results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
