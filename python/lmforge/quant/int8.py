"""Weight-only int8 quantization: ``Int8Linear`` and ``quantize_int8``.

Each output channel (row ``r`` of the ``(d_out, d_in)`` weight) gets a symmetric scale
``s_r = max_j |W_rj| / 127`` and ``Q_rj = round(W_rj / s_r)`` in ``[-127, 127]`` — absmax
("vector-wise") quantization as in LLM.int8() (Dettmers et al. 2022, §3.1), applied to the
weights only, as weight-only inference schemes do (the activations stay in float).

Design choices:

* **Symmetric, -128 unused**: the grid ``{-127 … 127} · s_r`` is symmetric about zero, so zero
  is exact and no zero-point is stored. Rounding to the nearest grid point bounds every
  element's error by half a step: ``|W_rj − Q_rj s_r| ≤ s_r / 2``, hence per row
  ``‖W_r − Ŵ_r‖ ≤ sqrt(d_in) · s_r / 2`` (the bound the tests check).
* **Float64 division when quantizing**: ``W / s`` is formed in float64 so that the rounding to
  an integer is decided on the exact quotient (float32 could misround a value within an ulp of
  a half-way point, breaking the half-step bound by ~1e-7 s). Quantizing is a one-off cost.
* **All-zero rows** get ``s_r = 1`` (any scale reproduces zeros exactly) instead of dividing
  by zero.
* **Memory, not FLOPs**: 1 byte per weight plus 4 bytes per row instead of 4 bytes per weight
  (about 4× smaller Linear weights for ``d_in`` in the hundreds); the forward dequantizes and
  runs the usual float matmul (see :mod:`lmforge.quant.base`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.quant.base import QuantizedLinear, log_quantized, swap_linears

__all__ = ["INT8_MAX", "Int8Linear", "quantize_int8", "quantize_int8_weight"]

INT8_MAX = 127
"""The largest magnitude on the symmetric int8 grid."""


def quantize_int8_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric absmax quantization of a 2-D weight.

    Args:
        weight: float ``(d_out, d_in)``.

    Returns:
        ``(qweight, scale)``: int8 ``(d_out, d_in)`` in ``[-127, 127]`` and float32 ``(d_out,)``
        with ``weight ≈ qweight * scale[:, None]`` to within ``scale / 2`` per element.

    Raises:
        ValueError: if ``weight`` is not a finite floating-point matrix.
    """
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(
            f"expected a floating-point (d_out, d_in) weight, got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("the weight holds NaN or infinite values: it cannot be quantized")
    absmax = weight.detach().abs().amax(dim=1).to(torch.float32)
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    q = torch.round(weight.to(torch.float64) / scale.to(torch.float64)[:, None])
    return q.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


class Int8Linear(QuantizedLinear):
    """A ``Linear`` with an int8 weight and float32 per-output-channel scales.

    Build it with :meth:`from_linear`; see :class:`~lmforge.quant.base.QuantizedLinear`.
    """

    format = "int8"
    storage_dtype = torch.int8

    @staticmethod
    def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
        """See :func:`quantize_int8_weight`."""
        return quantize_int8_weight(weight)


def quantize_int8(model: nn.Module, *, include_head: bool = False) -> nn.Module:
    """Replace every ``Linear`` of ``model`` (in place) by an :class:`Int8Linear`.

    Args:
        model: a float model; copy it first (``copy.deepcopy``) to keep the original.
        include_head: also quantize the LM head. Off by default: weight-only schemes (GPTQ,
            AWQ) usually keep the head, like the embedding (which always stays in float), in
            high precision, since its errors land directly on the logits.

    Returns:
        ``model``, quantized.

    Raises:
        QuantError: already quantized, or a LoRA layer that was not unloaded.
    """
    swap_linears(model, Int8Linear.from_linear, include_head=include_head)
    log_quantized(model)
    return model
