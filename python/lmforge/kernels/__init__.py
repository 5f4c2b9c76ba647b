"""Hand-written GPU kernels (Triton) for the operations where PyTorch leaves speed on the table.

Each kernel has a plain-PyTorch reference elsewhere in the package, which it is tested against
(on a GPU, and on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``), and which runs
wherever the kernel cannot: on the CPU, without Triton, or with ``LMFORGE_TRITON=0`` in the
environment (the switch for debugging and for measuring what a kernel buys).

* :mod:`lmforge.kernels.cross_entropy`: the LM head's softmax cross-entropy (+ z-loss,
  soft-capping) and its gradient in two passes over a chunk of bf16 logits, written in place.
* :mod:`lmforge.kernels.adamw`: one multi-tensor launch of the whole AdamW update.
* :mod:`lmforge.kernels.rope`: rotary position embedding (and its gradient) in one pass.
* :mod:`lmforge.kernels.attention`: causal attention for short sequences, forward and backward
  (the model's ``attend`` takes it up to 256 positions; SDPA beyond).
* :mod:`lmforge.kernels.moe_rows`: the Mixture-of-Experts row gathers and the combine's backward.
* :mod:`lmforge.kernels.route_topk`: a Mixture-of-Experts router's top-k selection.
* :mod:`lmforge.kernels.swiglu`: the experts' SwiGLU on stacked ``[gate | up]`` rows.
* :mod:`lmforge.kernels.moe_counts`: assignments per expert, from per-block histograms.
* :mod:`lmforge.kernels.balance_histograms`: one round of MoE in-batch balancing's per-expert
  histograms (each row's top-k, and how far each expert is from entering or leaving it).
"""

from __future__ import annotations

import functools
import os

from torch import Tensor

__all__ = ["triton_enabled", "use_triton"]


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_enabled() -> bool:
    """Whether Triton kernels may run: Triton imports and ``LMFORGE_TRITON`` is not ``0``."""
    return os.environ.get("LMFORGE_TRITON", "1") != "0" and _triton_importable()


def use_triton(*tensors: Tensor) -> bool:
    """Whether to take a Triton kernel for ``tensors``: enabled and every tensor on CUDA (or on
    the CPU under Triton's interpreter, which the tests use)."""
    if not triton_enabled():
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return all(t.is_cuda or (interpret and t.device.type == "cpu") for t in tensors)
