"""Side-by-side training-throughput benchmark: lmforge's model vs the plain compiled baseline.

For each shape (``--shapes 124M,1B``: the ``gpt2-124M`` and ``1B`` presets; ``17M``: the
``stories-17M`` preset) this script runs, on the same GPU in the same call:

1. the baseline, ``gpt_baseline.py`` (nanoGPT-style dense GPT: bf16 autocast, fused AdamW, SDPA,
   torch.compile; ``--baseline`` gives its path), in a child process;
2. lmforge, this script re-invoked with ``--child``: ``lmforge.model.Transformer`` of the preset,
   lmforge's own AdamW (``lmforge.optim``), bf16 autocast, ``torch.compile``, the loss computed
   by the model's chunked LM head (``return_logits=False``) — one full training step as the
   trainer runs it (forward, backward, gradient clipping — which the baseline does not do;
   ``--no-grad-clip`` drops it; the clipping factor is applied inside the fused AdamW step, as
   the trainer does —, optimizer step, zero grad, the after-step hook).

Both train on one fixed random batch (as the baseline does), batch and sequence the same, and
report tokens/s and MFU with the baseline's FLOP convention (6 × non-embedding parameters + the
LM head, plus 12·L·T·d attention; ``lmforge.accounting.flops_per_token``) against the card's
bf16 dense peak. lmforge's child also reports ``torch.cuda.max_memory_allocated`` beside the
memory model's prediction (``lmforge.accounting.estimate_training_memory``).

    python benches/bench_model.py [--shapes 124M,1B] [--batch 124M=32,1B=16] [--steps 30]
        [--baseline .device/gpt_baseline.py] [--out PATH.json]

Results: a table on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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

PRESETS = {"17M": "stories-17M", "124M": "gpt2-124M", "1B": "1B"}
DEFAULT_BATCH = {"17M": 128, "124M": 32, "1B": 16}


def child(
    shape: str,
    batch: int,
    steps: int,
    grad_clip: bool,
    compile_mode: str | None,
    profile: Path | None,
    moment_dtype: str | None = None,
    param_dtype: str = "auto",
) -> None:
    import torch

    from lmforge import accounting
    from lmforge.model import Transformer
    from lmforge.optim import OptimConfig, build_optimizer, clip_coefficient
    from lmforge.train.config import load_run_config
    from lmforge.train.runtime import store_weights

    run = load_run_config(
        PRESETS[shape], ["train.train_data=unused", f'train.param_dtype="{param_dtype}"']
    )
    weights = run.resolve_param_dtype("cuda", 1).train.param_dtype  # as the trainer resolves it
    cfg = run.model
    torch.manual_seed(0)
    model = Transformer(cfg).cuda()
    store_weights(model, weights)  # bfloat16: AdamW keeps float32 masters
    kinds = model.param_kinds()
    opt = build_optimizer(
        [(p, kinds[n]) for n, p in model.named_parameters()],
        OptimConfig(name="adamw", lr=3e-4, weight_decay=0.1, moment_dtype=moment_dtype),
    )
    step_model = torch.compile(model, mode=compile_mode)
    T = cfg.context_length
    x = torch.randint(0, cfg.vocab_size, (batch, T), device="cuda")
    y = torch.roll(x, -1, 1)

    def one() -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16):
            out = step_model(x, y, return_logits=False)
        out.loss.backward()
        if grad_clip:  # as the trainer clips: AdamW applies the factor as it reads the grads
            _, coef = clip_coefficient(model.parameters(), 1.0)
            opt.step(grad_scale=coef)  # type: ignore[call-overload]
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step()
        return out.loss

    t0 = time.perf_counter()
    for _ in range(5):
        one()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    one()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = one()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    if profile is not None:
        write_profile(profile, one)
    tokens = batch * T
    flops_tok = accounting.flops_per_token(cfg, seq_len=T)
    name = torch.cuda.get_device_name()
    peak = accounting.peak_flops(name, "bf16")
    est = accounting.estimate_training_memory(
        cfg,
        batch,
        T,
        compiled=True,
        param_dtype="bf16" if weights == "bfloat16" else "fp32",
        moment_dtype="bf16" if moment_dtype else None,
    )
    emit_result(
        dict(
            params=sum(p.numel() for p in model.parameters()),
            param_dtype=weights,
            step_ms=dt * 1e3,
            tok_s=tokens / dt,
            mfu=flops_tok * tokens / dt / peak if peak else None,
            mem_gb=torch.cuda.max_memory_allocated() / 2**30,
            mem_model_gb=est.total / 2**30,
            warmup_s=warm_s,
            loss=float(loss.detach()),
            device=name,
            torch=torch.__version__,
        )
    )


def write_profile(path: Path, one: Callable[[], object]) -> None:
    """Profile three more steps; write the ops and kernels that take the most GPU time of their
    own (self time: a kernel is counted once, not again in every op that launches it) to
    ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            one()
        torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="self_cuda_time_total", row_limit=100, max_name_column_width=90
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)


