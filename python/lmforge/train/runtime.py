"""Where and how a run computes: device resolution, autocast, seeding.

``bf16`` means autocast to bfloat16 with fp32 master weights (Micikevicius et al. 2018, without
loss scaling since bf16 has fp32's exponent range); on the CPU lmforge trains in fp32, where
autocast to bf16 is slow and only emulated.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge import accounting
from lmforge.data import resolve_device as data_resolve_device
from lmforge.kernels import triton_enabled
from lmforge.model.layers import cast_parameters_
from lmforge.train.config import STORED_PARAM_DTYPES

__all__ = [
    "autocast_dtype",
    "autocast_for",
    "oom_message",
    "over_memory_message",
    "resolve_device",
    "run_memory_estimate",
    "seed_everything",
    "store_weights",
]


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; anything else checked by
    :func:`lmforge.data.resolve_device`.

    Raises:
        ValueError: an unknown device, or CUDA asked for where there is none.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return data_resolve_device(spec)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config ``dtype`` on ``device`` (``None``: plain fp32)."""
    if dtype == "bf16" and device.type == "cuda":
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast_for(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is ``None``."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def store_weights(model: torch.nn.Module, param_dtype: str) -> None:
    """Apply ``train.param_dtype`` to ``model`` in place: ``"bfloat16"`` stores every parameter
    in bf16; ``"float32"`` keeps the dtypes the model was built with (float32, and the routed
    experts' ``moe.expert_dtype``). Buffers (RoPE's tables) keep their dtype.

    Weights initialised in float32 and rounded once give a bf16 run the same starting point as
    a float32 run of the same seed, rounded.
    """
    if param_dtype not in STORED_PARAM_DTYPES:
        raise ValueError(
            f"store_weights takes a resolved param_dtype, float32 or bfloat16, not {param_dtype!r}"
            " (RunConfig.resolve_param_dtype resolves auto)"
        )
    if param_dtype != "float32":
        cast_parameters_(model, getattr(torch, param_dtype))


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_memory_estimate(config: Any, world_size: int = 1) -> accounting.MemoryEstimate:
    """The memory model's prediction for one CUDA training step of a run, per process: the
    micro-batch, context, optimizer, weight and moment dtypes, compilation, activation
    checkpointing and the loss kernel as the run's config sets them (``train.param_dtype =
    "auto"`` as a CUDA run of ``world_size`` processes resolves it). The estimate is of an
    unsharded process: FSDP's shards need less.

    Args:
        config: the run's :class:`~lmforge.train.config.RunConfig`.
        world_size: the run's processes.
    """
    config = config.resolve_param_dtype("cuda", world_size)
    tc, mc = config.train, config.model
    return accounting.estimate_training_memory(
        mc,
        tc.batch_size,
        mc.context_length,
        compiled=tc.compile,
        grad_accum=tc.grad_accum,
        optimizer=config.optim.name,
        loss_kernel=triton_enabled(),
        moment_dtype=None if config.optim.moment_dtype is None else "bf16",
        param_dtype="bf16" if tc.param_dtype == "bfloat16" else "fp32",
        compute_dtype="bf16" if tc.dtype == "bf16" else "fp32",
    )


def over_memory_message(est: accounting.MemoryEstimate, available: int) -> str | None:
    """A warning when the memory model's peak for a run exceeds the ``available`` bytes of its
    GPU (what is free plus what this process holds already), else ``None``.

    Args:
        est: the run's estimate (:func:`run_memory_estimate`).
        available: bytes the run may use on its device.
    """
    if est.total <= available:
        return None
    fmt = accounting.format_bytes
    return (
        f"the memory model predicts a peak of {fmt(est.total)} a process, more than the "
        f"{fmt(available)} this GPU has for it: expect CUDA out of memory. Lower "
        "train.batch_size (raising train.grad_accum keeps the tokens per step), or set "
        "model.activation_checkpointing=true; `lmforge memory` shows where it goes"
    )


def oom_message(config: Any) -> str:
    """What to do when CUDA ran out of memory, with the memory model's estimate of the peak.

    Args:
        config: the run's :class:`~lmforge.train.config.RunConfig`.
    """
    tc, mc = config.train, config.model
    est = run_memory_estimate(config)
    return (
        f"CUDA out of memory at batch_size={tc.batch_size}, context {mc.context_length} "
        f"(estimated peak {accounting.format_bytes(est.total)}; `lmforge memory` shows where "
        "it goes). Lower train.batch_size and raise train.grad_accum to keep the same tokens "
        "per step, or set model.activation_checkpointing=true, or train.compile=true"
    )
