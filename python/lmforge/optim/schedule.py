"""Learning-rate schedules: cosine with linear warm-up, and warmup-stable-decay (WSD).

Both are plain functions of the iteration, ``it -> lr``, so a trainer sets the rate each step
(:func:`lmforge.optim.set_lr`) and a resumed run lands on exactly the same value — no scheduler
object with its own state to save.

* :func:`cosine_lr` is the CS336 (assignment 1) definition: linear warm-up ``it / T_w · max``
  for ``it < T_w``, then ``min + ½ (1 + cos(π (it − T_w) / (T_c − T_w))) (max − min)`` for
  ``T_w ≤ it ≤ T_c``, then ``min`` — so ``it == T_w`` gives ``max`` and ``it == T_c`` gives
  ``min`` (Loshchilov & Hutter 2017's SGDR without restarts; GPT-3, Llama, Chinchilla).
* :func:`wsd_lr` is warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024, "Scaling
  Laws and Compute-Optimal Training Beyond Fixed Training Durations"): linear warm-up, a long
  constant phase at ``max``, then a short cool-down to ``min``. Any checkpoint of the stable
  phase can be cooled down into a finished model, so one run serves several budgets. The
  cool-down is ``1-sqrt`` by default, ``lr = min + (max − min)(1 − sqrt(p))`` with ``p`` the
  fraction of the decay done, which Hägele et al. found better than ``linear``
  (``lr = max − (max − min) p``, also offered).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

__all__ = ["DECAY_SHAPES", "constant_lr", "cosine_lr", "wsd_lr"]

DECAY_SHAPES = ("1-sqrt", "linear")
"""The cool-down shapes :func:`wsd_lr` knows."""


def cosine_lr(
    it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """Linear warm-up to ``max_lr``, cosine decay to ``min_lr`` at ``cosine_cycle_iters``.

    Args:
        it: the iteration (>= 0).
        max_lr: the peak rate, reached at ``it == warmup_iters``.
        min_lr: the final rate, from ``it == cosine_cycle_iters`` on.
        warmup_iters: length of the warm-up (0: none).
        cosine_cycle_iters: the iteration the cosine ends (>= ``warmup_iters``).

    Returns:
        The learning rate at ``it``.

    Raises:
        ValueError: if ``it`` or ``warmup_iters`` is negative, or the cosine ends before the
            warm-up does.
    """
    _check_iters(it=it, warmup_iters=warmup_iters)
    if cosine_cycle_iters < warmup_iters:
        raise ValueError(
            f"cosine_cycle_iters ({cosine_cycle_iters}) must be >= warmup_iters ({warmup_iters})"
        )
    if it < warmup_iters:
        return it / warmup_iters * max_lr
    if it > cosine_cycle_iters:
        return min_lr
    if cosine_cycle_iters == warmup_iters:  # no cosine phase: the peak, then min_lr after it
        return max_lr
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def wsd_lr(
    it: int,
    max_lr: float,
    min_lr: float,
    warmup_iters: int,
    stable_iters: int,
    decay_iters: int,
    *,
    shape: Literal["1-sqrt", "linear"] = "1-sqrt",
) -> float:
    """Warmup-stable-decay: warm up for ``warmup_iters``, hold ``max_lr`` for ``stable_iters``,
    then cool down to ``min_lr`` over ``decay_iters``; ``min_lr`` after.

    The phases are back to back: the decay starts at ``it == warmup_iters + stable_iters`` (rate
    ``max_lr``) and reaches ``min_lr`` at ``it == warmup_iters + stable_iters + decay_iters``.

    Args:
        it: the iteration (>= 0).
        max_lr: the rate of the stable phase.
        min_lr: the rate at the end of the decay and after.
        warmup_iters: length of the linear warm-up (>= 0).
        stable_iters: length of the constant phase (>= 0).
        decay_iters: length of the cool-down (>= 0).
        shape: ``"1-sqrt"`` (default) or ``"linear"`` cool-down.

    Returns:
        The learning rate at ``it``.

    Raises:
        ValueError: if an iteration count is negative or ``shape`` is unknown.
    """
    _check_iters(
        it=it, warmup_iters=warmup_iters, stable_iters=stable_iters, decay_iters=decay_iters
    )
    if shape not in DECAY_SHAPES:
        raise ValueError(f"shape must be one of {DECAY_SHAPES}, got {shape!r}")
    if it < warmup_iters:
        return it / warmup_iters * max_lr
    decay_start = warmup_iters + stable_iters
    if it < decay_start:
        return max_lr
    if it >= decay_start + decay_iters:
        return min_lr
    progress = (it - decay_start) / decay_iters
    if shape == "linear":
        return max_lr - (max_lr - min_lr) * progress
    return min_lr + (max_lr - min_lr) * (1 - math.sqrt(progress))


def constant_lr(it: int, max_lr: float, warmup_iters: int) -> float:
    """Linear warm-up to ``max_lr`` over ``warmup_iters``, then ``max_lr``.

    Raises:
        ValueError: if ``it`` or ``warmup_iters`` is negative.
    """
    _check_iters(it=it, warmup_iters=warmup_iters)
    return it / warmup_iters * max_lr if it < warmup_iters else max_lr


def _check_iters(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
