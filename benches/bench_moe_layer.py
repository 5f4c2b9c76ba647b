"""One Mixture-of-Experts layer, lmforge's beside torchtitan's, forward and backward (not a test).

The same layer in both libraries, with the same weights: a sigmoid router (DeepSeek-V3: gates
normalised over the chosen experts, a selection-only bias at zero), routed SwiGLU experts run as
grouped GEMMs, and for (a) one shared expert; bf16 autocast, each layer compiled on its own. The
shapes are ``bench_moe.py``'s at ``gpt2-124M`` (batch 32 × 1024 tokens, d_model 768):

* ``a``: 64 experts of width 256, top-8, one shared expert of width 256;
* ``b``: 8 experts of width 1024, top-2.

torchtitan (``pip install torchtitan spmd_types==0.2.3 tyro --no-deps``; its MoE needs no more)
builds ``torchtitan.models.common.moe.MoE`` from its configs; lmforge's weights are copied into it.
Before timing, the two outputs and input gradients are compared on the same input (their
relative difference is reported: torchtitan's experts always compute in bf16, so on the CPU,
where lmforge's run in float32, they differ by bf16's rounding; on a GPU both run bf16). Each
layer is then timed over ``--iters`` forward+backward passes (CUDA events, after ``--warmup``),
and on a GPU also by the sum of its kernels' own times over as many passes (the profiler's
``kernel ms``: one layer alone can be bound by the host's launches, which a whole model's queue
hides, so the wall clock can understate a layer with more, shorter kernels);
TFLOP/s count the active FLOPs, 6 × the active expert and router parameters per token (forward
2, backward 4). A third row, ``lmforge-pytorch``, is lmforge's layer with its Triton kernels off
(``LMFORGE_TRITON=0``: PyTorch's top-k, Inductor's gathers and SwiGLU), which is what the
kernels buy.

    python benches/bench_moe_layer.py [--configs a,b] [--tokens 32768] [--iters 20] [--out PATH]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_out_path, machine_info, now_utc, print_table, write_json  # noqa: E402

CONFIGS = {
    "a": dict(experts=64, top_k=8, width=256, shared=1),
    "b": dict(experts=8, top_k=2, width=1024, shared=0),
}
D_MODEL = 768


def lmforge_layer(spec: dict):
    from lmforge.model.config import ModelConfig
    from lmforge.model.moe import MoE, MoEConfig

    moe = MoEConfig(
        n_routed_experts=spec["experts"],
        top_k=spec["top_k"],
        n_shared_experts=spec["shared"],
        expert_d_ff=spec["width"],
        router="sigmoid",
    )
    cfg = ModelConfig(
        vocab_size=256, context_length=1024, d_model=D_MODEL, n_layers=1, n_heads=12, moe=moe
    )
    return MoE(cfg, 0)


def torchtitan_layer(spec: dict, ours):
    """torchtitan's MoE with the same shapes, router rule and weights as ``ours``."""
    import torch
    from torchtitan.models.common.feed_forward import FeedForward
    from torchtitan.models.common.linear import Linear
    from torchtitan.models.common.moe import (
        GroupedExperts,
        MoE,
        RoutedExperts,
        TokenChoiceTopKRouter,
    )
    from torchtitan.models.common.token_dispatcher import LocalTokenDispatcher

    e, k, f = spec["experts"], spec["top_k"], spec["width"]

    def lin(i: int, o: int):
        return Linear.Config(in_features=i, out_features=o)

    shared = None
    if spec["shared"]:
        width = spec["shared"] * f
        shared = FeedForward.Config(
            w1=lin(D_MODEL, width), w2=lin(width, D_MODEL), w3=lin(D_MODEL, width)
        )
    cfg = MoE.Config(
        num_experts=e,
        routed_experts=RoutedExperts.Config(
            inner_experts=GroupedExperts.Config(dim=D_MODEL, hidden_dim=f, num_experts=e),
            token_dispatcher=LocalTokenDispatcher.Config(num_experts=e, top_k=k),
        ),
        router=TokenChoiceTopKRouter.Config(
            num_experts=e, gate=lin(D_MODEL, e), top_k=k, score_func="sigmoid", route_norm=True
        ),
        load_balance_coeff=1e-3,
        shared_experts=shared,
    )
    theirs = cfg.build()
    with torch.no_grad():
        inner = theirs.routed_experts.inner_experts
        inner.w1_EFD.copy_(ours.experts.w1)
        inner.w3_EFD.copy_(ours.experts.w3)
        inner.w2_EDF.copy_(ours.experts.w2)
        theirs.router.gate.weight.copy_(ours.router.weight)
        theirs.expert_bias_E.zero_()
        if shared is not None:
            for name in ("w1", "w2", "w3"):
                getattr(theirs.shared_experts, name).weight.copy_(getattr(ours.shared, name).weight)
    return theirs


