"""Adam and AdamW: adaptive moment estimation, with coupled L2 or decoupled weight decay.

Adam (Kingma & Ba 2015) keeps exponential moving averages of the gradient ``m`` and of its
square ``v``, corrects their bias towards zero in the first steps, and moves each weight by
``lr · m̂ / (sqrt(v̂) + eps)``. ``Adam`` adds weight decay to the gradient (coupled L2, as
``torch.optim.Adam``), where the adaptive denominator then weakens it for weights with large
gradients; ``AdamW`` (Loshchilov & Hutter 2019) instead shrinks the weights directly,
``p ← p · (1 − lr · wd)``, before the Adam step, so the decay is the same for every weight.
AdamW's defaults are the LM-pretraining ones (β₂ = 0.95 and wd = 0.1, as in GPT-3 and Llama),
Adam's are torch's.

The arithmetic follows ``torch.optim.Adam``'s non-fused implementations operation for
operation (``m.lerp_(g, 1 − β₁)``; ``v ← β₂ v + (1 − β₂) g²``; ``denom = sqrt(v) / sqrt(bc₂) +
eps``; ``p ← p − lr / bc₁ · m / denom``), so the two agree to rounding. The multi-tensor path
allocates one temporary per parameter (the denominator) and works in place otherwise. State per
parameter: ``step`` (a CPU float32 tensor), ``exp_avg``, ``exp_avg_sq`` — torch's names, so
state dicts interchange with ``torch.optim.AdamW`` — and, for a bfloat16 or float16 parameter,
``master``: its float32 master weight (:mod:`lmforge.optim._common`). The update of such a
parameter is the float32 update of its master with the gradient widened to float32, then the
master rounded into the parameter: the same numbers as a float32 parameter whose gradient
happened to be the low-precision one, and a forward pass that reads the rounded weight.

``moment_dtype="bfloat16"`` stores ``exp_avg`` and ``exp_avg_sq`` in bfloat16, as DeepSeek-V3
does (§3.3.3: "without incurring observable performance degradation"): each step widens them,
updates them in float32 exactly as above, and rounds them when stored. It saves 4 bytes per
weight of memory and 8 of traffic per step; it is not ``torch.optim.AdamW``'s arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lmforge.kernels import use_triton
from lmforge.kernels.adamw import adam_multi_tensor_
from lmforge.kernels.adamw import fits as fused_fits
from lmforge.optim._common import (
    LOW_PRECISION,
    GroupOptimizer,
    check_beta,
    check_foreach,
    check_non_negative,
    check_positive,
    group_by_device_dtype,
    new_step,
    resolve_foreach,
)

__all__ = ["MOMENT_DTYPES", "Adam", "AdamW", "adam_group_step", "check_adam_group"]

MOMENT_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bfloat16": torch.bfloat16}
"""The values of ``moment_dtype``: ``None`` keeps the moments in the weights' dtype (float32
for float32 weights and for masters); ``"bfloat16"`` stores them in bfloat16."""


class Adam(GroupOptimizer):
    """Adam with coupled L2 weight decay (``grad += wd · p``), matching ``torch.optim.Adam``.

    Args:
        params: parameters or param-group dicts (each may override any hyperparameter).
        lr: learning rate (>= 0).
        betas: decay rates of the first and second moment averages, each in ``[0, 1)``.
        eps: added to the denominator for numerical stability (> 0).
        weight_decay: L2 penalty coefficient added to the gradient (>= 0).
        foreach: multi-tensor path; ``None`` uses it when a group is on one device type.
        fused: one Triton kernel for the whole update (:mod:`lmforge.kernels.adamw`);
            ``None`` uses it for contiguous tensors on a GPU with Triton (``LMFORGE_TRITON=0``
            turns it off), ``False`` never. Same arithmetic as the other paths.
        moment_dtype: ``None`` (default: the weights' dtype) or ``"bfloat16"``: the dtype the
            moments are stored in (see the module docstring).

    bfloat16 and float16 parameters are updated through float32 master weights kept in the
    state (see the module docstring).

    Raises:
        ValueError: on an out-of-range hyperparameter (in the defaults or in any group).
    """

    decoupled_weight_decay = False
    master_weights = True

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        moment_dtype: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            fused=fused,
            moment_dtype=moment_dtype,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, *, grad_scale: Tensor | None = None
    ) -> float | None:
        """One optimisation step over every group; parameters whose grad is ``None`` are skipped.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled).
            grad_scale: a scalar tensor every gradient is multiplied by first: the factor of
                :func:`lmforge.optim.clip_coefficient`, so that ``clip_coefficient`` then
                ``step(grad_scale=coef)`` is ``clip_grad_norm_`` then ``step()`` without the
                pass over the gradients (the fused kernel multiplies as it loads them; the
                other paths multiply copies). The ``.grad`` tensors are left as they were.

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        self._grad_scale = grad_scale
        try:
            return super().step(closure)
        finally:
            self._grad_scale = None

    def _check_group(self, group: dict[str, Any]) -> None:
        check_adam_group(group)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        adam_group_step(
            self.state,
            group,
            params,
            grads,
            decoupled=self.decoupled_weight_decay,
            grad_scale=getattr(self, "_grad_scale", None),
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (``p ← p · (1 − lr · wd)``), matching
    ``torch.optim.AdamW``.

    Args:
        params: parameters or param-group dicts (each may override any hyperparameter).
        lr: learning rate (>= 0).
        betas: decay rates of the moment averages; ``(0.9, 0.95)`` is the LM-pretraining choice.
        eps: added to the denominator for numerical stability (> 0).
        weight_decay: decoupled decay coefficient (>= 0); the per-step shrink is ``lr · wd``.
        foreach: multi-tensor path; ``None`` uses it when a group is on one device type.
        fused: one Triton kernel for the whole update on a GPU; ``None`` when possible.
        moment_dtype: ``None`` (the weights' dtype) or ``"bfloat16"`` (see :class:`Adam`).

    Raises:
        ValueError: on an out-of-range hyperparameter (in the defaults or in any group).
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        moment_dtype: str | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            foreach=foreach,
            fused=fused,
            moment_dtype=moment_dtype,
        )


def check_adam_group(group: dict[str, Any]) -> None:
    """Validate the Adam hyperparameters of a param group (``lr, betas, eps, weight_decay``).

    Raises:
        ValueError: naming the hyperparameter that is out of range.
    """
    check_non_negative("lr", group["lr"])
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_beta("betas[0]", betas[0])
    check_beta("betas[1]", betas[1])
    check_positive("eps", group["eps"])
    check_non_negative("weight_decay", group["weight_decay"])
    check_foreach(group["foreach"])
    if group.get("fused") not in (None, True, False):
        raise ValueError(f"fused must be None, True or False, got {group['fused']!r}")
    if group.get("moment_dtype") not in MOMENT_DTYPES:
        raise ValueError(
            f"moment_dtype must be one of {tuple(MOMENT_DTYPES)}, got {group['moment_dtype']!r}"
        )


def adam_group_step(
    state: dict[Any, Any],
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    *,
    decoupled: bool,
    grad_scale: Tensor | None = None,
) -> None:
    """One Adam(W) step for the parameters of ``group`` that have gradients.

    Args:
        state: the optimizer's per-parameter state (filled on a parameter's first step).
        group: the param group (``lr, betas, eps, weight_decay, foreach``).
        params: the group's parameters that have a gradient.
        grads: their gradients (read, never modified).
        decoupled: AdamW's decoupled weight decay instead of Adam's coupled L2.
        grad_scale: a scalar tensor the gradients are multiplied by before the update.
    """
    moments = MOMENT_DTYPES[group.get("moment_dtype")]
    states = [_init_state(state[p], p, moments) for p in params]
    masters = [s.get("master", p) for s, p in zip(states, params, strict=True)]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    beta1, beta2 = group["betas"]
    hyper = dict(
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled=decoupled,
    )
    if not resolve_foreach(group["foreach"], params):
        grads = _widened(grads, masters)
        if grad_scale is not None:
            grads = [g * grad_scale.to(g.device) for g in grads]
        avgs, sqs = _widened(exp_avgs, masters), _widened(exp_avg_sqs, masters)
        _adam_loop(masters, grads, avgs, sqs, steps, **hyper)
        _store(exp_avgs + exp_avg_sqs + params, avgs + sqs + masters)
        return
    for bucket, (b_masters, b_grads, b_avgs, b_sqs, b_steps) in group_by_device_dtype(
        params, masters, grads, exp_avgs, exp_avg_sqs, steps
    ):
        low = bucket[0].dtype in LOW_PRECISION
        lists = (b_masters, b_grads, b_avgs, b_sqs)
        fused = group.get("fused") is not False and use_triton(bucket[0])
        if fused and fused_fits(*lists, low_precision=bucket if low else None):
            scale = None if grad_scale is None else grad_scale.to(bucket[0].device, torch.float32)
            _adam_fused(*lists, b_steps, **hyper, grad_scale=scale, rounded=bucket if low else None)
            continue
        # widened first, so that the factor multiplies in float32 as in the fused kernel
        b_grads = _widened(b_grads, b_masters)
        if grad_scale is not None:  # in the factor's own precision, as clip_grad_norm_
            b_grads = list(torch._foreach_mul(b_grads, grad_scale.to(bucket[0].device)))
        avgs, sqs = _widened(b_avgs, b_masters), _widened(b_sqs, b_masters)
        _adam_foreach(b_masters, b_grads, avgs, sqs, b_steps, **hyper)
        _store(b_avgs + b_sqs, avgs + sqs)
        if low:
            torch._foreach_copy_(bucket, b_masters)


def _init_state(
    state: dict[str, Any], p: Tensor, moments: torch.dtype | None = None
) -> dict[str, Any]:
    """``p``'s state, created on its first step; a master exactly when ``p`` is low-precision,
    moments in ``moments`` (``None``: the weight's dtype). A state loaded from a run whose
    parameter or moments had another dtype is converted."""
    low = p.dtype in LOW_PRECISION
    if low and "master" not in state:
        state["master"] = p.detach().to(torch.float32, memory_format=torch.preserve_format)
    elif not low and "master" in state:  # the master is the more precise copy of the weight
        p.copy_(state.pop("master"))
    like = state.get("master", p)
    dtype = moments or like.dtype
    if "step" not in state:
        state["step"] = new_step()
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)
    for key in ("exp_avg", "exp_avg_sq"):
        if state[key].dtype != dtype:
            state[key] = state[key].to(dtype)
    return state


