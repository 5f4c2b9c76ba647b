"""The memory model against ``torch.cuda.max_memory_allocated`` (run on the GPU machine)."""

from __future__ import annotations

import pytest
from memory_probe import SHAPES, measure

from lmforge.accounting.memory import estimate_training_memory
from lmforge.kernels import triton_enabled
from lmforge.model.config import ModelConfig

pytestmark = pytest.mark.gpu

CASES = [
    ("gpt2-124M", 8, False, True),
    ("gpt2-124M", 8, True, True),
    ("gqa-qknorm-tied", 8, False, True),
    ("gqa-qknorm-tied", 8, True, True),
    ("parallel-ckpt", 8, False, True),
    ("gpt2-124M", 4, False, False),
]


@pytest.mark.parametrize(("shape", "batch", "compiled", "chunked"), CASES)
def test_peak_memory_within_10_percent(
    shape: str, batch: int, compiled: bool, chunked: bool
) -> None:
    pytest.importorskip("lmforge.model.transformer")
    cfg = ModelConfig(**SHAPES[shape])
    got = measure(cfg, batch, compiled=compiled, chunked=chunked)
    est = estimate_training_memory(
        cfg, batch, compiled=compiled, chunked_loss=chunked, loss_kernel=triton_enabled()
    )
    assert est.total == pytest.approx(got["peak"], rel=0.10), est.table()
    # What is alive between steps needs no activation count: exact up to rounding.
    states = est.parameters + est.optimizer_state + est.bytes("workspace")
    assert states == pytest.approx(got["base"], rel=0.05)