def fwd_bwd(layer, x, probe):
    import torch

    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        y = layer(x)
    (y.float() * probe).sum().backward()
    return y


def compare(ours, theirs, x, probe) -> dict:
    """Output and input-gradient differences, relative to the norms of lmforge's."""
    out = []
    for layer in (ours, theirs):
        xi = x.detach().clone().requires_grad_()
        y = fwd_bwd(layer, xi, probe)
        out.append((y.detach().float(), xi.grad.float()))
        layer.zero_grad(set_to_none=True)
    (y0, g0), (y1, g1) = out
    return {
        "output_rel_diff": float((y1 - y0).norm() / y0.norm()),
        "input_grad_rel_diff": float((g1 - g0).norm() / g0.norm()),
    }


def time_layer(layer, x, probe, warmup: int, iters: int) -> float:
    """Milliseconds per forward+backward (CUDA events; wall clock on the CPU)."""
    import torch

    for _ in range(warmup):
        fwd_bwd(layer, x, probe)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fwd_bwd(layer, x, probe)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters
    t = time.perf_counter()
    for _ in range(iters):
        fwd_bwd(layer, x, probe)
    return (time.perf_counter() - t) / iters * 1e3


def kernel_ms(layer, x, probe, iters: int) -> float | None:
    """GPU milliseconds per forward+backward: the sum of the kernels' own times (profiler), which
    one layer run alone can leave below the wall clock when the host's launches are the bound.
    ``None`` on the CPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fwd_bwd(layer, x, probe)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1e3


def active_flops(spec: dict, tokens: int) -> float:
    per_token = (spec["top_k"] + spec["shared"]) * 3 * D_MODEL * spec["width"] + D_MODEL * spec[
        "experts"
    ]
    return 6.0 * per_token * tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="a,b")
    p.add_argument(
        "--tokens", type=int, default=32 * 1024, help="tokens per pass (batch × sequence)"
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    import torch

    try:
        import torchtitan  # noqa: F401
    except ImportError:
        print("torchtitan is not installed: nothing to compare (see the module docstring)")
        return 0
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows, results = [], {}
    for name in a.configs.split(","):
        spec = CONFIGS[name]
        torch.manual_seed(0)
        ours = lmforge_layer(spec)
        theirs = torchtitan_layer(spec, ours)
        ours, theirs = ours.to(device), theirs.to(device)
        gen = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(1, a.tokens, D_MODEL, generator=gen).to(device).requires_grad_()
        probe = torch.randn(1, a.tokens, D_MODEL, generator=gen).to(device)
        check = compare(ours, theirs, x, probe)
        r = dict(spec=spec, tokens=a.tokens, **check)
        runs = (("lmforge", ours, "1"), ("lmforge-pytorch", ours, "0"), ("torchtitan", theirs, "1"))
        for who, layer, triton in runs:
            os.environ["LMFORGE_TRITON"] = triton  # read when the layer is traced
            torch._dynamo.reset()
            fn = layer if a.no_compile else torch.compile(layer)
            ms = time_layer(fn, x, probe, a.warmup, a.iters)
            gpu = kernel_ms(fn, x, probe, a.iters)
            r[who] = {"ms": ms, "kernel_ms": gpu, "tflops": active_flops(spec, a.tokens) / ms / 1e9}
        os.environ.pop("LMFORGE_TRITON")
        r["speedup_vs_torchtitan"] = r["torchtitan"]["ms"] / r["lmforge"]["ms"]
        ours_gpu, theirs_gpu = r["lmforge"]["kernel_ms"], r["torchtitan"]["kernel_ms"]
        if ours_gpu and theirs_gpu:
            r["kernel_speedup_vs_torchtitan"] = theirs_gpu / ours_gpu
        results[name] = r

        def cell(v: float | None) -> str:
            return "" if v is None else f"{v:.3f}"

        for who in ("lmforge", "lmforge-pytorch", "torchtitan"):
            q = r[who]
            rows.append([name, who, f"{q['ms']:.3f}", cell(q["kernel_ms"]), f"{q['tflops']:.0f}"])
        gpu_ratio = r.get("kernel_speedup_vs_torchtitan")
        rows.append(
            [
                name,
                "ratio",
                f"{r['speedup_vs_torchtitan']:.2f}x",
                "" if gpu_ratio is None else f"{gpu_ratio:.2f}x",
                f"out diff {check['output_rel_diff']:.1e}",
            ]
        )
    header = ["config", "library", "ms fwd+bwd", "kernel ms", "TFLOP/s (active, wall)"]
    print_table(header, rows)
    out = a.out or default_out_path("moe-layer")
    write_json(
        out,
        {
            "benchmark": "moe_layer",
            "timestamp": now_utc().isoformat(timespec="seconds"),
            **machine_info(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "compiled": not a.no_compile,
            "results": results,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
