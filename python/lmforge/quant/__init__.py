"""Post-training weight-only quantization: int8 and fp8 (e4m3) ``Linear`` weights.

:func:`quantize` (or :func:`quantize_int8` / :func:`quantize_fp8`) swaps, in place, every
:class:`~lmforge.model.layers.Linear` of a trained model for a layer that stores its weight in
one byte per entry with a float32 scale per output channel, and dequantizes in ``forward``;
embeddings, norms and (by default) the LM head stay in float. :func:`quantization_report`
counts the bytes saved; :func:`save_quantized` / :func:`load_quantized` write and read the
result. See :mod:`lmforge.quant.base` for the design.
"""

from lmforge.quant.base import QuantError, QuantizedLinear, quantized_modules
from lmforge.quant.files import QUANTIZED_FILE, load_quantized, save_quantized
from lmforge.quant.fp8 import Fp8Linear, fp8_matmul_supported, quantize_fp8, quantize_fp8_weight
from lmforge.quant.int8 import Int8Linear, quantize_int8, quantize_int8_weight
from lmforge.quant.quantize import FORMATS, quantize
from lmforge.quant.report import QuantReport, WeightBytes, quantization_report, weight_bytes

__all__ = [
    "FORMATS",
    "QUANTIZED_FILE",
    "Fp8Linear",
    "Int8Linear",
    "QuantError",
    "QuantReport",
    "QuantizedLinear",
    "WeightBytes",
    "fp8_matmul_supported",
    "load_quantized",
    "quantization_report",
    "quantize",
    "quantize_fp8",
    "quantize_fp8_weight",
    "quantize_int8",
    "quantize_int8_weight",
    "quantized_modules",
    "save_quantized",
    "weight_bytes",
]
