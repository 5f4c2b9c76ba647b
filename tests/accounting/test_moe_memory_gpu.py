"""The memory model's MoE rows against ``torch.cuda.max_memory_allocated`` (GPU machine).

Two MoE models on GPT-2 small's shape (``memory_probe.SHAPES``), batch 8 × 1024, bf16
autocast, eager and compiled; on Hopper the experts run ``torch._grouped_mm``. Run with
``-s`` to see the ratios (predicted / measured).
"""

from __future__ import annotations

import pytest
from memory_probe import SHAPES, measure

from lmforge.accounting.memory import estimate_training_memory
from lmforge.kernels import triton_enabled
from lmforge.model.config import ModelConfig

pytestmark = pytest.mark.gpu

CASES = [(shape, compiled) for shape in ("gpt2-moe64-sigmoid", "gpt2-moe8-top2")
         for compiled in (False, True)]  # fmt: skip


@pytest.mark.parametrize(("shape", "compiled"), CASES)
def test_moe_peak_memory_within_10_percent(shape: str, compiled: bool) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the grouped_mm path needs a Hopper (or newer) GPU")
    cfg = ModelConfig(**SHAPES[shape])
    got = measure(cfg, 8, compiled=compiled)
    est = estimate_training_memory(
        cfg, 8, compiled=compiled, loss_kernel=triton_enabled(), moe_impl="grouped_mm"
    )
    saved = got["after_forward"] - got["base"]  # what the forward pass leaves for backward
    print(f"\n{shape} compiled={compiled}: peak {est.total / got['peak']:.3f}, "
          f"saved after forward {est.activations / saved:.3f} ({est.peak_phase})")  # fmt: skip
    assert est.total == pytest.approx(got["peak"], rel=0.10), est.table()
    states = est.parameters + est.optimizer_state + est.bytes("workspace")
    assert states == pytest.approx(got["base"], rel=0.05)
    assert est.activations == pytest.approx(saved, rel=0.10), est.table()
