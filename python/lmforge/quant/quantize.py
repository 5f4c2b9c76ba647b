"""``quantize``: one entry point over the formats, and the table that names them.

The format names (``"int8"``, ``"fp8"``) are what the CLI's ``--format`` takes and what a
quantized file records, so that loading rebuilds the right layer class.
"""

from __future__ import annotations

from torch import nn

from lmforge.quant.base import QuantError, QuantizedLinear
from lmforge.quant.fp8 import Fp8Linear, quantize_fp8
from lmforge.quant.int8 import Int8Linear, quantize_int8

__all__ = ["FORMATS", "layer_class", "quantize"]

FORMATS: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "fp8": Fp8Linear}
"""Format name → quantized layer class."""


def layer_class(fmt: str) -> type[QuantizedLinear]:
    """The layer class of format ``fmt``.

    Raises:
        QuantError: an unknown format.
    """
    if fmt not in FORMATS:
        raise QuantError(f"unknown quantization format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def quantize(model: nn.Module, fmt: str = "int8", *, include_head: bool = False) -> nn.Module:
    """Quantize ``model``'s ``Linear`` weights in place to format ``fmt``.

    Args:
        model: a float model; copy it first (``copy.deepcopy``) to keep the original.
        fmt: ``"int8"`` (:func:`~lmforge.quant.int8.quantize_int8`) or ``"fp8"``
            (:func:`~lmforge.quant.fp8.quantize_fp8`).
        include_head: also quantize the LM head.

    Returns:
        ``model``, quantized.

    Raises:
        QuantError: an unknown format, or a model that cannot be quantized (already quantized,
            LoRA layers).
    """
    layer_class(fmt)
    if fmt == "fp8":
        return quantize_fp8(model, include_head=include_head)
    return quantize_int8(model, include_head=include_head)
