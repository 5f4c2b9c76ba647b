"""Parameter groups: which parameters get weight decay, and which go to Muon.

The optimizer knows nothing of models: the model labels each parameter with a KIND
(``"embedding"``, ``"head"``, ``"norm"``, ``"matrix"`` for the 2-D hidden weights of attention
and MLP, ``"expert"`` for Mixture-of-Experts weights stacked as ``(E, d_out, d_in)``,
``"expert_pair"`` for two such matrices per expert stacked along the output, ``(E, 2·d_out,
d_in)`` — the SwiGLU's gate and up weights — and ``"other"``) and this module turns the labels
into param groups. Expert weights are treated as ``E`` (or ``2·E``) matrices: decayed like
``matrix`` weights, and under Muon orthogonalised one matrix at a time (each expert is its own
linear map; orthogonalising the stack as one matrix would couple experts that never see the
same tokens). Muon's pair groups carry ``row_blocks = 2`` (:class:`lmforge.optim.Muon`).

Weight decay: on by default for ``matrix`` and ``head`` weights; off for norm gains (decaying
a gain towards 0 fights the normalisation it scales; nanoGPT, GPT-3) and for embeddings (each
row is only updated when its token occurs, so decay would shrink rare tokens' rows for nothing
but their rarity; OLMo 2 drops it), both configurable; ``other`` parameters follow nanoGPT's
rule — decayed when they are at least 2-D, not when they are biases or scalars. A parameter
that appears twice (tied embedding and head) is kept once, with the kind it was first labelled
with; frozen parameters (``requires_grad=False``) are left out.

Groups are formed by (Muon or not, decayed or not) in first-seen order, so the same model
always yields the same groups (a state dict depends on that order) and a multi-tensor step sees
as few, as large, lists as possible. Each group carries its ``kinds`` for logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from lmforge.optim._common import check_non_negative

__all__ = ["KINDS", "param_groups"]

KINDS = ("embedding", "head", "norm", "matrix", "expert", "expert_pair", "other")
"""The labels a model may give its parameters."""


def param_groups(
    labelled: Iterable[tuple[nn.Parameter, str]],
    weight_decay: float,
    *,
    decay_embeddings: bool = False,
    decay_norms: bool = False,
    muon: bool = False,
) -> list[dict[str, Any]]:
    """Split labelled parameters into optimizer param groups.

    Args:
        labelled: ``(parameter, kind)`` pairs, ``kind`` one of :data:`KINDS`.
        weight_decay: the coefficient of the decayed groups (the others get 0).
        decay_embeddings: decay ``embedding`` parameters too.
        decay_norms: decay ``norm`` parameters too.
        muon: put ``matrix``, ``expert`` and ``expert_pair`` parameters in their own groups
            flagged ``use_muon=True`` (and every other group ``use_muon=False``), as
            :class:`lmforge.optim.Muon` expects; ``expert_pair`` ones in groups of their own
            with ``row_blocks=2``.

    Returns:
        Param-group dicts with keys ``params``, ``weight_decay``, ``kinds`` (and ``use_muon``
        when ``muon``), non-empty, in first-seen order.

    Raises:
        ValueError: on an unknown kind, a non-tensor, a negative weight decay, or no trainable
            parameter at all.
    """
    check_non_negative("weight_decay", weight_decay)
    groups: dict[tuple[bool, bool, int], dict[str, Any]] = {}
    seen: set[int] = set()
    for p, kind in labelled:
        if kind not in KINDS:
            raise ValueError(f"unknown parameter kind {kind!r}; expected one of {KINDS}")
        if not isinstance(p, Tensor):
            raise ValueError(f"expected a parameter labelled {kind!r}, got {type(p).__name__}")
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        decay = _decays(kind, p, decay_embeddings=decay_embeddings, decay_norms=decay_norms)
        use_muon = muon and kind in ("matrix", "expert", "expert_pair")
        blocks = 2 if use_muon and kind == "expert_pair" else 1
        group = groups.get((use_muon, decay, blocks))
        if group is None:
            group = {"params": [], "weight_decay": float(weight_decay) if decay else 0.0}
            group["kinds"] = []
            if muon:
                group["use_muon"] = use_muon
            if blocks > 1:
                group["row_blocks"] = blocks
            groups[(use_muon, decay, blocks)] = group
        group["params"].append(p)
        if kind not in group["kinds"]:
            group["kinds"].append(kind)
    if not groups:
        raise ValueError("no trainable parameters to optimise (all frozen, or none given)")
    return list(groups.values())


def _decays(kind: str, p: Tensor, *, decay_embeddings: bool, decay_norms: bool) -> bool:
    if kind == "embedding":
        return decay_embeddings
    if kind == "norm":
        return decay_norms
    if kind == "other":
        return p.ndim >= 2
    return True
