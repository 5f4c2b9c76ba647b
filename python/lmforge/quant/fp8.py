"""Weight-only fp8 (e4m3) quantization: ``Fp8Linear`` and ``quantize_fp8``.

Each output channel gets a scale ``s_r = max_j |W_rj| / 448`` (448 is the largest finite
``float8_e4m3fn``) and ``Q_rj = fp8(W_rj / s_r)``, round to nearest even — the per-channel
fp8 weight format of Micikevicius et al. 2022 ("FP8 formats for deep learning") as served by
inference engines on Hopper/Ada GPUs.

Design choices:

* **e4m3, not e5m2**: weights need precision more than range once a per-row scale has set the
  range; e4m3 has 3 mantissa bits, so a normal value's rounding error is at most
  ``|x| · 2⁻⁴`` (half an ulp) and a subnormal's (``|x| < 2⁻⁶``) at most ``2⁻¹⁰``, both in
  units of ``s_r``. Unlike int8's uniform grid, the error is relative, so small weights in a
  row with one large weight keep their precision.
* **Storage everywhere, fp8 matmul where the GPU has it**: torch stores and casts
  ``float8_e4m3fn`` on any device, so by default ``forward`` dequantizes (as int8 does) and
  the layer saves memory on CPUs and older GPUs alike. With ``fp8_matmul=True`` on a CUDA GPU
  of compute capability >= 8.9 (Ada, Hopper) and bfloat16 inputs, ``forward`` instead
  quantizes the activations per token (absmax / 448) and calls ``torch._scaled_mm`` with
  row-wise scales — a real fp8 matmul that saves FLOPs too, at the cost of fp8 activations
  (no longer weight-only; expect a slightly larger error).
* **Clamping before the cast**: ``W / s`` can exceed 448 by an ulp, and a cast out of range
  is not guaranteed to saturate, so the quotient is clamped to ``[-448, 448]`` first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.layers import Linear
from lmforge.quant.base import QuantizedLinear, log_quantized, swap_linears

__all__ = ["FP8_MAX", "Fp8Linear", "fp8_matmul_supported", "quantize_fp8", "quantize_fp8_weight"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
_ALIGN = 16  # torch._scaled_mm needs d_in and d_out to be multiples of 16


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA GPU with fp8 tensor cores (compute capability >= 8.9)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_fp8_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel absmax scaling of a 2-D weight into ``float8_e4m3fn``.

    Args:
        weight: float ``(d_out, d_in)``.

    Returns:
        ``(qweight, scale)``: e4m3 ``(d_out, d_in)`` and float32 ``(d_out,)``.

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
    scale = torch.where(absmax > 0, absmax / FP8_MAX, torch.ones_like(absmax))
    scaled = weight.to(torch.float64) / scale.to(torch.float64)[:, None]
    return scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(QuantizedLinear):
    """A ``Linear`` with an e4m3 weight and float32 per-output-channel scales.

    Attributes:
        fp8_matmul: use ``torch._scaled_mm`` where it applies (see the module docstring).
    """

    format = "fp8"
    storage_dtype = FP8_DTYPE
    fp8_matmul: bool = False

    @staticmethod
    def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
        """See :func:`quantize_fp8_weight`."""
        return quantize_fp8_weight(weight)

    def _scaled_mm_applies(self, x: Tensor) -> bool:
        return (
            self.fp8_matmul
            and x.is_cuda
            and x.dtype == torch.bfloat16
            and self.d_in % _ALIGN == 0
            and self.d_out % _ALIGN == 0
            and fp8_matmul_supported(x.device)
        )

    def _fp8_forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.d_in)
        x_scale = rows.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
        xq = (rows.float() / x_scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        out = torch._scaled_mm(
            xq,
            self.qweight.t(),  # (d_in, d_out), column-major as _scaled_mm wants
            scale_a=x_scale,
            scale_b=self.scale[None, :],
            out_dtype=torch.bfloat16,
        )
        return out.reshape(*x.shape[:-1], self.d_out)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., d_in)`` → ``(..., d_out)``; fp8 matmul where it applies."""
        if self._scaled_mm_applies(x):
            return self._fp8_forward(x)
        return F.linear(x, self.dequantize().to(x.dtype))


def quantize_fp8(
    model: nn.Module, *, include_head: bool = False, fp8_matmul: bool = False
) -> nn.Module:
    """Replace every ``Linear`` of ``model`` (in place) by an :class:`Fp8Linear`.

    Args:
        model: a float model; copy it first (``copy.deepcopy``) to keep the original.
        include_head: also quantize the LM head (embeddings always stay in float).
        fp8_matmul: let the layers use the fp8 tensor-core matmul on GPUs that have it.

    Returns:
        ``model``, quantized.

    Raises:
        QuantError: already quantized, or a LoRA layer that was not unloaded.
    """

    def make(linear: Linear) -> QuantizedLinear:
        qweight, scale = quantize_fp8_weight(linear.weight.detach())
        layer = Fp8Linear(qweight, scale, dtype=linear.weight.dtype)
        layer.fp8_matmul = fp8_matmul
        return layer

    swap_linears(model, make, include_head=include_head)
    log_quantized(model)
    return model
