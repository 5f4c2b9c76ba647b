"""softmax, cross_entropy, reference attention, softcap against torch and float64 math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lmforge.model.functional import cross_entropy, scaled_dot_product_attention, softcap, softmax


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim: int) -> None:
    x = torch.randn(5, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim))


def test_softmax_is_stable_for_huge_inputs() -> None:
    x = torch.randn(4, 50) * 1000
    y = softmax(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.softmax(x.double(), -1).float())
    torch.testing.assert_close(softmax(x + 1e4), y)  # shift invariance


@given(
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1000.0]),
    rows=st.integers(1, 6),
    vocab=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_matches_torch(scale: float, rows: int, vocab: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, 3, vocab, generator=gen, dtype=torch.float64) * scale
    targets = torch.randint(0, vocab, (rows, 3), generator=gen)
    targets[0, 0] = -100
    ours = cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)


def test_cross_entropy_float32_huge_logits_finite() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 100) * 1000
    targets = torch.randint(0, 100, (8,))
    ours = cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))


def test_cross_entropy_gradient_and_all_ignored() -> None:
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 2, -100, 8])
    cross_entropy(logits, targets).backward()
    ref = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref, targets).backward()
    torch.testing.assert_close(logits.grad, ref.grad)
    assert cross_entropy(logits, torch.full((4,), -100)) == 0
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(logits, targets[:3])


@pytest.mark.parametrize("kind", ["none", "causal", "random"])
def test_reference_attention_matches_sdpa(kind: str) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, dtype=torch.float64) for _ in range(3))
    mask = None
    if kind == "causal":
        mask = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    elif kind == "random":
        mask = (torch.rand(2, 1, 6, 6) < 0.5) | torch.eye(6, dtype=torch.bool)
    ours = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref)
    if kind == "causal":
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(ours, causal)


def test_reference_attention_rejects_float_mask() -> None:
    q = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, q, q, torch.zeros(2, 2))


def test_softcap_bounds_and_is_near_identity_for_small_values() -> None:
    x = torch.tensor([-1e6, -100.0, -0.01, 0.0, 0.01, 100.0, 1e6], dtype=torch.float64)
    y = softcap(x, 30.0)
    assert (y.abs() <= 30.0).all() and (y[1:-1].abs() < 30.0).all()
    torch.testing.assert_close(y[2:5], x[2:5], rtol=1e-6, atol=0)
    assert torch.equal(torch.sign(y), torch.sign(x))
