"""Data-parallel scaling: `lmforge train` on one GPU and under `torchrun` on N GPUs (not a test).

Both runs train the same preset (default ``gpt2-124M``) with the same per-GPU micro-batch and
gradient accumulation, on a token file of the stories corpus encoded with GPT-2's tokenizer,
for ``--steps`` optimizer steps. Throughput is read from each run's ``metrics.jsonl`` (the
trainer's own ``tokens_per_s``, summed over ranks), as the median of the logged windows after
the first (which holds compilation). Scaling efficiency = tokens/s on N GPUs / (N × tokens/s on
one GPU).

    python benches/bench_ddp.py --text train.txt --gpt2 .device/gpt2 [--gpus 2]
        [--config gpt2-124M] [--steps 40] [--set train.grad_accum=4 ...] [--out PATH.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_out_path, machine_info, print_table, write_json  # noqa: E402


def encode(text: Path, gpt2: Path, work: Path) -> tuple[Path, Path]:
    from lmforge.tokenizer import Tokenizer

    merges = gpt2 / "vocab.bpe" if (gpt2 / "vocab.bpe").exists() else gpt2 / "merges.txt"
    tok = Tokenizer.from_gpt2_files(gpt2 / "encoder.json", merges)
    tok_path = work / "tokenizer.json"
    tok.save(tok_path)
    data = work / "train.bin"
    tok.encode_files([text], data, progress=False)
    return tok_path, data


def train(gpus: int, args: argparse.Namespace, tok: Path, data: Path, out: Path) -> dict:
    cmd = ["-m", "lmforge", "train", "--config", args.config, "--data", str(data)]
    cmd += ["--tokenizer", str(tok), "--out", str(out)]
    sets = [f"train.max_iters={args.steps}", "train.eval_interval=0", "train.sample_tokens=0"]
    sets += ["train.progress=false", f"train.ckpt_interval={args.steps * 10}"]
    sets += ["train.keep_checkpoints=0", "optim.warmup_iters=10", *args.set]
    for item in sets:
        cmd += ["--set", item]
    if gpus > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", *cmd]
    else:
        cmd = [sys.executable, *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return dict(gpus=gpus, failed=True)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if "tokens_per_s" in r][1:]
    mfus = [r["mfu"] for r in lines if r.get("mfu") is not None][1:]
    return dict(
        gpus=gpus,
        tok_s=statistics.median(rates),
        mfu=statistics.median(mfus) if mfus else None,
        windows=len(rates),
        wall_s=wall,
        final_loss=[r["loss"] for r in lines if "loss" in r][-1],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, required=True, help="plain text to train on")
    p.add_argument(
        "--gpt2", type=Path, required=True, help="encoder.json + vocab.bpe (or merges.txt) folder"
    )
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--config", default="gpt2-124M")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--set", action="append", default=["train.grad_accum=4"])
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    import torch

    if torch.cuda.device_count() < a.gpus:
        sys.exit(f"needs {a.gpus} GPUs, found {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, data = encode(a.text, a.gpt2, work)
        one = train(1, a, tok, data, work / "one")
        many = train(a.gpus, a, tok, data, work / "many")
    eff = many["tok_s"] / (a.gpus * one["tok_s"]) if "tok_s" in one and "tok_s" in many else None
    rows = []
    for r in (one, many):
        if r.get("failed"):
            rows.append([r["gpus"], "failed", "", ""])
        else:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "n/a"
            rows.append([r["gpus"], f"{r['tok_s']:,.0f}", mfu, f"{r['wall_s']:.0f}"])
    print_table(["GPUs", "tokens/s", "MFU", "wall s"], rows)
    if eff is not None:
        print(f"scaling efficiency on {a.gpus} GPUs: {eff:.1%}")
    out = a.out or default_out_path("ddp")
    write_json(
        out,
        dict(
            machine=machine_info(),
            device=torch.cuda.get_device_name(),
            gpus=a.gpus,
            config=a.config,
            steps=a.steps,
            sets=a.set,
            runs=[one, many],
            efficiency=eff,
            env={k: os.environ[k] for k in ("NCCL_NVLS_ENABLE",) if k in os.environ},
        ),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
