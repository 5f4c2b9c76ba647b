"""The masked-LM objective in the trainer: masked batches and their evaluation.

With ``train.objective = "mlm"`` the trainer builds an :class:`~lmforge.model.Encoder` and
feeds it the sampler's windows masked by :mod:`lmforge.data.mlm`, with ``[CLS]`` and
``[MASK]`` taken from the run's tokenizer and every special token of it kept out of the targets.

Design choices:

* **Training masks are keyed on** ``(train.seed, step, window)``, so a resumed run and a run on
  another number of ranks see the same masks (see :mod:`lmforge.data.mlm`).
* **Evaluation masks are fixed**: the validation windows (:mod:`lmforge.data.validation`) are
  masked with seed 0, whatever the run's seed, so every evaluation of every run scores the
  same targets. The loss is the mean cross-entropy over those targets, ``accuracy`` the share
  predicted exactly; perplexity is ``exp(loss)`` of that masked-token loss, which does not
  compare with a causal model's, and bits per byte is not reported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data import MLMMasking, mlm_batch, mlm_windows, validation_batches
from lmforge.data.batches import TokenArray
from lmforge.model import Encoder
from lmforge.tokenizer import EncoderSpecials, Tokenizer
from lmforge.train.evaluate import EvalResult

__all__ = ["MLMObjective"]

_EVAL_SEED = 0


@dataclass(frozen=True)
class MLMObjective:
    """The masking of one run and the ``[CLS]`` id its windows start with.

    Attributes:
        masking: what to mask and how (:class:`~lmforge.data.MLMMasking`).
        cls_id: the ``[CLS]`` id.
        seed: the run's seed (training masks).
    """

    masking: MLMMasking
    cls_id: int
    seed: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, probability: float, seed: int) -> MLMObjective:
        """The objective for a run whose tokenizer is ``tokenizer``.

        Raises:
            ValueError: the tokenizer has no ``[CLS]``/``[SEP]``/``[MASK]``/``[PAD]``.
        """
        specials = EncoderSpecials.of(tokenizer)
        masking = MLMMasking(
            mask_id=specials.mask_id,
            special_ids=tuple(sorted(tokenizer.special_tokens.values())),
            n_vocab=tokenizer.n_vocab,
            probability=probability,
        )
        return cls(masking=masking, cls_id=specials.cls_id, seed=seed)

    def batch(
        self,
        token_arrays: Sequence[TokenArray],
        sources: np.ndarray,
        starts: np.ndarray,
        context_length: int,
        device: torch.device,
        *,
        step: int,
        first_row: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked inputs and labels of one micro-batch of step ``step``."""
        return mlm_batch(
            token_arrays,
            sources,
            starts,
            context_length,
            device,
            self.masking,
            cls_id=self.cls_id,
            seed=self.seed,
            step=step,
            first_row=first_row,
        )

    @torch.no_grad()
    def evaluate(
        self,
        model: Encoder,
        tokens: TokenArray,
        *,
        batch_size: int,
        context_length: int,
        device: torch.device | str,
        max_batches: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> EvalResult:
        """Masked-token loss and accuracy on the fixed validation windows of ``tokens``.

        Raises:
            ValueError: too few tokens for one window.
        """
        device = torch.device(device)
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = 0
        autocast = (
            torch.autocast(device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        batches = validation_batches(
            tokens, batch_size, context_length, "cpu", max_batches=max_batches
        )
        try:
            for b, (x, _) in enumerate(batches):
                inputs, labels = mlm_windows(
                    x.numpy(),
                    self.masking,
                    cls_id=self.cls_id,
                    context_length=context_length,
                    seed=_EVAL_SEED,
                    step=b,
                )
                targets = torch.from_numpy(labels).to(device)
                with autocast:
                    hidden, _ = model.forward_hidden(torch.from_numpy(inputs).to(device))
                    logits = model.logits(hidden[targets >= 0])
                picked = targets[targets >= 0]
                loss_sum += F.cross_entropy(logits.float(), picked, reduction="sum").double()
                correct += (logits.argmax(-1) == picked).sum()
                count += int(picked.numel())
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("the validation windows hold no token to mask: use more data")
        loss = loss_sum.item() / count
        return EvalResult(
            loss=loss,
            perplexity=math.exp(min(loss, 700.0)),
            bits_per_byte=None,
            tokens=count,
            accuracy=correct.item() / count,
        )
