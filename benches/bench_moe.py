"""Mixture-of-Experts training throughput beside the dense model, on the same GPU in one call.

Three models with the same active parameters (``gpt2-124M``'s attention and embeddings; the MLPs
differ), each trained by this script re-invoked as a child process — bf16 autocast,
``torch.compile``, lmforge's AdamW, gradient clipping, the after-step hook (the MoE bias update)
— exactly one training step as the trainer runs it:

* ``dense``: the ``gpt2-124M`` preset (SwiGLU, ``d_ff`` 2048);
* ``a``: 64 fine-grained routed experts of width 256 (``d_ff``/8), top-8, one shared expert
  (DeepSeek-V3: sigmoid router, auxiliary-loss-free bias, sequence-wise loss), dropless —
  active parameters +5.7% over dense (the shared expert);
* ``b``: 8 routed experts of width 1024 (``d_ff``/2), top-2, softmax token-choice router with
  the Switch auxiliary loss, dropless — active parameters equal to dense;
* ``a1``, ``b1``: ``a`` and ``b`` with the first block's MLP dense (``first_dense_layers=1``,
  as DeepSeekMoE: the first router sees little more than the token embedding, and its layer
  was the whole of ``b``'s imbalance).

and, in the same call, the plain compiled baseline ``gpt_baseline.py`` at the dense shape.
MFU counts active FLOPs (``lmforge.accounting.flops_per_token``: 6 × active non-embedding
parameters + 12·L·T·d) against the card's bf16 dense peak.

Batches come from real text when ``--text`` is given (default ``.device/train.txt.xz``, the
first ``--text-mb`` MB encoded with GPT-2's ranks from ``--gpt2``), else uniform random ids (the
load balance is then not a statement about text). Each child first trains ``--warmup`` steps on
fresh batches (the balancing bias and losses act; compile happens here), then times ``--steps``
steps and reports the routers' worst max/mean expert load over the timed steps (``moe/
max_load_ratio``: the busiest expert's assignments over the mean, worst layer) — the issue's
balance target is ≤ 1.3 after warm-up — and, over ``--steps`` more untimed steps, the same ratio
of the loads summed over those steps (``summed_load_ratio``: the imbalance that persists from
batch to batch, which is what a bias or a balance loss can correct; the per-step ratio adds the
noise of which experts one batch's documents favour). ``load_curve`` samples the per-step ratio
every 25 warm-up steps.

    python benches/bench_moe.py [--configs dense,a,b] [--batch 32] [--warmup 200] [--steps 30]
        [--text .device/train.txt.xz] [--gpt2 .device/gpt2] [--out PATH.json]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    default_out_path,
    emit_result,
    machine_info,
    parse_result,
    print_table,
    run_child,
    write_json,
)
from bench_model import run_baseline, write_profile  # noqa: E402

CONFIGS: dict[str, list[str]] = {
    "dense": [],
    "a": [
        "model.moe.n_routed_experts=64",
        "model.moe.top_k=8",
        "model.moe.n_shared_experts=1",
        "model.moe.expert_d_ff=256",
        "model.moe.router=sigmoid",
    ],
    "b": [
        "model.moe.n_routed_experts=8",
        "model.moe.top_k=2",
        "model.moe.expert_d_ff=1024",
        "model.moe.router=token_choice",
    ],
}
"""Each benchmarked model as ``--set`` overrides of the ``gpt2-124M`` preset."""
CONFIGS["a1"] = [*CONFIGS["a"], "model.moe.first_dense_layers=1"]
CONFIGS["b1"] = [*CONFIGS["b"], "model.moe.first_dense_layers=1"]
CONFIGS["a2"] = [*CONFIGS["a1"], 'model.moe.expert_dtype="bfloat16"']
CONFIGS["b2"] = [*CONFIGS["b1"], 'model.moe.expert_dtype="bfloat16"']
CONFIGS["a3"] = [*CONFIGS["a2"], "model.moe.batch_load_cap=1.2"]
CONFIGS["b3"] = [*CONFIGS["b2"], "model.moe.batch_load_cap=1.2"]
"""``a1``/``b1``: the first block dense; ``a2``/``b2``: and the routed experts stored in bf16
(float32 masters in AdamW: no weight casts in the step); ``a3``/``b3``: and in-batch balancing
(``batch_load_cap`` 1.2: each training step's expert loads brought within [mean/1.2,
1.2·mean])."""

PRESET = "gpt2-124M"

LOAD_EVERY = 25
"""Warm-up steps between two readings of the max/mean expert load (``load_curve`` in the JSON)."""


def load_tokens(text: Path, gpt2: Path, megabytes: float, cache: Path) -> Path:
    """The first ``megabytes`` MB of ``text`` (plain or ``.xz``) as GPT-2 token ids (``.npy``),
    encoded once and cached at ``cache``."""
    import numpy as np

    from lmforge.tokenizer import Tokenizer

    if cache.exists():
        return cache
    opener = lzma.open if text.suffix == ".xz" else open
    with opener(text, "rb") as f:
        raw = f.read(int(megabytes * 1e6))
    body = raw.decode("utf-8", errors="ignore")
    tok = Tokenizer.from_gpt2_files(gpt2 / "encoder.json", gpt2 / "merges.txt")
    ids = tok.encode_to_numpy(body).astype(np.uint16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, ids)
    return cache


def child(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from lmforge import accounting
    from lmforge.data import get_batch
    from lmforge.model import Transformer
    from lmforge.optim import OptimConfig, build_optimizer, clip_coefficient
    from lmforge.train.config import GRAPH_MODES, load_run_config
    from lmforge.train.runtime import store_weights

    overrides = ["train.train_data=unused", *CONFIGS[a.child], *a.set]
    run = load_run_config(PRESET, overrides)
    cfg = run.model
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    # train.param_dtype as the trainer resolves it on one GPU (--set 'train.param_dtype=...')
    weights = run.resolve_param_dtype(device.type, 1).train.param_dtype
    store_weights(model, weights)
    kinds = model.param_kinds()
    opt = build_optimizer(
        [(p, kinds[n]) for n, p in model.named_parameters()],
        OptimConfig(name="adamw", lr=a.lr, weight_decay=0.1, moment_dtype=a.moment_dtype),
    )
    step_model = model if a.no_compile else torch.compile(model, mode=a.compile_mode)
    T, B = cfg.context_length, a.batch
    if a.tokens:
        tokens = np.load(a.tokens, mmap_mode="r")
    else:
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 2**22, dtype=np.int64)
    gen = np.random.default_rng(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    graphs = device.type == "cuda" and not a.no_compile and a.compile_mode in GRAPH_MODES

    def train_step():  # the model's output: loss, losses, metrics
        x, y = get_batch(tokens, B, T, device, generator=gen)
        if graphs:  # as the trainer: the last replay's outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype, enabled=device.type == "cuda"):
            out = step_model(x, y, return_logits=False)
        out.loss.backward()
        _, coef = clip_coefficient(model.parameters(), 1.0)  # as the trainer clips
        opt.step(grad_scale=coef)  # type: ignore[call-overload]
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step()
        return out

    def one() -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        out = train_step()
        ratio = out.metrics.get("moe/max_load_ratio")
        before = out.metrics.get("moe/unbalanced_max_load_ratio")
        # kept past the next replay: copied out of a CUDA graph's memory (a 0-d copy each)
        return (
            out.loss.detach().clone(),
            None if ratio is None else ratio.clone(),
            None if before is None else before.clone(),
        )

    def expert_loads() -> torch.Tensor:
        """One more training step; each MoE layer's share of assignments per expert,
        ``(layers, experts)``."""
        m = train_step().metrics
        keys = sorted((k for k in m if k.endswith("/load")), key=lambda k: int(k.split("/")[1][1:]))
        return torch.stack([m[k] for k in keys]).float()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    losses, load_curve = [], []
    for i in range(a.warmup):
        loss, ratio, _ = one()
        losses.append(loss)
        if ratio is not None and (i + 1) % LOAD_EVERY == 0:
            load_curve.append([i + 1, round(float(ratio), 3)])  # one sync per LOAD_EVERY steps
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    timed = [one() for _ in range(a.steps)]
    sync()
    dt = (time.perf_counter() - t) / a.steps
    if a.profile is not None:
        write_profile(a.profile / f"profile-moe-{a.child}.txt", one)
    load_sum, by_layer = None, None
    if cfg.moe is not None:  # a.steps more steps, not timed
        loads = [expert_loads() for _ in range(a.steps)]
        load_sum, by_layer = summed_load_ratio(loads), layer_load_ratios(loads)
    ratios = [float(r) for _, r, _ in timed if r is not None]
    before = [float(r) for _, _, r in timed if r is not None]
    losses += [loss for loss, _, _ in timed]
    counts = accounting.count_params(cfg)
    flops_tok = accounting.flops_per_token(cfg, seq_len=T)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = accounting.peak_flops(name, "bf16") if device.type == "cuda" else None
    emit_result(
        dict(
            params=counts.total,
            active_params=counts.active,
            param_dtype=weights,
            step_ms=dt * 1e3,
            tok_s=B * T / dt,
            mfu=flops_tok * B * T / dt / peak if peak else None,
            mem_gb=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            # under CUDA graphs the peak leaves out the graph pool (activations, gradients):
            # it is then the parameters and the optimizer state
            mem_scope="outside the CUDA graph pool" if graphs else "all",
            warmup_s=warm_s,
            loss_first=float(losses[0]),
            loss_last=float(losses[-1]),
            loss_timed_mean=sum(float(loss) for loss, _, _ in timed) / max(len(timed), 1),
            load_curve=load_curve,
            max_load_ratio=max(ratios) if ratios else None,
            summed_load_ratio=load_sum,
            mean_max_load_ratio=sum(ratios) / len(ratios) if ratios else None,
            # before in-batch balancing (batch_load_cap), worst over the timed steps
            unbalanced_max_load_ratio=max(before) if before else None,
            layer_load_ratios=by_layer,
            device=name,
            torch=torch.__version__,
        )
    )


def summed_load_ratio(loads: list) -> float:
    """The worst layer's max/mean of per-step expert loads (each ``(layers, experts)``) summed
    over steps: the imbalance that persists from batch to batch (what a bias or a loss corrects),
    without the noise of which experts one batch's documents favour."""
    total = sum(loads[1:], loads[0])
    return float((total.amax(dim=1) / total.mean(dim=1)).max())


