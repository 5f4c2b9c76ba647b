"""Fine-tuning heads on an :class:`~lmforge.model.encoder.Encoder`: sequence(-pair)
classification from the ``[CLS]`` output and token classification (e.g. BIO tagging).

Both wrap an encoder (pre-trained with the MLM objective, or fresh) and return a
:class:`~lmforge.model.transformer.ModelOutput` with float32 logits, and with labels the
cross-entropy (``-100`` ignored, padded positions ignored) and ``metrics["accuracy"]``.

Design choices:

* **Sequence classification reads the first position**, which must hold ``[CLS]``
  (:meth:`lmforge.tokenizer.EncoderSpecials.wrap` puts it there): the final hidden state →
  ``tanh(dense(h))`` → ``Linear(num_labels)``, BERT's pooler followed by a classifier (Devlin
  et al. 2019, §3; RoBERTa's classification head has the same shape). A sentence pair is one
  input, ``[CLS] a [SEP] b [SEP]``, read by the same head.
* **Token classification is one linear map per position** (BERT §5.3, named entity
  recognition): labels on the first sub-token of each word and ``-100`` elsewhere come from
  :func:`lmforge.data.word_labels_to_tokens`.
* **No biases, no dropout**, like the rest of the model (:mod:`lmforge.model.layers`); the heads'
  weights are ``"matrix"`` (the pooler) and ``"head"`` (the classifiers) for the optimiser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lmforge.model.encoder import Encoder
from lmforge.model.functional import at_least_float32
from lmforge.model.layers import Linear
from lmforge.model.loss import loss_from_logits
from lmforge.model.transformer import ModelOutput, param_kinds

__all__ = ["SequenceClassifier", "TokenClassifier"]


def _check_num_labels(num_labels: int) -> None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")


def _check_encoder(encoder: object) -> Encoder:
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"a classification head needs an lmforge.model.Encoder, got {type(encoder).__name__}"
        )
    return encoder


def _factory(encoder: Encoder) -> dict[str, Any]:
    """The heads' weights live where the encoder's do, in its dtype."""
    weight = encoder.head_weight
    return {"device": weight.device, "dtype": weight.dtype}


def _classified(logits: Tensor, labels: Tensor | None) -> ModelOutput:
    if labels is None:
        return ModelOutput(logits=logits, loss=None)
    head = loss_from_logits(logits, labels, accuracy=True)
    return ModelOutput(logits=logits, loss=head.loss, losses={"ce": head.ce}, metrics=head.metrics)


class _EncoderHead(nn.Module):
    """What both heads share: the encoder, the parameter kinds and the optimizer-step hook."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = _check_encoder(encoder)
        self.config = encoder.config

    def param_kinds(self) -> dict[str, str]:
        """``{name: kind}`` of every parameter (see :meth:`Transformer.param_kinds`)."""
        return param_kinds(self)

    def after_optimizer_step(self) -> None:
        """The encoder's hook (the trainer and :func:`lmforge.train.finetune` call it)."""
        self.encoder.after_optimizer_step()

    def _hidden(self, idx: Tensor, attention_mask: Tensor | None) -> Tensor:
        self.encoder._check_inputs(idx, None, True, False)
        hidden, _ = self.encoder.forward_hidden(idx, attention_mask=attention_mask)
        return hidden


class SequenceClassifier(_EncoderHead):
    """Classify whole sequences (or sentence pairs) from the ``[CLS]`` position.

    Args:
        encoder: the encoder (its weights are trained too unless frozen by the caller).
        num_labels: number of classes (>= 2).

    Raises:
        ValueError: ``num_labels`` below 2.
        TypeError: ``encoder`` is not an :class:`Encoder`.
    """

    def __init__(self, encoder: Encoder, num_labels: int) -> None:
        _check_num_labels(num_labels)
        super().__init__(encoder)
        d, factory = encoder.config.d_model, _factory(encoder)
        self.num_labels = num_labels
        self.dense = Linear(d, d, **factory)
        self.classifier = Linear(d, num_labels, **factory)
        self.classifier.param_kind = "head"

    def forward(
        self, idx: Tensor, labels: Tensor | None = None, *, attention_mask: Tensor | None = None
    ) -> ModelOutput:
        """Class logits of each sequence and, with labels, the loss.

        Args:
            idx: int64 ``(batch, seq)`` token ids, ``[CLS]`` first.
            labels: int64 ``(batch,)`` class ids (``-100``: no loss for that sequence).
            attention_mask: boolean ``(batch, seq)``, True at real tokens.

        Returns:
            A :class:`ModelOutput` with float32 logits ``(batch, num_labels)``.
        """
        pooled = torch.tanh(self.dense(self._hidden(idx, attention_mask)[:, 0]))
        return _classified(at_least_float32(self.classifier(pooled)), labels)


class TokenClassifier(_EncoderHead):
    """Classify every token (BIO tags of named entities, parts of speech, ...).

    Args:
        encoder: the encoder.
        num_labels: number of tags (>= 2).

    Raises:
        ValueError: ``num_labels`` below 2.
        TypeError: ``encoder`` is not an :class:`Encoder`.
    """

    def __init__(self, encoder: Encoder, num_labels: int) -> None:
        _check_num_labels(num_labels)
        super().__init__(encoder)
        factory = _factory(encoder)
        self.num_labels = num_labels
        self.classifier = Linear(encoder.config.d_model, num_labels, **factory)
        self.classifier.param_kind = "head"

    def forward(
        self, idx: Tensor, labels: Tensor | None = None, *, attention_mask: Tensor | None = None
    ) -> ModelOutput:
        """Tag logits of each token and, with labels, the loss over the labelled tokens.

        Args:
            idx: int64 ``(batch, seq)`` token ids.
            labels: int64 ``(batch, seq)`` tag ids, ``-100`` where no loss is wanted (special
                tokens, continuation sub-tokens); padded positions are ignored anyway.
            attention_mask: boolean ``(batch, seq)``, True at real tokens.

        Returns:
            A :class:`ModelOutput` with float32 logits ``(batch, seq, num_labels)``.
        """
        logits = at_least_float32(self.classifier(self._hidden(idx, attention_mask)))
        if labels is not None and attention_mask is not None:
            labels = labels.masked_fill(~attention_mask, -100)
        return _classified(logits, labels)
