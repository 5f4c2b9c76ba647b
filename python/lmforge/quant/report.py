"""``quantization_report``: how many bytes of weights a quantization saved.

Bytes are counted from the ``state_dict`` (parameters and persistent buffers; a tensor shared
by two names, such as a tied embedding, counts once), so the numbers are what a saved model
weighs. The report separates the layers that were quantized — ``d_out · d_in`` bytes plus
``4 · d_out`` for the scales, against ``4 · d_out · d_in`` in float32 — from the whole model,
whose embeddings and norms stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmforge.model.layers import Linear
from lmforge.quant.base import QuantizedLinear, quantized_modules

__all__ = ["QuantReport", "WeightBytes", "quantization_report", "weight_bytes"]


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of a model's weights.

    Attributes:
        total: every tensor of the ``state_dict``, shared tensors once.
        linear: bytes of each ``Linear`` or quantized layer (weight, or ``qweight`` + ``scale``),
            by module name.
    """

    total: int
    linear: dict[str, int]


def weight_bytes(model: nn.Module) -> WeightBytes:
    """Count the bytes of ``model``'s weights (see :class:`WeightBytes`)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen and key[0] != 0:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    linear: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            linear[name] = sum(t.numel() * t.element_size() for t in (module.qweight, module.scale))
        elif isinstance(module, Linear):
            linear[name] = module.weight.numel() * module.weight.element_size()
    return WeightBytes(total, linear)


@dataclass(frozen=True)
class QuantReport:
    """Weight bytes before and after quantizing.

    Attributes:
        formats: the formats found in the quantized model (e.g. ``("int8",)``).
        n_quantized: quantized layers.
        linear_before: bytes of those layers' float weights.
        linear_after: bytes of their quantized weights and scales.
        total_before: bytes of the whole float model.
        total_after: bytes of the whole quantized model.
    """

    formats: tuple[str, ...]
    n_quantized: int
    linear_before: int
    linear_after: int
    total_before: int
    total_after: int

    @property
    def linear_ratio(self) -> float:
        """How many times smaller the quantized layers are."""
        return self.linear_before / max(self.linear_after, 1)

    @property
    def total_ratio(self) -> float:
        """How many times smaller the whole model is."""
        return self.total_before / max(self.total_after, 1)

    @property
    def saved_bytes(self) -> int:
        """Bytes saved over the whole model."""
        return self.total_before - self.total_after

    def summary(self) -> str:
        """A few human-readable lines."""
        mib = 1 / 2**20
        return "\n".join(
            [
                f"format: {', '.join(self.formats)} ({self.n_quantized} layers)",
                f"quantized layers: {self.linear_before * mib:.2f} MiB -> "
                f"{self.linear_after * mib:.2f} MiB ({self.linear_ratio:.2f}x smaller)",
                f"whole model: {self.total_before * mib:.2f} MiB -> "
                f"{self.total_after * mib:.2f} MiB ({self.total_ratio:.2f}x smaller, "
                f"{self.saved_bytes * mib:.2f} MiB saved)",
            ]
        )


def quantization_report(before: nn.Module | WeightBytes, after: nn.Module) -> QuantReport:
    """Compare the weights of a float model and its quantized version.

    Args:
        before: the float model, or its :func:`weight_bytes` taken before quantizing in place.
        after: the quantized model.

    Returns:
        A :class:`QuantReport`.

    Raises:
        ValueError: ``before`` lacks a layer that ``after`` quantized (not the same model).
    """
    b = before if isinstance(before, WeightBytes) else weight_bytes(before)
    a = weight_bytes(after)
    layers = quantized_modules(after)
    missing = sorted(set(layers) - set(b.linear))
    if missing:
        raise ValueError(
            f"the float model has no Linear layer {missing[0]!r} that the quantized model has: "
            "pass the model that was quantized (or its weight_bytes)"
        )
    return QuantReport(
        formats=tuple(sorted({m.format for m in layers.values()})),
        n_quantized=len(layers),
        linear_before=sum(b.linear[n] for n in layers),
        linear_after=sum(a.linear[n] for n in layers),
        total_before=b.total,
        total_after=a.total,
    )
