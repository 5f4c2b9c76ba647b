"""Sparse upcycling: an MoE model built from a trained dense one (Komatsuzaki et al. 2023).

Every weight outside the MoE MLPs (embedding, attention, norms, head, the dense MLPs of layers
that stay dense) is copied. In each MoE layer every routed expert starts as the dense MLP —
a full copy when ``expert_d_ff == d_ff`` — and the shared experts likewise; the router gets a
fresh small init (``MoEConfig.router_init_std``, default the model's ``init_std``), so routing
starts near uniform.

**Full copies reproduce the dense model.** All experts compute the same ``f(x)``, so a token's
routed output is ``(Σ_j g_j) · f(x)``: with gates that sum to 1 (token-choice or sigmoid with
``normalize_gates`` and ``route_scale = 1``, or hash routing), no capacity dropping and no
shared expert, it is exactly ``f(x)`` and the upcycled model's loss at step 0 is the dense
model's (tested; only float rounding differs). A shared expert adds a second ``f(x)``;
expert-choice gates do not sum to 1; either breaks the equality.

**Sliced fine-grained experts.** With ``expert_d_ff = d_ff / m`` expert ``e`` takes slice
``e mod m`` of the dense hidden units (rows of ``w1``/``w3``, columns of ``w2``) — a SwiGLU is a
sum over its hidden units, so the ``m`` slices add up to the dense MLP. A token then gets
``Σ_j g_j · slice_{e_j}(x)``, a gate-weighted *partial* sum: it equals the dense output only
when the ``k`` chosen experts hold every slice once and every gate is 1 — e.g. hash routing
with ``E = top_k = m`` and ``route_scale = m`` (tested). A learned router's gates are its
probabilities, which reweight the slices, and a token need not pick every slice: in general the
step-0 loss is above the dense loss and training recovers it;
copies of a slice are identical at first and differ only through the router's gradients, which
is why Drop-Upcycling (Nakamura et al. 2025) re-initialises part of each expert. Shared experts
are filled the same way, slice ``j mod m`` for shared expert ``j``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmforge.model.layers import SwiGLU
from lmforge.model.moe.config import MoEConfig
from lmforge.model.moe.layer import MoE

if TYPE_CHECKING:
    from lmforge.model.transformer import Transformer

__all__ = ["upcycle"]


def _slices(dense: SwiGLU, width: int, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` experts of hidden ``width`` cut from ``dense``: stacked ``(count, width, d)``
    ``w1``/``w3`` and ``(count, d, width)`` ``w2``; expert ``j`` is slice ``j mod m``."""
    d_ff = dense.w1.weight.shape[0]
    m = d_ff // width
    w1, w3, w2 = dense.w1.weight, dense.w3.weight, dense.w2.weight
    idx = [(j % m) * width for j in range(count)]
    return (
        torch.stack([w1[i : i + width] for i in idx]),
        torch.stack([w3[i : i + width] for i in idx]),
        torch.stack([w2[:, i : i + width] for i in idx]),
    )


@torch.no_grad()
def _fill_moe(moe: MoE, dense: SwiGLU, width: int) -> None:
    w1, w3, w2 = _slices(dense, width, moe.moe.n_routed_experts)
    moe.experts.w1.copy_(w1)
    moe.experts.w3.copy_(w3)
    moe.experts.w2.copy_(w2)
    if moe.shared is not None:
        s1, s3, s2 = _slices(dense, width, moe.moe.n_shared_experts)
        moe.shared.w1.weight.copy_(s1.flatten(0, 1))
        moe.shared.w3.weight.copy_(s3.flatten(0, 1))
        moe.shared.w2.weight.copy_(torch.cat(s2.unbind(0), dim=1))


def upcycle(dense: Transformer, moe: MoEConfig) -> Transformer:
    """An MoE copy of ``dense``: its weights everywhere, its MLP in every expert.

    Args:
        dense: a dense :class:`~lmforge.model.transformer.Transformer` (e.g. ``load_trained(run)
            .model``).
        moe: the MoE layout; ``expert_d_ff`` must be ``d_ff`` (copies) or divide it (slices).

    Returns:
        A new model with ``config = dense.config`` plus ``moe``, on ``dense``'s device and in
        its dtype, in ``dense``'s train/eval mode.

    Raises:
        ValueError: ``dense`` already has MoE layers, or ``expert_d_ff`` does not divide ``d_ff``.
    """
    from lmforge.model.transformer import Transformer

    if dense.config.moe is not None:
        raise ValueError("upcycle needs a dense model; this one already has model.moe set")
    d_ff = dense.config.d_ff
    assert d_ff is not None
    width = moe.expert_width(d_ff)
    if d_ff % width:
        raise ValueError(
            f"moe.expert_d_ff ({width}) must equal the dense d_ff ({d_ff}) for copied experts "
            "or divide it for sliced ones"
        )
    config = dataclasses.replace(dense.config, moe=moe)
    param = next(dense.parameters())
    model = Transformer(config, device=param.device, dtype=param.dtype)
    moe_prefixes = [f"layers.{i}.mlp." for i in moe.moe_layers(config.n_layers)]
    state = {k: v for k, v in dense.state_dict().items() if not k.startswith(tuple(moe_prefixes))}
    result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if not k.startswith(tuple(moe_prefixes))]
    assert not left and not result.unexpected_keys, (left, result.unexpected_keys)
    for i in moe.moe_layers(config.n_layers):
        block_mlp = model.layers[i].mlp
        dense_mlp = dense.layers[i].mlp
        assert isinstance(block_mlp, MoE) and isinstance(dense_mlp, SwiGLU)
        _fill_moe(block_mlp, dense_mlp, width)
    return model.train(dense.training)
