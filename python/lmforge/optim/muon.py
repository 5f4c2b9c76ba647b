"""Muon: momentum orthogonalised by Newton–Schulz for hidden matrices, AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; Keller
Jordan's modded-nanogpt speedrun) replaces the update of a 2-D hidden weight by the nearest
semi-orthogonal matrix to its (Nesterov) momentum, ``U Vᵀ`` from the SVD ``U S Vᵀ``, so every
direction of the update moves by the same amount however skewed the gradient's spectrum is.
The SVD is too slow on a GPU; five Newton–Schulz iterations of the quintic
``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ`` and ``(a, b, c) = (3.4445, −4.7750, 2.0315)``
get there in matmuls. Those coefficients trade exactness for speed: they push small singular
values up fast, and leave every singular value somewhere in about ``[0.7, 1.2]`` rather than at
1, which Jordan reports does not hurt. The iteration runs in bfloat16 on CUDA (the speedrun's
choice; it is stable in bf16) and in float32 elsewhere (CPUs have no fast bf16 matmul), on
``X`` or ``Xᵀ`` whichever is wide, so the Gram matrix ``A`` is the small one; the input is first
divided by its Frobenius norm so every singular value starts in ``[0, 1]``. The multi-tensor path
stacks same-shape matrices into one batched iteration: a Transformer's hidden matrices come in a
few shapes, and on an H200 this took a GPT-2-small Muon step from 36 ms (one matrix at a time)
to 8 ms.

Scale: the orthogonalised update is multiplied by ``max(1, rows / cols) ** 0.5`` (rows, cols of
the weight as stored, ``(out, in)`` for ``nn.Linear``) — the speedrun's choice, which gives a tall
matrix the same per-column RMS as a square one; at ``lr = 0.02`` this is Jordan's tuned setting.
(Moonshot's ``0.2 · sqrt(max(rows, cols))``, which matches AdamW's update RMS so AdamW's lr can
be reused, is the alternative we did not take.) Momentum is the EMA form ``b ← b.lerp(g, 1 − μ)``
with the Nesterov direction ``g.lerp(b, μ)``; orthogonalisation is blind to the overall scale,
so this equals the SGD form. Weight decay, when on, is decoupled: ``p ← p · (1 − lr · wd)``.

Muon is for hidden matrices only; embeddings, the LM head, norms and other parameters go to
AdamW (Jordan's advice). A 3-D parameter is a stack of matrices (Mixture-of-Experts weights
``(E, d_out, d_in)``): each ``(d_out, d_in)`` slice is orthogonalised and scaled on its own. A
group's ``row_blocks`` (default 1) says each slice's rows are that many matrices stacked (MoE
gate and up weights ``(E, 2·d_ff, d_model)``: ``row_blocks = 2``), each orthogonalised alone.
Both live in ONE optimizer so the trainer treats it like any other:
each param group is flagged ``use_muon``; Muon groups read ``lr, momentum, nesterov, ns_steps,
weight_decay`` and hold a ``momentum_buffer``; the others read ``lr, betas, eps, weight_decay``
and hold AdamW's state (see :mod:`lmforge.optim.adamw`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lmforge.optim._common import (
    GroupOptimizer,
    check_beta,
    check_foreach,
    check_non_negative,
    group_by_device_dtype,
    resolve_foreach,
)
from lmforge.optim.adamw import adam_group_step, check_adam_group

__all__ = ["NS_COEFFICIENTS", "Muon", "muon_scale", "newton_schulz"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic's ``(a, b, c)`` from the modded-nanogpt speedrun."""


