"""``GroupedExperts``: the routed experts' SwiGLU weights, stacked, and their forward pass.

The ``E`` experts' matrices are three 3-D parameters, ``w1, w3: (E, d_ff, d_model)`` and
``w2: (E, d_model, d_ff)`` — each slice laid out as ``nn.Linear``'s ``(d_out, d_in)``, names as
in the dense :class:`~lmforge.model.layers.SwiGLU` — so one grouped GEMM reads them all
(torchtitan's ``GroupedExperts``). Each expert is initialised like a :class:`Linear`
(truncated normal, std ``1/sqrt(fan_in)``; the down projection times ``out_init_scale``).

Every expert's weights enter the graph on every step (the grouped GEMM reads the whole stacked
tensor), so an expert that got no token still has a (zero) gradient: DDP's
``find_unused_parameters`` stays off. The parameters' kind is ``"expert"``: weight-decayed like
matrices, and under Muon orthogonalised one expert at a time.

Under autocast the weights are cast to the autocast dtype here (autocast does not cover the
grouped GEMM; weights stored in that dtype, ``moe.expert_dtype = "bfloat16"``, are used as
they are); the combined output is in that dtype too (float32 for expert-choice, whose
scatter-add would round in bf16), as a dense MLP's is.
Whether the device has the grouped GEMM is looked up when the weights are created or moved
(``.to``), not in ``forward``, so a compiled forward never queries the GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.model.layers import trunc_normal_
from lmforge.model.moe.dispatch import (
    IMPLS,
    compute_dtype,
    device_has_grouped_mm,
    dispatch_expert_choice,
    dispatch_token_choice,
    grouped_mm_supported,
)
from lmforge.model.moe.routers import ExpertRouting, TokenRouting

__all__ = ["GroupedExperts"]


class GroupedExperts(nn.Module):
    """``n_experts`` SwiGLU experts with stacked weights.

    Args:
        n_experts: how many experts.
        d_model: input and output width.
        d_ff: each expert's hidden width.
        out_init_scale: multiplies the init std of ``w2``.
        device: where to allocate.
        dtype: the weights' dtype.

    Attributes:
        impl: the dropless grouped GEMM (:data:`~lmforge.model.moe.dispatch.IMPLS`; ``"auto"``).
    """

    param_kind = "expert"

    def __init__(
        self,
        n_experts: int,
        d_model: int,
        d_ff: int,
        *,
        out_init_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(n_experts, d_model, d_ff) < 1:
            raise ValueError(
                f"GroupedExperts sizes must be positive, got n_experts={n_experts}, "
                f"d_model={d_model}, d_ff={d_ff}"
            )
        self.n_experts, self.d_model, self.d_ff = n_experts, d_model, d_ff
        self.out_init_scale = out_init_scale
        self.impl = "auto"
        kw = dict(device=device, dtype=dtype)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))  # type: ignore[arg-type]
        self.w3 = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))  # type: ignore[arg-type]
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff, **kw))  # type: ignore[arg-type]
        self.device_has_grouped_mm = device_has_grouped_mm(self.w1.device)
        self.reset_parameters()

    def _apply(self, fn: Any, recurse: bool = True) -> GroupedExperts:
        """``nn.Module._apply`` (``.to``, ``.cuda``, ...), then look the device up again."""
        out = super()._apply(fn, recurse)
        self.device_has_grouped_mm = device_has_grouped_mm(self.w1.device)
        return out

    def reset_parameters(self) -> None:
        """Truncated normal, std ``1/sqrt(fan_in)`` (``w2``: times ``out_init_scale``), drawn in
        float32 at least and rounded into lower-precision weights (the same numbers as a
        float32 model's first cast)."""
        stds = (1 / math.sqrt(self.d_model),) * 2 + (self.out_init_scale / math.sqrt(self.d_ff),)
        for weight, std in zip((self.w1, self.w3, self.w2), stds, strict=True):
            if weight.dtype in (torch.bfloat16, torch.float16):
                with torch.no_grad():
                    weight.copy_(trunc_normal_(torch.empty_like(weight, dtype=torch.float32), std))
            else:
                trunc_normal_(weight, std)

    def forward(
        self,
        x: Tensor,
        routing: TokenRouting | ExpertRouting,
        capacity: int | None = None,
        counts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The experts' gated sum for each token.

        Args:
            x: ``(N, d_model)`` tokens.
            routing: the router's decision.
            capacity: assignments per expert for token-choice routing (``None``: dropless).
            counts: int64 ``(E,)`` assignments per expert (token-choice), if already counted.

        Returns:
            ``(y, dropped)``: ``y`` ``(N, d_model)`` and the dropped fraction (0-d tensor).
        """
        if self.impl not in IMPLS:
            raise ValueError(f"GroupedExperts.impl must be one of {IMPLS}, got {self.impl!r}")
        dtype = compute_dtype(x)
        xc = x.to(dtype)
        w1, w3, w2 = (w.to(dtype) for w in (self.w1, self.w3, self.w2))
        if isinstance(routing, ExpertRouting):
            return dispatch_expert_choice(xc, routing, w1, w3, w2)
        impl = self.impl
        if impl == "auto":
            fast = grouped_mm_supported(xc, w1, self.device_has_grouped_mm)
            impl = "grouped_mm" if fast else "padded"
        return dispatch_token_choice(xc, routing, w1, w3, w2, capacity, impl, counts)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}"
