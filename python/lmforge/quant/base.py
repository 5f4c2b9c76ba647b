"""``QuantizedLinear``, the base of the weight-only quantized layers, and the module swap.

A quantized layer keeps a low-precision weight ``qweight`` of shape ``(d_out, d_in)`` and one
float32 ``scale`` per output channel (per row), and computes ``y = x Ŵᵀ`` with the dequantized
``Ŵ = qweight · scale[:, None]``. Subclasses (:class:`~lmforge.quant.int8.Int8Linear`,
:class:`~lmforge.quant.fp8.Fp8Linear`) only say how a float weight becomes ``(qweight, scale)``.

Design choices:

* **Weight-only** (the scheme of LLM.int8's weight storage, Dettmers et al. 2022, and of
  GPTQ/AWQ-style inference kernels): activations stay in float, so no calibration data is
  needed and the loss in accuracy comes from the weights alone. Per-output-channel scales
  (Dettmers et al.'s "vector-wise" quantization) cost ``4 · d_out`` bytes and keep one large row
  from coarsening every other row's grid.
* **Dequantize on the fly**: ``forward`` rebuilds ``Ŵ`` in float32 and casts it to the input's
  dtype before ``F.linear``. This saves *memory* (the stored weight is 1 byte per entry instead
  of 4), not FLOPs: the matmul is the same float matmul as before, plus the dequantization. A
  fused int8/fp8 kernel would save both; the fp8 layer has one for GPUs that support it.
* **A ``weight`` property** returns ``Ŵ`` (in the original dtype), so code that reads
  ``linear.weight`` — the Transformer's ``head_weight`` for a quantized LM head, ``generate``
  finding the model's device — keeps working unchanged.
* **Buffers, not parameters**: a quantized model is for inference; ``qweight`` and ``scale``
  travel with ``.to(device)`` and the ``state_dict`` but are never handed to an optimizer.
* **Only plain** :class:`~lmforge.model.layers.Linear` **modules are swapped**: a LoRA layer
  must be merged and unloaded first (``lmforge.model.lora.unload_lora``), and a model that
  already holds quantized layers is refused rather than quantized twice.
* **Choose the dtype before quantizing**: ``model.to(device)`` moves a quantized model, but
  ``model.to(dtype)`` / ``.half()`` would also cast the float32 scales (and fp8 weights, which
  torch counts as floating point), so cast the float model first; ``weight_dtype`` records it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.layers import Linear

__all__ = ["QuantError", "QuantizedLinear", "log_quantized", "quantized_modules", "swap_linears"]

log = logging.getLogger(__name__)


class QuantError(ValueError):
    """A quantization mistake: an unknown format, quantizing twice, a mismatched file."""


class QuantizedLinear(nn.Module):
    """``y = x Ŵᵀ`` with ``Ŵ = qweight · scale[:, None]``, dequantized in every forward.

    Args:
        qweight: the quantized ``(d_out, d_in)`` weight, in the subclass's ``storage_dtype``.
        scale: float32 ``(d_out,)`` per-output-channel scales.
        dtype: the dtype of the float weight it replaces (what :attr:`weight` returns).

    Raises:
        QuantError: on a wrong storage dtype or mismatched shapes.
    """

    format: ClassVar[str] = ""
    storage_dtype: ClassVar[torch.dtype] = torch.int8

    qweight: Tensor
    scale: Tensor

    def __init__(self, qweight: Tensor, scale: Tensor, *, dtype: torch.dtype) -> None:
        super().__init__()
        if qweight.ndim != 2 or qweight.dtype != self.storage_dtype:
            raise QuantError(
                f"{type(self).__name__} needs a 2-D {self.storage_dtype} weight, "
                f"got {qweight.dtype} {tuple(qweight.shape)}"
            )
        if scale.shape != (qweight.shape[0],) or scale.dtype != torch.float32:
            raise QuantError(
                f"scale must be float32 of shape ({qweight.shape[0]},), "
                f"got {scale.dtype} {tuple(scale.shape)}"
            )
        self.d_out, self.d_in = qweight.shape
        self.weight_dtype = dtype
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @staticmethod
    def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
        """``(qweight, scale)`` of a float ``(d_out, d_in)`` weight; defined by each format."""
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: Linear) -> QuantizedLinear:
        """Quantize ``linear``'s weight (on its device) into a new layer of this format."""
        qweight, scale = cls.quantize_weight(linear.weight.detach())
        return cls(qweight, scale, dtype=linear.weight.dtype)

    @classmethod
    def empty_like(cls, linear: Linear) -> QuantizedLinear:
        """An uninitialised layer shaped like ``linear``, for loading a saved state dict into."""
        w = linear.weight
        qweight = torch.zeros(w.shape, dtype=cls.storage_dtype, device=w.device)
        scale = torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
        return cls(qweight, scale, dtype=w.dtype)

    def dequantize(self) -> Tensor:
        """The float32 ``(d_out, d_in)`` weight ``qweight · scale[:, None]``."""
        return self.qweight.to(torch.float32) * self.scale[:, None]

    @property
    def weight(self) -> Tensor:
        """The dequantized weight in the dtype of the layer it replaced."""
        return self.dequantize().to(self.weight_dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., d_in)`` → ``(..., d_out)``; ``Ŵ`` is cast to ``x``'s dtype."""
        return F.linear(x, self.dequantize().to(x.dtype))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, format={self.format}"


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every quantized layer of ``model``, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def log_quantized(model: nn.Module) -> None:
    """Log (INFO) how many layers were quantized, to which formats, and the LM head's fate."""
    layers = quantized_modules(model)
    head = getattr(model, "output", None)
    log.info(
        "quantized %d Linear layers to %s (LM head %s)",
        len(layers),
        ", ".join(sorted({m.format for m in layers.values()})),
        "quantized" if any(m is head for m in layers.values()) else "kept in float",
    )


def _targets(model: nn.Module, include_head: bool) -> list[tuple[str, Linear]]:
    done = quantized_modules(model)
    if done:
        formats = sorted({m.format for m in done.values()})
        raise QuantError(
            f"the model is already quantized ({', '.join(formats)}, {len(done)} layers): "
            "quantize the float checkpoint instead"
        )
    head = getattr(model, "output", None)
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        if type(module) is not Linear:
            raise QuantError(
                f"{name!r} is a {type(module).__name__}, not a plain Linear: merge and unload "
                "adapters (lmforge.model.lora.unload_lora) before quantizing"
            )
        if module is not head or include_head:
            targets.append((name, module))
    if not targets:
        raise QuantError(f"{type(model).__name__} has no Linear layer to quantize")
    return targets


def swap_linears(
    model: nn.Module,
    make: Callable[[Linear], QuantizedLinear],
    *,
    include_head: bool = False,
) -> nn.Module:
    """Replace, in place, each plain ``Linear`` of ``model`` by ``make(linear)``.

    Args:
        model: the float model (a :class:`~lmforge.model.Transformer` or any module).
        make: builds the quantized layer from the float one.
        include_head: also replace the LM head (the ``output`` attribute); embeddings and
            norms always stay in float.

    Returns:
        ``model``, now holding quantized layers.

    Raises:
        QuantError: the model is already quantized, holds a non-plain ``Linear`` (LoRA), or
            has no ``Linear`` at all.
    """
    targets = _targets(model, include_head)
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        with torch.no_grad():
            setattr(model.get_submodule(parent_name), child, make(linear))
    log.debug("swapped %d Linear layers (LM head included: %s)", len(targets), include_head)
    return model
