"""``GroupedExperts``: the routed experts' SwiGLU weights, stacked, and their forward pass.

The ``E`` experts' matrices are two 3-D parameters, ``w13: (E, 2·d_ff, d_model)`` — each
expert's gate weights ``w1`` stacked on its up weights ``w3`` — and ``w2: (E, d_model, d_ff)``,
each slice laid out as ``nn.Linear``'s ``(d_out, d_in)``, so one grouped GEMM reads them all
(torchtitan's ``GroupedExperts``). Stored stacked, ``w1`` and ``w3`` enter their one GEMM with
no copy (with bf16 weights, concatenating them each step and copying their gradient's halves
out cost 1.7 ms of an 86 ms step at the ``gpt2-124M`` shape with 64 experts,
``benches/NOTES-model.md``); the read-only views :attr:`GroupedExperts.w1` and
:attr:`GroupedExperts.w3` name the dense :class:`~lmforge.model.layers.SwiGLU`'s halves, and
weights saved with separate ``w1``/``w3`` load (:meth:`GroupedExperts._load_from_state_dict`,
the ``checkpoint.pt`` reader, and one process reading a sharded checkpoint); the optimizer state
of a run saved before the change does not, so such a run cannot be resumed. The parameter's kind is
``"expert_pair"``: under Muon each expert's ``w1`` and ``w3`` are orthogonalised apart, as
``w2`` is. Each expert is initialised like a :class:`Linear` (truncated normal, std
``1/sqrt(fan_in)``; the down projection times ``out_init_scale``).

Every expert's weights enter the graph on every step (the grouped GEMM reads the whole stacked
tensor), so an expert that got no token still has a (zero) gradient: DDP's
``find_unused_parameters`` stays off. The parameters are weight-decayed like matrices, and under
Muon orthogonalised one matrix at a time (``w13``: kind ``"expert_pair"``, ``w2``: ``"expert"``).

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

__all__ = ["GroupedExperts", "stack_legacy_gate_up"]


def stack_legacy_gate_up(state: dict[str, Any], prefix: str | None = None) -> dict[str, Any]:
    """Replace, in place, ``w1`` / ``w3`` pairs of a state dict (written before the two were
    one parameter) by their stack ``w13``.

    Args:
        state: a state dict.
        prefix: the experts module's key prefix (``"layers.0.mlp.experts."``, or ``""`` for a
            ``GroupedExperts`` alone); ``None``: every ``...experts.w1`` / ``...experts.w3``
            pair of a model's state dict.

    Returns:
        ``state``.
    """
    if prefix is None:
        prefixes = [k[: -len("w1")] for k in state if k.endswith("experts.w1")]
    else:
        prefixes = [prefix]
    for p in prefixes:
        gate, up, stacked = p + "w1", p + "w3", p + "w13"
        if gate in state and up in state and stacked not in state:
            state[stacked] = torch.cat([state.pop(gate), state.pop(up)], dim=1)
    return state


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

    param_kind = {"w13": "expert_pair", "w2": "expert"}

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
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model, **kw))  # type: ignore[arg-type]
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff, **kw))  # type: ignore[arg-type]
        self.device_has_grouped_mm = device_has_grouped_mm(self.w13.device)
        self.reset_parameters()

    def _apply(self, fn: Any, recurse: bool = True) -> GroupedExperts:
        """``nn.Module._apply`` (``.to``, ``.cuda``, ...), then look the device up again."""
        out = super()._apply(fn, recurse)
        self.device_has_grouped_mm = device_has_grouped_mm(self.w13.device)
        return out

    @property
    def w1(self) -> Tensor:
        """The gate weights ``(E, d_ff, d_model)``: a view of ``w13``'s first half."""
        return self.w13[:, : self.d_ff]

    @property
    def w3(self) -> Tensor:
        """The up weights ``(E, d_ff, d_model)``: a view of ``w13``'s second half."""
        return self.w13[:, self.d_ff :]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Load as ``nn.Module`` does, stacking the separate ``w1`` and ``w3`` of a checkpoint
        written before they were one parameter (:func:`stack_legacy_gate_up`)."""
        stack_legacy_gate_up(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        """Truncated normal, std ``1/sqrt(fan_in)`` (``w2``: times ``out_init_scale``), drawn in
        float32 at least and rounded into lower-precision weights (the same numbers as a
        float32 model's first cast)."""
        stds = (1 / math.sqrt(self.d_model), self.out_init_scale / math.sqrt(self.d_ff))
        for weight, std in zip((self.w13, self.w2), stds, strict=True):
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
        w13, w2 = self.w13.to(dtype), self.w2.to(dtype)
        if isinstance(routing, ExpertRouting):
            return dispatch_expert_choice(xc, routing, w13, w2)
        impl = self.impl
        if impl == "auto":
            fast = grouped_mm_supported(xc, w13, self.device_has_grouped_mm)
            impl = "grouped_mm" if fast else "padded"
        return dispatch_token_choice(xc, routing, w13, w2, capacity, impl, counts)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}"
