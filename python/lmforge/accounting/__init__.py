"""Accounting: parameter counts, FLOPs, MFU and a memory model, from a ``ModelConfig`` alone.

Pure arithmetic on the config (no torch, no model import), so the trainer can print the shape
report, MFU and a memory estimate before any weight exists, and the module is cheap to import.
Each concept lives in its own file: :mod:`.params` (counts, the ``12·L·d²`` rule),
:mod:`.flops` (6N + 12·L·T·d, MFU), :mod:`.peak` (GPU peak FLOP/s), :mod:`.memory` (peak
training memory by counting tensors) with its tables :mod:`.activations` (what a block saves)
and :mod:`.loss_memory` (the head and loss), :mod:`.attention_cost` (KV-cache bytes and the
FLOPs, bytes and intensity of a decoding step for MHA/GQA/MQA/MLA), :mod:`.report` (the shape
report), :mod:`.units` (human-readable numbers).
"""

from lmforge.accounting.activations import TensorGroup
from lmforge.accounting.attention_cost import (
    ATTENTION_KINDS,
    AttentionCost,
    AttentionShape,
    MLAShape,
    attention_cost,
    attention_cost_table,
    default_mla_shape,
)
from lmforge.accounting.flops import flops_per_token, forward_flops_per_token, mfu
from lmforge.accounting.memory import MemoryEstimate, estimate_training_memory
from lmforge.accounting.params import ParamCount, count_params, estimate_12ld2
from lmforge.accounting.peak import PEAK_FLOPS, peak_flops
from lmforge.accounting.report import shape_report, shape_summary
from lmforge.accounting.units import format_bytes, format_count, format_flops

__all__ = [
    "ATTENTION_KINDS",
    "PEAK_FLOPS",
    "AttentionCost",
    "AttentionShape",
    "MLAShape",
    "MemoryEstimate",
    "ParamCount",
    "TensorGroup",
    "attention_cost",
    "attention_cost_table",
    "count_params",
    "default_mla_shape",
    "estimate_12ld2",
    "estimate_training_memory",
    "flops_per_token",
    "format_bytes",
    "format_count",
    "format_flops",
    "forward_flops_per_token",
    "mfu",
    "peak_flops",
    "shape_report",
    "shape_summary",
]
