"""Building blocks of the Transformer: ``Linear``, ``Embedding``, ``RMSNorm``, ``SwiGLU``.

Small modules that own their parameters and their initialisation, so that a model is assembled
from them and re-initialised with ``reset_parameters()`` (also after building on the meta device).

Design choices:

* **No biases** (PaLM, Chowdhery et al. 2022; LLaMA, Touvron et al. 2023): they cost memory and
  optimiser state and do not help a pre-norm Transformer.
* **Linear init**: truncated normal with ``std = 1 / sqrt(fan_in)``, cut at ±3 std, so each
  output starts with about the variance of one input coordinate whatever the width (LeCun init;
  the CS336 assignment-1 convention). ``init_scale`` multiplies the std; the Transformer uses it
  for residual output projections (GPT-2, Radford et al. 2019).
* **Embedding init**: truncated normal with ``ModelConfig.init_std`` (0.02, GPT-2).
* **RMSNorm** (Zhang & Sennrich 2019) normalises in float32 and casts back to the input dtype:
  the mean of squares over ``d_model`` bf16 values loses too many bits (the OLMo and LLaMA
  reference implementations do the same). The gain starts at 1.
* **SwiGLU** (Shazeer 2020): ``w2(silu(w1 x) * w3 x)``, names as in the LLaMA checkpoints
  (``w1`` gate, ``w3`` up, ``w2`` down), which the Hugging Face export maps one to one.

Every module carries a ``param_kind`` ("matrix", "embedding", "norm"; the LM head sets "head")
that :meth:`lmforge.model.transformer.Transformer.param_kinds` reports to the optimiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.functional import at_least_float32
from lmforge.model.mixed_linear import mixed_linear

__all__ = [
    "Embedding",
    "Linear",
    "RMSNorm",
    "SwiGLU",
    "cast_parameters_",
    "float32_parameter_names",
    "trunc_normal_",
]


def float32_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that stay float32 when the rest is stored narrower: those of
    modules declaring ``keeps_float32 = True`` (an MoE router's weight, whose logits decide
    discrete choices)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if getattr(module, "keeps_float32", False)
        for name, _ in module.named_parameters(recurse=False)
    }


def cast_parameters_(model: nn.Module, dtype: torch.dtype) -> None:
    """Store every floating-point parameter of ``model`` in ``dtype``, in place — except, for a
    dtype narrower than float32, :func:`float32_parameter_names`; buffers (RoPE's tables, a
    router's bias) keep theirs."""
    kept = float32_parameter_names(model) if dtype.itemsize < 4 else set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.dtype != dtype and name not in kept:
                p.data = p.data.to(dtype)


def trunc_normal_(weight: Tensor, std: float) -> Tensor:
    """Fill ``weight`` in place from N(0, std²) truncated at ±3 std.

    Args:
        weight: the tensor to fill (any shape).
        std: standard deviation of the untruncated normal; must be > 0.

    Returns:
        ``weight``, for chaining.

    Raises:
        ValueError: if ``std`` is not positive.
    """
    if not std > 0:
        raise ValueError(f"init std must be > 0, got {std}")
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


class Linear(nn.Module):
    """``y = x Wᵀ`` without bias; ``weight`` has shape ``(d_out, d_in)`` as in ``nn.Linear``.

    Args:
        d_in: input features.
        d_out: output features.
        init_scale: multiplies the init std ``1 / sqrt(d_in)`` (e.g. ``1 / sqrt(2 n_layers)``
            for residual output projections).
        device: where to allocate the weight (``"meta"`` to defer allocation).
        dtype: the weight's dtype (default: torch's default dtype).

    Raises:
        ValueError: if a size is not positive or ``init_scale`` is not positive.
    """

    param_kind = "matrix"

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        init_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_in < 1 or d_out < 1:
            raise ValueError(f"Linear sizes must be positive, got d_in={d_in}, d_out={d_out}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.d_in, self.d_out, self.init_scale = d_in, d_out, init_scale
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal, std ``init_scale / sqrt(d_in)``, cut at ±3 std."""
        trunc_normal_(self.weight, self.init_scale / math.sqrt(self.d_in))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., d_in)`` → ``(..., d_out)`` (under CUDA bf16 autocast the weight
        gradient is written in float32 by the GEMM: :mod:`lmforge.model.mixed_linear`)."""
        return mixed_linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, bias=False"


class Embedding(nn.Module):
    """Token-id lookup; ``weight`` has shape ``(vocab_size, d_model)``.

    Args:
        vocab_size: number of rows.
        d_model: width of each row.
        init_std: std of the truncated normal init (cut at ±3 std).
        device: where to allocate the weight.
        dtype: the weight's dtype.

    Raises:
        ValueError: if a size or ``init_std`` is not positive.
    """

    param_kind = "embedding"

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        *,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or d_model < 1:
            raise ValueError(
                f"Embedding sizes must be positive, got vocab_size={vocab_size}, d_model={d_model}"
            )
        self.vocab_size, self.d_model, self.init_std = vocab_size, d_model, init_std
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal with ``init_std``, cut at ±3 std."""
        trunc_normal_(self.weight, self.init_std)

    def forward(self, idx: Tensor) -> Tensor:
        """``idx``: integer ``(...)`` → ``(..., d_model)``."""
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}"


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension: ``x / rms(x) * weight``.

    Computed in float32 (float64 stays float64) and cast back to the input's dtype.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean of squares.
        device: where to allocate the weight.
        dtype: the weight's dtype.

    Raises:
        ValueError: if ``dim`` or ``eps`` is not positive.
    """

    param_kind = "norm"

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or not eps > 0:
            raise ValueError(f"RMSNorm needs dim >= 1 and eps > 0, got dim={dim}, eps={eps}")
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gain of one."""
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., dim)`` → same shape and dtype."""
        xf = at_least_float32(x)
        return F.rms_norm(xf, (self.dim,), self.weight.to(xf.dtype), self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class SwiGLU(nn.Module):
    """Gated MLP ``w2(silu(w1 x) * w3 x)`` (Shazeer 2020).

    Args:
        d_model: input and output width.
        d_ff: hidden width.
        out_init_scale: ``init_scale`` of the down projection ``w2``.
        device: where to allocate the weights.
        dtype: the weights' dtype.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        out_init_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, init_scale=out_init_scale, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(..., d_model)`` → ``(..., d_model)``."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