def newton_schulz(
    G: Tensor, steps: int = 5, *, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> Tensor:
    """Approximately orthogonalise ``G``: about ``U Vᵀ`` for ``G = U S Vᵀ``.

    Args:
        G: a matrix ``(rows, cols)``, or a batch of them ``(..., rows, cols)``.
        steps: Newton–Schulz iterations (5 puts singular values in about ``[0.7, 1.2]``).
        eps: added to the Frobenius norm before normalising (guards a zero matrix).
        dtype: working precision; ``None`` means bfloat16 on CUDA and float32 elsewhere.

    Returns:
        A tensor of ``G``'s shape and dtype whose singular values are near 1.

    Raises:
        ValueError: if ``G`` has fewer than 2 dimensions or ``steps`` < 1.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got a tensor of shape {tuple(G.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    a, b, c = NS_COEFFICIENTS
    work_dtype = dtype or (torch.bfloat16 if G.is_cuda else torch.float32)
    X = G.to(work_dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def muon_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """The factor ``max(1, rows / cols) ** 0.5`` applied to a ``(rows, cols)`` update."""
    rows, cols = shape[-2], shape[-1]
    return float(max(1.0, rows / cols) ** 0.5)


class Muon(GroupOptimizer):
    """Muon on groups flagged ``use_muon=True`` (2-D weights, or 3-D stacks of them), AdamW on
    the other groups.

    A group without a ``use_muon`` key is a Muon group, so ``Muon(matrices)`` works alone.
    Build mixed groups with :func:`lmforge.optim.param_groups` (``muon=True``), which also puts
    the MoE experts' stacked gate and up weights (kind ``expert_pair``) in a group with
    ``row_blocks = 2``; given to a plain Muon group they would be orthogonalised as one matrix.

    Args:
        params: parameters or param-group dicts (each may override any hyperparameter).
        lr: Muon learning rate (>= 0).
        momentum: Muon momentum in ``[0, 1)``.
        weight_decay: decoupled weight decay of Muon groups (>= 0).
        nesterov: use the Nesterov direction ``g.lerp(b, momentum)`` (default) or ``b``.
        ns_steps: Newton–Schulz iterations.
        row_blocks: each matrix of a Muon group is this many matrices stacked along its rows,
            orthogonalised and scaled one by one (groups set it; 1 by default).
        adam_lr: default learning rate of the AdamW groups.
        adam_betas: AdamW's moment decay rates.
        adam_eps: AdamW's epsilon.
        adam_weight_decay: default decoupled weight decay of the AdamW groups.
        foreach: multi-tensor path; ``None`` uses it when a group is on one device type.

    Raises:
        ValueError: on an out-of-range hyperparameter, or a Muon group holding a parameter
            that is neither 2-D nor 3-D, or whose rows ``row_blocks`` does not divide.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        *,
        nesterov: bool = True,
        ns_steps: int = 5,
        row_blocks: int = 1,
        adam_lr: float = 3e-4,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        self._adam_defaults = dict(lr=adam_lr, weight_decay=adam_weight_decay)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            ns_steps=ns_steps,
            row_blocks=row_blocks,
            betas=adam_betas,
            eps=adam_eps,
            use_muon=True,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; an AdamW group (``use_muon=False``) defaults to the ``adam_*`` values."""
        if not param_group.get("use_muon", True):
            param_group = {**self._adam_defaults, **param_group}
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group["use_muon"], bool):
            raise ValueError(f"use_muon must be True or False, got {group['use_muon']!r}")
        if not group["use_muon"]:
            check_adam_group(group)
            return
        check_non_negative("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_foreach(group["foreach"])
        ns_steps = group["ns_steps"]
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be a positive integer, got {ns_steps!r}")
        blocks = group["row_blocks"]
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"row_blocks must be a positive integer, got {blocks!r}")
        params = group["params"]
        for p in [params] if isinstance(params, Tensor) else params:
            if p.ndim not in (2, 3):
                raise ValueError(
                    f"Muon groups take 2-D weights (or 3-D stacks of them) only, got a "
                    f"parameter of shape {tuple(p.shape)}; put it in a use_muon=False (AdamW) "
                    "group"
                )
            if p.shape[-2] % blocks:
                raise ValueError(
                    f"row_blocks={blocks} does not divide the rows of a parameter of shape "
                    f"{tuple(p.shape)}"
                )

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not group["use_muon"]:
            adam_group_step(self.state, group, params, grads, decoupled=True)
            return
        bufs = [self._momentum_buffer(p) for p in params]
        hyper = {k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "ns_steps")}
        hyper["row_blocks"] = group.get("row_blocks", 1)  # absent from older state dicts
        if not resolve_foreach(group["foreach"], params):
            _muon_loop(params, grads, bufs, **hyper)
            return
        for bucket, (b_grads, b_bufs) in group_by_device_dtype(params, grads, bufs):
            _muon_foreach(bucket, b_grads, b_bufs, **hyper)

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def _muon_loop(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    ns_steps: int,
    row_blocks: int = 1,
) -> None:
    """The reference, one matrix at a time."""
    for p, grad, buf in zip(params, grads, bufs, strict=True):
        buf.lerp_(grad, 1 - momentum)
        update = _split_rows(grad.lerp(buf, momentum) if nesterov else buf, row_blocks)
        ortho = newton_schulz(update, ns_steps).flatten(-3, -2)
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        p.add_(ortho, alpha=-lr * muon_scale(update.shape))


def _split_rows(update: Tensor, blocks: int) -> Tensor:
    """``(..., rows, cols)`` as ``(..., blocks, rows / blocks, cols)``: the stacked matrices."""
    return update.unflatten(-2, (blocks, update.shape[-2] // blocks))


def _muon_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    ns_steps: int,
    row_blocks: int = 1,
) -> None:
    """The same update on one ``(device, dtype)`` bucket: multi-tensor momentum and apply,
    and one batched Newton–Schulz per distinct matrix shape."""
    torch._foreach_lerp_(bufs, grads, 1 - momentum)
    updates = torch._foreach_lerp(grads, bufs, momentum) if nesterov else bufs
    split = [_split_rows(u, row_blocks) for u in updates]
    orthos = [o.flatten(-3, -2) for o in _batched_newton_schulz(split, ns_steps)]
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_mul_(orthos, [-lr * muon_scale(u.shape) for u in split])
    torch._foreach_add_(params, orthos)


def _batched_newton_schulz(updates: list[Tensor], ns_steps: int) -> list[Tensor]:
    """Newton–Schulz on each matrix, stacking same-shape ones into one batch: a Transformer's
    hidden matrices come in a few shapes, and on a GPU a few batched matmuls cost far less
    than one small matmul launch per layer."""
    by_shape: dict[torch.Size, list[int]] = {}
    for i, u in enumerate(updates):
        by_shape.setdefault(u.shape, []).append(i)
    orthos: list[Tensor] = list(updates)
    for idx in by_shape.values():
        if len(idx) == 1:
            orthos[idx[0]] = newton_schulz(updates[idx[0]], ns_steps)
            continue
        batch = newton_schulz(torch.stack([updates[i] for i in idx]), ns_steps)
        for i, ortho in zip(idx, batch.unbind(0), strict=True):
            orthos[i] = ortho
    return orthos
