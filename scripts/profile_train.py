"""Profile the trainer's own step (data, forward, backward, clipping, optimizer) on a GPU.

    python scripts/profile_train.py --config stories-17M --data train.bin --out prof.txt \
        [--set train.batch_size=128 ...] [--steps 20]

Runs ``--steps`` warm-up steps (compilation), then times 20 steps without the profiler (host
wall time per step), then 5 steps under ``torch.profiler`` and writes the operations that take
the most GPU time, the most host time and the input shapes of the host-heaviest ones to
``--out``, then 20 steps under ``cProfile``: the Python functions where the host spends (or
waits) its time, by own time and by cumulative time. A developer tool, not a benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lmforge.train.config import load_run_config
from lmforge.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="stories-17M")
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"train.train_data={a.data}", f"train.out_dir={tmp}/run", *a.set]
        trainer = Trainer(load_run_config(a.config, sets))
        for _ in range(a.steps):
            trainer._step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            trainer._step()
        torch.cuda.synchronize()
        step_ms = (time.perf_counter() - t0) / 20 * 1e3
        acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profile(activities=acts, with_stack=True, record_shapes=True) as prof:
            for _ in range(5):
                trainer._step()
            torch.cuda.synchronize()
        py = cProfile.Profile()
        py.enable()
        for _ in range(20):
            trainer._step()
        torch.cuda.synchronize()
        py.disable()
    avg = prof.key_averages()
    text = f"step {step_ms:.2f} ms (host wall, 20 steps, no profiler)\n\n"
    text += avg.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=80)
    text += "\n\n" + avg.table(sort_by="self_cpu_time_total", row_limit=30)
    by_shape = prof.key_averages(group_by_input_shape=True)
    text += "\n\n" + by_shape.table(sort_by="self_cpu_time_total", row_limit=25)
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(py, stream=buf).sort_stats(key).print_stats(35)
        text += f"\n\ncProfile, 20 steps, by {key}\n" + buf.getvalue()
    a.out.write_text(text)
    print(text[:200])


if __name__ == "__main__":
    main()
