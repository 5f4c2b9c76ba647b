"""A small fine-tuning loop: AdamW on a model's trainable parameters over random token windows.

Meant for LoRA (:func:`lmforge.model.lora.apply_lora` freezes the base model first), where a
run is a few hundred steps on one token file and the full :class:`~lmforge.train.Trainer`
(run directories, checkpoints, schedules, mixtures) would be more than the job needs.

Design choices:

* **Only trainable parameters reach the optimizer**: frozen weights get no AdamW moments, which
  is where LoRA's memory saving comes from (Hu et al. 2021, §4.2). Weight decay is 0 by default:
  decaying ``A`` and ``B`` toward 0 pulls the model back toward the base model, which is rarely
  what a short fine-tune wants.
* **Seeded**: windows come from :func:`lmforge.data.get_batch` with
  ``numpy.random.default_rng(seed)`` and adapter dropout from ``torch.manual_seed(seed)``, so two
  runs with one seed give the same losses on the CPU.
* **Constant learning rate, gradient clipping at 1.0** (the trainer's default): a few hundred
  steps leave little room for a schedule to matter.
* The loss is computed without materialising the logits (``return_logits=False``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lmforge.data import get_batch
from lmforge.data.batches import TokenArray
from lmforge.optim import AdamW, clip_grad_norm_

__all__ = ["finetune"]

logger = logging.getLogger(__name__)


def _check_args(steps: int, batch_size: int, lr: float, context_length: int) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")


def finetune(
    model: nn.Module,
    tokens: TokenArray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    context_length: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    progress: bool = False,
) -> list[float]:
    """Train ``model``'s trainable parameters for ``steps`` steps and return the losses.

    Args:
        model: a language model called as ``model(x, y, return_logits=False)`` returning an
            object with ``.loss`` (a :class:`~lmforge.model.Transformer`), already on ``device``.
        tokens: 1-D token ids (``TokenFile.tokens``, a numpy array or a CPU tensor).
        steps: optimizer steps.
        batch_size: windows per step.
        lr: AdamW's learning rate (constant).
        context_length: tokens per window (default: ``model.config.context_length``).
        device: where the batches go.
        seed: seeds the window draws and dropout.
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        progress: show a tqdm bar.

    Returns:
        The training loss of every step, as floats.

    Raises:
        ValueError: no trainable parameters (call ``apply_lora`` first), a bad argument, or
            tokens that do not hold one window (from :func:`get_batch`).
        FloatingPointError: the loss became NaN or infinite.
    """
    if context_length is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("the model has no .config: pass context_length")
        context_length = int(config.context_length)
    _check_args(steps, batch_size, lr, context_length)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: call apply_lora(model) first")
    optimizer = AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    losses: list[float] = []
    hook = getattr(model, "after_optimizer_step", None)
    for step in tqdm(range(steps), disable=not progress, desc="finetune"):
        x, y = get_batch(tokens, batch_size, context_length, device, generator=rng)
        loss = model(x, y, return_logits=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if callable(hook):
            hook()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss became {losses[-1]} at step {step}: lower lr")
        if step % 50 == 0 or step == steps - 1:
            logger.debug("finetune step %d loss %.4f", step, losses[-1])
    model.eval()
    return losses
