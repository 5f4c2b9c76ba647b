"""Plumbing every lmforge optimizer shares: gathering grads, picking the foreach path, checks.

Each optimizer has two implementations of one update: a per-parameter loop kept as the
readable reference, and a multi-tensor path built from ``torch._foreach_*`` ops, which launches
one kernel per op for a whole list of tensors instead of one per parameter (the same split as
``torch.optim``'s ``foreach`` implementations). ``foreach=None`` picks the multi-tensor path
whenever every parameter of a group lives on one device type, CUDA or CPU. Foreach kernels
want one device and one dtype per list, so lists are bucketed by ``(device, dtype)`` first.

Step counters are per-parameter ``float32`` scalar tensors on the CPU, as in ``torch.optim``:
``Optimizer.load_state_dict`` leaves a ``"step"`` entry where it is (it casts every other float
state to the parameter's dtype), a float32 counts exactly to 2**24, and reading it with
``.item()`` never waits on a GPU. It also keeps our state dicts laid out like torch's.

**Master weights.** An optimizer whose ``master_weights`` is true (Adam and AdamW) also takes
bfloat16 or float16 parameters — the MoE experts' weights with ``moe.expert_dtype =
"bfloat16"`` — and keeps a float32 copy of each in its state (``"master"``): the update reads
the low-precision gradient, runs in float32 on the master and its float32 moments, and writes
the master rounded back into the parameter. The forward pass then reads the weight it computes
with, with no cast, and the gradient stays in the GEMM's dtype. The others (SGD, AdaGrad,
Muon) refuse such parameters rather than train them in low precision. ``load_state_dict``
keeps every floating-point state of a low-precision parameter in float32 (torch's would cast
the master and the moments to the parameter's dtype). Adam keeps a master exactly for its
low-precision parameters: a state loaded from a run whose parameter was float32 gets one from the
parameter at the next step, and a float32 parameter whose loaded state has a master takes the
master's value and drops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "LOW_PRECISION",
    "GroupOptimizer",
    "check_beta",
    "check_foreach",
    "check_non_negative",
    "check_positive",
    "gather_grads",
    "group_by_device_dtype",
    "new_step",
    "resolve_foreach",
    "run_closure",
]


LOW_PRECISION = (torch.bfloat16, torch.float16)
"""Parameter dtypes that need float32 master weights in the optimizer."""


class GroupOptimizer(Optimizer):
    """An ``Optimizer`` whose ``step`` walks the groups and hands each one's live grads on.

    Subclasses implement :meth:`_check_group` (raise ``ValueError`` on bad hyperparameters;
    it sees the group with the defaults filled in, before the group is added) and
    :meth:`_step_group` (update the parameters of one group that have gradients), and set
    ``master_weights`` if they keep float32 masters of low-precision parameters.
    """

    master_weights = False
    """Whether bfloat16/float16 parameters are updated through float32 masters."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate ``param_group`` (defaults filled in), then add it as ``Optimizer`` does.

        Raises:
            ValueError: a bad hyperparameter, or a low-precision parameter given to an
                optimizer without master weights.
        """
        params = param_group["params"]
        if not isinstance(params, (Tensor, set)):  # a generator must be read once; torch
            param_group = {**param_group, "params": list(params)}  # rejects sets itself
        self._check_group({**self.defaults, **param_group})
        listed = [param_group["params"]] if isinstance(params, Tensor) else param_group["params"]
        low = [
            p
            for p in listed
            if isinstance(p, Tensor) and p.dtype in LOW_PRECISION and p.requires_grad
        ]
        if low and not self.master_weights:
            raise ValueError(
                f"{type(self).__name__} does not keep float32 master weights, so it cannot "
                f"train {low[0].dtype} parameters (shape {tuple(low[0].shape)}) without "
                "losing their small updates; use AdamW or Adam, or keep the parameters in "
                'float32 (train.param_dtype = "float32"; for MoE experts '
                'moe.expert_dtype = "float32")'
            )
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict``, keeping low-precision parameters' states in float32.

        Torch casts every floating-point state to its parameter's dtype; for a bfloat16 or
        float16 parameter that would round its master weight and moments, so those are put
        back from ``state_dict`` in float32 (the ``step`` counters stay where torch puts them).
        """
        saved = state_dict["state"]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        super().load_state_dict(state_dict)
        for i, p in zip(ids, params, strict=False):  # torch checked the lengths
            if p.dtype not in LOW_PRECISION or i not in saved:
                continue
            for key, value in saved[i].items():
                if key != "step" and isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(p.device, torch.float32, copy=True)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimisation step over every group; parameters whose grad is ``None`` are skipped.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled).

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = gather_grads(group)
            if params:
                self._step_group(group, params, grads)
        return loss

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError


def resolve_foreach(foreach: bool | None, params: Sequence[Tensor]) -> bool:
    """Whether to take the multi-tensor path for ``params``.

    Args:
        foreach: the user's choice; ``None`` means "when possible".
        params: the parameters of one group that have gradients.

    Returns:
        ``foreach`` itself when it is a bool; otherwise ``True`` iff every parameter is on one
        device type and that type is CUDA or CPU.
    """
    if foreach is not None:
        return foreach
    device_types = {p.device.type for p in params}
    return len(device_types) == 1 and device_types <= {"cuda", "cpu"}


def group_by_device_dtype(
    params: Sequence[Tensor], *others: Sequence[Any]
) -> list[tuple[list[Tensor], list[list[Any]]]]:
    """Bucket ``params`` (and lists aligned with it) by the parameter's device and dtype.

    Args:
        params: the parameters; they decide the buckets.
        *others: lists aligned with ``params`` (grads, states, step counters); each is split
            with the same indices, whatever device its own entries are on.

    Returns:
        One ``(params, [other_1, other_2, ...])`` pair per bucket, in first-seen order.
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return [
        ([params[i] for i in idx], [[seq[i] for i in idx] for seq in others])
        for idx in buckets.values()
    ]


def gather_grads(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters of ``group`` that have a gradient, and those gradients.

    Raises:
        ValueError: if a gradient is sparse (none of our optimizers handles sparse updates).
    """
    params: list[Tensor] = []
    grads: list[Tensor] = []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise ValueError("sparse gradients are not supported; use dense embeddings")
        params.append(p)
        grads.append(p.grad)
    return params, grads


def new_step() -> Tensor:
    """A fresh per-parameter step counter (see the module docstring for why a CPU tensor)."""
    return torch.tensor(0.0, dtype=torch.float32)


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """Evaluate ``closure`` with autograd on (``step`` itself runs under ``no_grad``)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_foreach(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None``, ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"foreach must be None, True or False, got {value!r}")


def check_positive(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not _is_number(value) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    if not _is_number(value) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_beta(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in ``[0, 1)`` (a decay rate)."""
    if not _is_number(value) or not (0 <= value < 1):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
