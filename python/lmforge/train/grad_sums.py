"""Gradient accumulation in float32 for parameters stored in bf16 or fp16.

Autograd accumulates a parameter's gradient in the parameter's own dtype, so over ``grad_accum``
micro-batches the gradient of a bf16 weight (``train.param_dtype = "bfloat16"``, or the experts'
``moe.expert_dtype``) would be rounded to bf16 after every addition: ``n - 1`` roundings of a
growing partial sum, each losing up to 2^-9 of it. :class:`Float32GradSums` takes each
micro-batch's gradient out of ``.grad`` into a float32 sum instead, and puts the sum back,
rounded once, just before the last micro-batch's backward pass, which adds its own gradient to
it as a single-micro-batch step would (and in which DDP reduces the step's gradients). The
gradient the optimizer sees is then rounded twice, whatever ``grad_accum`` is.

The float32 sums cost 4 bytes per low-precision parameter for as long as the trainer runs
(counted by :func:`lmforge.accounting.estimate_training_memory` with ``grad_accum > 1``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from lmforge.optim._common import LOW_PRECISION

__all__ = ["Float32GradSums"]


class Float32GradSums:
    """Float32 sums of the micro-batches' gradients of the low-precision parameters.

    Args:
        params: the model's parameters; only trainable bf16/fp16 ones are summed.

    Per optimizer step of ``n`` micro-batches: :meth:`collect` after each of the first
    ``n - 1`` backward passes, :meth:`restore` before the last one.
    """

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad and p.dtype in LOW_PRECISION]
        self._sums: list[Tensor | None] = [None] * len(self.params)
        self._live = [False] * len(self.params)  # holds this step's micro-batches

    def __bool__(self) -> bool:
        return bool(self.params)

    def collect(self) -> None:
        """Add each parameter's ``.grad`` into its float32 sum and clear ``.grad``."""
        for k, p in enumerate(self.params):
            g, s = p.grad, self._sums[k]
            if g is None:
                continue
            if s is None:
                self._sums[k] = g.float()
            elif self._live[k]:
                s.add_(g)
            else:
                s.copy_(g)
            self._live[k] = True
            p.grad = None

    def restore(self) -> None:
        """Put the sums back into ``.grad``, rounded to each parameter's dtype, so that the next
        backward pass adds to them; a parameter without a gradient so far keeps none."""
        for k, p in enumerate(self.params):
            s = self._sums[k]
            if self._live[k] and s is not None:
                p.grad = s.to(p.dtype)
                self._live[k] = False