def run_baseline(baseline: Path, shape: str, batch: int, steps: int) -> dict | None:
    from lmforge.train.config import load_run_config

    cfg = load_run_config(PRESETS[shape], ["train.train_data=unused"]).model
    cmd = [sys.executable, str(baseline), "--d", str(cfg.d_model), "--layers", str(cfg.n_layers)]
    cmd += ["--heads", str(cfg.n_heads), "--seq", str(cfg.context_length), "--batch", str(batch)]
    cmd += ["--vocab", str(cfg.vocab_size), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


HEADERS = ["shape", "who", "tokens/s", "MFU", "step ms", "mem GB", "model GB"]


def table_rows(shape: str, base: dict | None, ours: dict | None) -> list[list[str]]:
    rows = []
    for who, r in (("baseline", base), ("lmforge", ours)):
        if r is None:
            rows.append([shape, who, "failed", "", "", "", ""])
            continue
        mem_model = f"{r['mem_model_gb']:.1f}" if "mem_model_gb" in r else ""
        mfu = r.get("mfu")
        rows.append(
            [
                shape,
                who,
                f"{r['tok_s']:,.0f}",
                f"{mfu:.1%}" if mfu else "n/a",
                f"{r['step_ms']:.1f}",
                f"{r['mem_gb']:.1f}",
                mem_model,
            ]
        )
    if base and ours:
        rows.append([shape, "ratio", f"{ours['tok_s'] / base['tok_s']:.2f}x", "", "", "", ""])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="124M,1B")
    p.add_argument("--batch", default="", help="per-shape batch, e.g. 124M=32,1B=16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--no-grad-clip", action="store_true", help="skip gradient clipping (the trainer clips)"
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode for lmforge (e.g. max-autotune-no-cudagraphs, reduce-overhead)",
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="folder for per-shape GPU kernel tables"
    )
    p.add_argument(
        "--moment-dtype", choices=["bfloat16"], default=None, help="AdamW's moments in bf16"
    )
    p.add_argument(
        "--param-dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="train.param_dtype: how the weights are stored (auto: as the trainer on one GPU, "
        "bfloat16 with AdamW's float32 masters)",
    )
    p.add_argument("--baseline", type=Path, default=Path(".device/gpt_baseline.py"))
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = dict(DEFAULT_BATCH)
    for item in filter(None, a.batch.split(",")):
        k, v = item.split("=")
        batches[k] = int(v)
    if a.child:
        prof = a.profile / f"profile-{a.child}.txt" if a.profile else None
        clip = not a.no_grad_clip
        child(
            a.child,
            batches[a.child],
            a.steps,
            clip,
            a.compile_mode,
            prof,
            a.moment_dtype,
            a.param_dtype,
        )
        return
    results, rows = [], []
    out = a.out or default_out_path("model")
    meta = dict(machine=machine_info(), steps=a.steps, compile_mode=a.compile_mode)
    meta.update(moment_dtype=a.moment_dtype, param_dtype=a.param_dtype)
    meta["lmforge_triton"] = os.environ.get("LMFORGE_TRITON", "1") != "0"
    for shape in a.shapes.split(","):
        base = None if a.skip_baseline else run_baseline(a.baseline, shape, batches[shape], a.steps)
        cmd = [sys.executable, __file__, "--child", shape, "--batch", a.batch, "--steps"]
        cmd += [str(a.steps)] + (["--no-grad-clip"] if a.no_grad_clip else [])
        cmd += ["--compile-mode", a.compile_mode] if a.compile_mode else []
        cmd += ["--profile", str(a.profile)] if a.profile else []
        cmd += ["--moment-dtype", a.moment_dtype] if a.moment_dtype else []
        cmd += ["--param-dtype", a.param_dtype]
        code, stdout, _ = run_child(cmd)
        ours = parse_result(stdout) if code == 0 else None
        results.append(dict(shape=shape, batch=batches[shape], baseline=base, lmforge=ours))
        shape_rows = table_rows(shape, base, ours)
        rows += shape_rows
        print_table(HEADERS, shape_rows)  # this shape now, the whole table at the end
        write_json(out, dict(**meta, results=results))  # a killed run keeps what it measured
    print_table(HEADERS, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
