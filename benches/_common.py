"""Small helpers shared by the benchmark scripts: child processes with peak RSS, machine facts,
JSON results and plain-text tables."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benches" / "results"
RESULT_PREFIX = "BENCH_RESULT "  # a child prints its result as this prefix + one JSON line


def run_child(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> tuple[int | None, str, float]:
    """Run ``cmd``, return ``(exit code, stdout, peak RSS in MB)`` of that one process.

    ``os.wait4`` gives the rusage of exactly this child (``RUSAGE_CHILDREN`` would be the maximum
    over every child so far). ``ru_maxrss`` is in KiB on Linux. stderr passes through. With
    ``timeout`` (seconds), a child still running then is killed and the exit code is ``None``.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        proc.kill()  # the child is not reaped before wait4 below, so its pid is still its own

    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
    stdout = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    if timer is not None:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    timed_out = fired.is_set() and proc.returncode == -signal.SIGKILL
    return (None if timed_out else proc.returncode), stdout, usage.ru_maxrss / 1024


def emit_result(result: dict) -> None:
    """In a child: hand ``result`` to the parent on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    """In the parent: the last result line a child printed, if any."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def open_binary(path: Path) -> Any:
    """``path`` opened for reading bytes, decompressed on the fly if it ends in ``.xz``/``.gz``."""
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rb")


def uncompressed_size(path: Path) -> int:
    """The size of ``path``'s content in bytes, decompressed (streams through it when needed)."""
    if path.suffix not in (".xz", ".gz"):
        return path.stat().st_size
    n = 0
    with open_binary(path) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def current_rss_mb() -> float:
    """This process's resident set size now, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine_info() -> dict:
    """Facts that make a timing comparable: host, CPUs, Python."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def now_utc() -> datetime:
    return datetime.now(UTC)


def default_out_path(kind: str) -> Path:
    """``benches/results/<kind>-<host>-<UTC date and time>.json``."""
    host = socket.gethostname().split(".")[0] or "host"
    return RESULTS_DIR / f"{kind}-{host}-{now_utc():%Y%m%dT%H%M%SZ}.json"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (via a ``.tmp`` sibling), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def print_table(headers: list[str], rows: list[list]) -> None:
    """Print rows as a left-aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cuda_graph_ms(fn: Any, iters: int = 10, reps: int = 10, warmup: int = 3) -> float:
    """Milliseconds of GPU time per ``fn()``: ``reps`` calls captured in one CUDA graph (after
    ``warmup`` calls on a side stream, which compile what needs compiling), replayed ``iters``
    times. The launches cost nothing, as in the trainer's graphs: timing eager calls of small
    kernels measures Python's dispatch and Triton's launcher instead."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (iters * reps)


def write_gpu_result(path: Path, benchmark: str, results: dict) -> None:
    """Write a GPU benchmark's ``results`` with the machine, the card and the torch version."""
    import torch

    write_json(
        path,
        {
            "benchmark": benchmark,
            "timestamp": now_utc().isoformat(timespec="seconds"),
            **machine_info(),
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "results": results,
        },
    )
