"""Sequence and token classification heads: shapes, loss against plain PyTorch, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testing import tiny_config, tokens

from lmforge.model import Encoder, SequenceClassifier, TokenClassifier, Transformer


def _encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(tiny_config(causal=False)).double().eval()


def _real(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def test_sequence_classifier_reads_the_cls_position() -> None:
    head = SequenceClassifier(_encoder(), 3)
    idx, real = tokens((4, 9)), _real([9, 5, 2, 7], 9)
    labels = torch.tensor([0, 2, 1, -100])
    out = head(idx, labels, attention_mask=real)
    assert out.logits is not None and out.logits.shape == (4, 3)
    hidden, _ = head.encoder.forward_hidden(idx, attention_mask=real)
    pooled = torch.tanh(hidden[:, 0] @ head.dense.weight.T)
    expected = pooled @ head.classifier.weight.T
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels))
    acc = (expected[:3].argmax(-1) == labels[:3]).double().mean()
    torch.testing.assert_close(out.metrics["accuracy"], acc)
    # each sequence classified as if alone
    for b, n in enumerate([9, 5, 2, 7]):
        torch.testing.assert_close(out.logits[b], head(idx[b : b + 1, :n]).logits[0])


def test_token_classifier_loss_skips_ignored_and_padded_positions() -> None:
    head = TokenClassifier(_encoder(1), 5)
    idx, real = tokens((3, 8), seed=2), _real([8, 6, 3], 8)
    labels = torch.randint(0, 5, (3, 8), generator=torch.Generator().manual_seed(3))
    labels[0, 1] = -100
    out = head(idx, labels, attention_mask=real)
    assert out.logits is not None and out.logits.shape == (3, 8, 5)
    hidden, _ = head.encoder.forward_hidden(idx, attention_mask=real)
    logits = hidden @ head.classifier.weight.T
    keep = real & (labels != -100)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], labels[keep]))
    acc = (logits[keep].argmax(-1) == labels[keep]).double().mean()
    torch.testing.assert_close(out.metrics["accuracy"], acc)


def test_heads_train_with_the_encoder() -> None:
    torch.manual_seed(0)
    head = TokenClassifier(Encoder(tiny_config(causal=False)), 3)
    idx = tokens((2, 6))
    out = head(idx, idx % 3)
    out.loss.backward()
    kinds = head.param_kinds()
    assert kinds["classifier.weight"] == "head"
    assert kinds["encoder.tok_embeddings.weight"] == "embedding"
    assert set(kinds) == {n for n, _ in head.named_parameters()}
    # everything but the encoder's unused MLM head gets a gradient
    grads = {n: p.grad is not None for n, p in head.named_parameters()}
    assert grads.pop("encoder.output.weight") is False and all(grads.values())
    seq = SequenceClassifier(head.encoder, 2)
    assert seq.param_kinds()["dense.weight"] == "matrix"


def test_head_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        TokenClassifier(_encoder(), 1)
    with pytest.raises(TypeError, match="needs an lmforge.model.Encoder"):
        SequenceClassifier(Transformer(tiny_config()), 2)  # type: ignore[arg-type]
    head = SequenceClassifier(_encoder(), 2)
    with pytest.raises(ValueError, match="targets"):
        head(tokens((2, 5)), torch.zeros(3, dtype=torch.long))