def layer_load_ratios(loads: list) -> dict[str, list[float]]:
    """Per MoE layer: the mean over steps of each step's max/mean load (``per_step``) and the
    max/mean of the loads summed over the steps (``summed``)."""
    import torch  # the child's import; the parent never calls this

    stacked = torch.stack(loads)  # (steps, layers, experts)
    per_step = (stacked.amax(dim=2) / stacked.mean(dim=2)).mean(dim=0)
    total = stacked.sum(dim=0)
    summed = total.amax(dim=1) / total.mean(dim=1)
    return dict(
        per_step=[round(float(r), 3) for r in per_step],
        summed=[round(float(r), 3) for r in summed],
    )


HEADERS = [
    "model",
    "active M",
    "stored M",
    "tokens/s",
    "MFU",
    "step ms",
    "mem GB",
    "max/mean",
    "uncapped",
    "summed",
    "loss",
]


def table_row(name: str, r: dict | None) -> list[str]:
    if r is None:
        return [name, "failed", *[""] * (len(HEADERS) - 2)]

    def fmt(key: str, spec: str) -> str:
        v = r.get(key)
        return "" if v is None else format(v, spec)

    return [
        name,
        f"{r['active_params'] / 1e6:.1f}" if "active_params" in r else "",
        f"{r['params'] / 1e6:.1f}" if "params" in r else "",
        f"{r['tok_s']:,.0f}",
        fmt("mfu", ".1%") or "n/a",
        f"{r['step_ms']:.1f}",
        fmt("mem_gb", ".1f"),
        fmt("max_load_ratio", ".2f"),
        fmt("unbalanced_max_load_ratio", ".2f"),
        fmt("summed_load_ratio", ".2f"),
        fmt("loss_timed_mean", ".3f"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="dense,a,b", help=f"any of {sorted(CONFIGS)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=200, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument(
        "--moment-dtype", choices=["bfloat16"], default=None, help="AdamW's moments in bf16"
    )
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE override")
    p.add_argument("--text", type=Path, default=Path(".device/train.txt.xz"))
    p.add_argument("--text-mb", type=float, default=64.0)
    p.add_argument("--gpt2", type=Path, default=Path(".device/gpt2"))
    p.add_argument("--baseline", type=Path, default=Path(".device/gpt_baseline.py"))
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--profile", type=Path, default=None, help="folder for per-model GPU kernel tables"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tokens", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    names = a.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {sorted(CONFIGS)}")
    if a.child:
        child(a)
        return
    out = a.out or default_out_path("moe")
    data = "random ids"
    if a.text.exists() and (a.gpt2 / "encoder.json").exists():
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_moe_{a.text_mb:g}MB.npy"
        a.tokens = load_tokens(a.text, a.gpt2, a.text_mb, cache)
        data = f"{a.text} (first {a.text_mb:g} MB, GPT-2 ranks)"
    else:
        print(f"note: {a.text} or {a.gpt2} missing: training on random ids", file=sys.stderr)
    meta = dict(machine=machine_info(), data=data, preset=PRESET, configs=CONFIGS)
    meta.update(batch=a.batch, warmup=a.warmup, steps=a.steps, compile_mode=a.compile_mode)
    meta.update(moment_dtype=a.moment_dtype)
    results: dict[str, dict | None] = {}
    rows = []
    if not a.skip_baseline:
        results["baseline"] = run_baseline(a.baseline, "124M", a.batch, a.steps)  # gpt2-124M
        rows.append(table_row("baseline", results["baseline"]))
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--configs", name]
        cmd += ["--batch", str(a.batch), "--warmup", str(a.warmup), "--steps", str(a.steps)]
        cmd += ["--lr", str(a.lr), "--device", a.device]
        cmd += ["--moment-dtype", a.moment_dtype] if a.moment_dtype else []
        cmd += ["--compile-mode", a.compile_mode] if a.compile_mode else []
        cmd += ["--no-compile"] if a.no_compile else []
        cmd += [f"--set={s}" for s in a.set]
        cmd += ["--tokens", str(a.tokens)] if a.tokens else []
        cmd += ["--profile", str(a.profile)] if a.profile else []
        code, stdout, _ = run_child(cmd)
        results[name] = parse_result(stdout) if code == 0 else None
        rows.append(table_row(name, results[name]))
        print_table(HEADERS, rows[-1:])
        write_json(out, dict(**meta, results=results))  # a killed run keeps what it measured
    print_table(HEADERS, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
