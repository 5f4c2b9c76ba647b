"""SGD with optional (Nesterov) momentum and coupled weight decay, as ``torch.optim.SGD``.

The update is torch's (itself Sutskever et al. 2013's momentum in the "PyTorch form"): the
weight decay is added to the gradient, ``g ← g + wd · p``; the momentum buffer starts as a copy
of the first gradient and then follows ``b ← μ b + (1 − dampening) g``; the step direction is
``b``, or ``g + μ b`` with Nesterov; ``p ← p − lr · direction``. Matching torch operation for
operation keeps the two equal to rounding, so it is a baseline the others can be checked against.
State per parameter: ``momentum_buffer`` (only when momentum is on), torch's name. No step
counter: nothing in the update depends on it.
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

__all__ = ["SGD"]


class SGD(GroupOptimizer):
    """Stochastic gradient descent with momentum, matching ``torch.optim.SGD``.

    Args:
        params: parameters or param-group dicts (each may override any hyperparameter).
        lr: learning rate (>= 0).
        momentum: momentum factor in ``[0, 1)``; 0 is plain SGD.
        dampening: scales the gradient entering the buffer by ``1 − dampening``.
        weight_decay: L2 penalty coefficient added to the gradient (>= 0).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        foreach: multi-tensor path; ``None`` uses it when a group is on one device type.

    Raises:
        ValueError: on an out-of-range hyperparameter or Nesterov without plain momentum.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        *,
        nesterov: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_non_negative("dampening", group["dampening"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_foreach(group["foreach"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0")

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self.state[p] for p in params]
        hyper = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")}
        if not resolve_foreach(group["foreach"], params):
            _sgd_loop(params, grads, states, **hyper)
            return
        for bucket, (b_grads, b_states) in group_by_device_dtype(params, grads, states):
            _sgd_foreach(bucket, b_grads, b_states, **hyper)


def _sgd_loop(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """The reference, one parameter at a time."""
    for p, grad, state in zip(params, grads, states, strict=True):
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        p.add_(grad, alpha=-lr)


def _sgd_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """The same update on one ``(device, dtype)`` bucket, with multi-tensor kernels."""
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum == 0:
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    bufs: list[Tensor | None] = [s.get("momentum_buffer") for s in states]
    old_bufs = [b for b in bufs if b is not None]
    if old_bufs:
        old_grads = [g for b, g in zip(bufs, grads, strict=True) if b is not None]
        torch._foreach_mul_(old_bufs, momentum)
        torch._foreach_add_(old_bufs, old_grads, alpha=1 - dampening)
    # A parameter's first step copies its gradient into the buffer, as torch does.
    full = [b if b is not None else g.detach().clone() for b, g in zip(bufs, grads, strict=True)]
    direction = torch._foreach_add(grads, full, alpha=momentum) if nesterov else full
    torch._foreach_add_(params, direction, alpha=-lr)
    for state, buf in zip(states, full, strict=True):
        state["momentum_buffer"] = buf
