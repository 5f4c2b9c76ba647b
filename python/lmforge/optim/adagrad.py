"""AdaGrad: per-coordinate step sizes from the running sum of squared gradients.

AdaGrad (Duchi, Hazan & Singer 2011) divides each coordinate's step by the square root of the
sum of all its past squared gradients, so rarely-updated coordinates keep large steps. The sum
only grows, so the effective learning rate only shrinks — the weakness RMSProp and Adam fix
with a moving average, and why AdaGrad is here as a baseline (CS336 assignment 1) rather than
for pretraining. The update follows ``torch.optim.Adagrad`` operation for operation: coupled L2
weight decay ``g ← g + wd · p``; ``clr = lr / (1 + (t − 1) · lr_decay)``; ``sum ← sum + g²``;
``p ← p − clr · g / (sqrt(sum) + eps)``. State per parameter: ``step`` (a CPU float32 tensor)
and ``sum``, torch's names; it is created on a parameter's first step rather than at
construction (torch creates it eagerly), which only matters for parameters that never get a
gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lmforge.optim._common import (
    GroupOptimizer,
    check_foreach,
    check_non_negative,
    check_positive,
    group_by_device_dtype,
    new_step,
    resolve_foreach,
)

__all__ = ["AdaGrad"]


class AdaGrad(GroupOptimizer):
    """AdaGrad, matching ``torch.optim.Adagrad``.

    Args:
        params: parameters or param-group dicts (each may override any hyperparameter).
        lr: learning rate (>= 0).
        lr_decay: the step-``t`` rate is ``lr / (1 + (t − 1) · lr_decay)`` (>= 0).
        weight_decay: L2 penalty coefficient added to the gradient (>= 0).
        initial_accumulator_value: starting value of the squared-gradient sum (>= 0).
        eps: added to the denominator for numerical stability (> 0).
        foreach: multi-tensor path; ``None`` uses it when a group is on one device type.

    Raises:
        ValueError: on an out-of-range hyperparameter (in the defaults or in any group).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value"):
            check_non_negative(name, group[name])
        check_positive("eps", group["eps"])
        check_foreach(group["foreach"])

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._init_state(self.state[p], p, group) for p in params]
        sums = [s["sum"] for s in states]
        steps = [s["step"] for s in states]
        hyper = {k: group[k] for k in ("lr", "lr_decay", "weight_decay", "eps")}
        if not resolve_foreach(group["foreach"], params):
            _adagrad_loop(params, grads, sums, steps, **hyper)
            return
        for bucket, (b_grads, b_sums, b_steps) in group_by_device_dtype(params, grads, sums, steps):
            _adagrad_foreach(bucket, b_grads, b_sums, b_steps, **hyper)

    @staticmethod
    def _init_state(state: dict[str, Any], p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if not state:
            state["step"] = new_step()
            init = group["initial_accumulator_value"]
            state["sum"] = torch.full_like(p, init, memory_format=torch.preserve_format)
        return state


def _adagrad_loop(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
) -> None:
    """The reference, one parameter at a time."""
    for p, grad, state_sum, step_t in zip(params, grads, sums, steps, strict=True):
        step_t += 1
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        clr = lr / (1 + (step_t.item() - 1) * lr_decay)
        state_sum.addcmul_(grad, grad, value=1)
        std = state_sum.sqrt().add_(eps)
        p.addcdiv_(grad, std, value=-clr)


def _adagrad_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
) -> None:
    """The same update on one ``(device, dtype)`` bucket, with multi-tensor kernels."""
    torch._foreach_add_(steps, 1.0)
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    torch._foreach_addcmul_(sums, grads, grads, 1)
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, eps)
    neg_clr = [-lr / (1 + (s.item() - 1) * lr_decay) for s in steps]
    torch._foreach_addcdiv_(params, grads, std, neg_clr)
