"""``StepWindow``: what the trainer sums between two log lines, without syncing the device.

Losses are added on the device (a ``+=`` on a 0-d tensor queues a kernel; reading it would wait
for the GPU), so the host runs ahead and reads the sums once per log line. Time spent in
evaluation or checkpointing is excluded, so tokens/s and MFU measure training alone.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

from lmforge import accounting

__all__ = ["StepWindow", "max_memory_gb", "peak_flops"]


class StepWindow:
    """Device-side sums over the steps since the last log line, and their time (pauses out)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.ce = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.total.zero_()
        self.ce.zero_()
        self.steps, self.paused = 0, 0.0
        self.grad_norm: torch.Tensor | float = math.nan
        self.metrics: dict[str, torch.Tensor] = {}
        self.start = time.perf_counter()

    def add(
        self,
        total: torch.Tensor,
        ce: torch.Tensor,
        grad_norm: torch.Tensor,
        metrics: dict[str, torch.Tensor],
    ) -> None:
        self.total += total
        self.ce += ce
        self.steps += 1
        self.grad_norm, self.metrics = grad_norm, metrics

    def means(self) -> tuple[float, float]:
        """Mean total loss and mean cross-entropy (one device sync)."""
        n = max(self.steps, 1)
        total, ce = torch.stack([self.total, self.ce]).tolist()
        return total / n, ce / n

    def seconds(self) -> float:
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpoints) is not training time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t


def peak_flops(device: torch.device, amp_dtype: torch.dtype | None, ranks: int = 1) -> float | None:
    """The peak FLOP/s of ``ranks`` devices like ``device`` (``None`` off CUDA or if unknown):
    the denominator of MFU, whose numerator counts every rank's tokens."""
    if device.type != "cuda":
        return None
    dtype = "bf16" if amp_dtype is not None else "fp32"
    peak = accounting.peak_flops(torch.cuda.get_device_name(device), dtype)
    return None if peak is None else peak * ranks


def max_memory_gb(device: torch.device) -> float | None:
    """This process's peak CUDA memory in GiB (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
