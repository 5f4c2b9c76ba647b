"""Causal attention kernels alone, forward and backward, at the shapes of the model presets.

The dense model spends ~13% of a 124M training step in attention. ``F.scaled_dot_product_attention``
picks among several kernels (FlashAttention-2, cuDNN, memory-efficient) by its own priority
list; this measures each one, and compiled FlexAttention, on the layout the model hands them
(``(batch, seq, heads, head_dim)`` projections seen through a transpose), so that the model can
ask for the fastest:

* ``default``: SDPA's own choice (the kernel it ran is named from a profiler trace);
* ``flash``, ``cudnn``, ``efficient``: SDPA restricted to one backend with ``sdpa_kernel``;
* ``flex``: ``flex_attention`` compiled, with a causal ``BlockMask``;
* ``lmforge``: :func:`lmforge.kernels.attention.causal_attention` (the model takes it up to
  ``MAX_SEQ`` positions; measured here at every shape).

Shapes (batch, seq, heads, head_dim): ``17M`` (128, 256, 16, 32), ``124M`` (32, 1024, 12, 64),
``1B`` (16, 1024, 16, 128). TFLOP/s count the causal half: 2·B·H·T²·D forward, 2.5× that
backward. Each kernel's output and input gradients are compared with the flash kernel's.

    python benches/bench_attention.py [--shapes 17M,124M,1B] [--iters 30] [--out PATH]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_out_path, print_table, write_gpu_result  # noqa: E402

SHAPES = {"17M": (128, 256, 16, 32), "124M": (32, 1024, 12, 64), "1B": (16, 1024, 16, 128)}
IMPLS = ("default", "flash", "cudnn", "efficient", "flex", "lmforge")


def make_inputs(shape: str):
    import torch

    batch, seq, heads, dim = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(batch, seq, 3, heads, dim, device="cuda", generator=gen)
    qkv = qkv.bfloat16().requires_grad_(True)
    grad = torch.randn(batch, heads, seq, dim, device="cuda", generator=gen).bfloat16()
    return qkv, grad


def attention_fn(impl: str, seq: int):
    """A function of ``(q, k, v)`` in ``(batch, heads, seq, dim)`` running ``impl``."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if impl == "flex":
        mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, seq, seq, device="cuda")
        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda q, k, v: compiled(q, k, v, block_mask=mask)
    if impl == "default":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if impl == "lmforge":
        from lmforge.kernels.attention import causal_attention

        return causal_attention
    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[impl]

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run


def kernel_names(fn, qkv, grad) -> list[str]:
    """The CUDA kernels one forward and backward of ``fn`` launches, by total time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(fn, qkv, grad)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    events.sort(key=lambda e: -e.device_time_total)
    return [e.key[:90] for e in events[:4]]


def step(fn, qkv, grad):
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    out = fn(q, k, v)
    out.backward(grad)
    return out


def measure(shape: str, impl: str, iters: int, reference) -> dict:
    import torch

    batch, seq, heads, dim = SHAPES[shape]
    qkv, grad = make_inputs(shape)
    fn = attention_fn(impl, seq)
    try:
        out = step(fn, qkv, grad)
    except RuntimeError as e:  # a backend that does not serve this shape
        return {"error": str(e).splitlines()[0][:200]}
    result: dict = {}
    if reference is not None:
        ref_out, ref_grad = reference
        result["max_abs_diff_out"] = (out.float() - ref_out).abs().max().item()
        result["max_abs_diff_grad"] = (qkv.grad.float() - ref_grad).abs().max().item()
    for _ in range(3):
        qkv.grad = None
        step(fn, qkv, grad)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        qkv.grad = None
        start.record()
        step(fn, qkv, grad)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    ms = times[len(times) // 2]
    flops = 2 * batch * heads * seq * seq * dim * 3.5
    result.update(ms=ms, tflops=flops / ms / 1e9)
    if impl == "default":
        result["kernels"] = kernel_names(fn, qkv, grad)
    if impl == "flash":
        qkv.grad = None
        out = step(fn, qkv, grad)
        result["_reference"] = (out.detach().float(), qkv.grad.float())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="17M,124M,1B")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU; nothing measured")
        return 0
    impls = args.impls.split(",")
    order = ["flash"] + [i for i in impls if i != "flash"]  # flash first: the reference
    results: dict = {}
    rows = []
    for shape in args.shapes.split(","):
        reference = None
        for impl in order:
            r = measure(shape, impl, args.iters, reference)
            if "_reference" in r:
                reference = r.pop("_reference")
            if impl not in impls:
                continue
            results[f"{shape}/{impl}"] = r
            if "error" in r:
                rows.append([shape, impl, "-", "-", "-", r["error"][:60]])
                continue
            diff = r.get("max_abs_diff_grad")
            rows.append(
                [
                    shape,
                    impl,
                    f"{r['ms']:.3f}",
                    f"{r['tflops']:.0f}",
                    "" if diff is None else f"{diff:.1e}",
                    (r.get("kernels") or [""])[0][:60],
                ]
            )
    print_table(["shape", "kernel", "ms fwd+bwd", "TFLOP/s", "max |Δgrad|", "top kernel"], rows)
    out = args.out or default_out_path("attention")
    write_gpu_result(out, "attention", results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