def _widened(tensors: list[Tensor], weights: list[Tensor]) -> list[Tensor]:
    """Gradients or moments in their (master) weights' dtype: widened copies of low-precision
    ones, the others themselves."""
    return [
        t if t.dtype == w.dtype else t.to(w.dtype) for t, w in zip(tensors, weights, strict=True)
    ]


def _store(narrow: list[Tensor], wide: list[Tensor]) -> None:
    """Write updated widened tensors (moments, masters) back, rounded, into their storage
    (bfloat16 moments, low-precision parameters); a tensor that was not widened is skipped."""
    for n, w in zip(narrow, wide, strict=True):
        if w is not n:
            n.copy_(w)


def _adam_loop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """The reference: one parameter at a time, torch.optim.Adam's single-tensor arithmetic."""
    for p, grad, exp_avg, exp_avg_sq, step_t in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, strict=True
    ):
        step_t += 1
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(p, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def _adam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """The same update on one ``(device, dtype)`` bucket, with multi-tensor kernels."""
    torch._foreach_add_(steps, 1.0)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [s.item() for s in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in step_values])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / (1 - beta1**t) for t in step_values])


def _adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    rounded: list[Tensor] | None = None,
    **hyper: Any,
) -> None:
    """The same update with one Triton launch per distinct step count (usually one);
    ``rounded`` (if given) are low-precision parameters that receive their updated masters
    ``params``, rounded, in the same pass."""
    torch._foreach_add_(steps, 1.0)
    by_step: dict[float, list[int]] = {}
    for i, s in enumerate(steps):
        by_step.setdefault(s.item(), []).append(i)
    beta1, beta2 = hyper["beta1"], hyper["beta2"]
    for step, idx in by_step.items():
        adam_multi_tensor_(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx],
            **hyper,
            rounded=None if rounded is None else [rounded[i] for i in idx],
            bias_correction1=1 - beta1**step,
            bias_correction2_sqrt=math.sqrt(1 - beta2**step),
        )
