"""Grouped dispatch against the plain loop over experts (float64, forward and gradients),
capacity dropping, and the grouped GEMM on the GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.model.moe import (
    ExpertRouting,
    TokenRouting,
    dispatch_expert_choice,
    dispatch_token_choice,
    expert_swiglu,
    grouped_mm_supported,
    reference_moe,
)


def weights(n_experts: int, d: int, f: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    """``[w13, w2]``: the gate and up weights stacked ``(E, 2f, d)``, the down weights."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(n_experts, 2 * f, d), (n_experts, d, f)]
    return [(torch.randn(s, generator=g, dtype=dtype) / d**0.5).requires_grad_() for s in shapes]


def split(w: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w1, w3, w2)`` for :func:`reference_moe`: views of the stacked weights."""
    w13, w2 = w
    f = w2.shape[-1]
    return w13[:, :f], w13[:, f:], w2


def token_routing(n: int, n_experts: int, k: int, seed: int, skew: float) -> TokenRouting:
    """k distinct experts per token, drawn with probability ∝ exp(-skew · e): skew > 0 piles
    tokens onto the first experts (so some overflow and some stay empty)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.exp(-skew * torch.arange(n_experts, dtype=torch.float64))
    experts = torch.multinomial(weight.expand(n, -1), k, replacement=False, generator=g)
    gates = torch.rand(n, k, generator=g, dtype=torch.float64).requires_grad_()
    return TokenRouting(experts, gates, None, None)


def grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of a fixed random projection of ``out`` (float64)."""
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return torch.autograd.grad((out * probe).sum(), inputs)


@given(
    n=st.integers(1, 24),
    n_experts=st.integers(1, 6),
    k=st.integers(1, 3),
    capacity=st.one_of(st.none(), st.integers(1, 8)),
    skew=st.sampled_from([0.0, 1.5]),
    seed=st.integers(0, 2**16),
)
def test_token_choice_equals_expert_loop(n, n_experts, k, capacity, skew, seed) -> None:
    k = min(k, n_experts)
    d, f = 8, 12
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x.requires_grad_()
    w = weights(n_experts, d, f, seed + 1)
    routing = token_routing(n, n_experts, k, seed + 2, skew)
    y, dropped = dispatch_token_choice(x, routing, *w, capacity=capacity, impl="padded")
    ref = reference_moe(x, *routing.assignments(), *split(w), capacity=capacity)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    inputs = [x, routing.gates, *w]
    for got, want in zip(grads(y, inputs), grads(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    counts = torch.bincount(routing.experts.flatten(), minlength=n_experts)
    over = 0 if capacity is None else (counts - capacity).clamp_min(0).sum().item()
    assert dropped.item() == pytest.approx(over / (n * k))


@given(
    n=st.integers(1, 20),
    n_experts=st.integers(1, 5),
    capacity=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_expert_choice_equals_expert_loop(n, n_experts, capacity, seed) -> None:
    capacity = min(capacity, n)
    d, f = 8, 12
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    w = weights(n_experts, d, f, seed + 1)
    tokens = torch.stack([torch.randperm(n, generator=g)[:capacity] for _ in range(n_experts)])
    gates = torch.rand(n_experts, capacity, generator=g, dtype=torch.float64).requires_grad_()
    probs = torch.zeros(n, n_experts, dtype=torch.float64)
    routing = ExpertRouting(tokens, gates, probs, probs)
    y, dropped = dispatch_expert_choice(x, routing, *w)
    ref = reference_moe(x, *routing.assignments(), *split(w))
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    inputs = [x, gates, *w]
    for got, want in zip(grads(y, inputs), grads(ref, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    untouched = n - len(set(tokens.flatten().tolist()))
    assert dropped.item() == pytest.approx(untouched / n)


def test_dropless_equals_infinite_capacity() -> None:
    n, n_experts, k = 32, 4, 2
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = weights(n_experts, 8, 12, 1)
    routing = token_routing(n, n_experts, k, 2, skew=2.0)
    dropless, none_dropped = dispatch_token_choice(x, routing, *w)
    capped, zero = dispatch_token_choice(x, routing, *w, capacity=n)  # never reached
    torch.testing.assert_close(dropless, capped, rtol=1e-12, atol=1e-12)
    assert none_dropped.item() == zero.item() == 0.0


def test_capacity_drops_later_choices_first_and_reports_the_fraction() -> None:
    # 4 tokens, 2 experts, top-2: every token picks both experts, first choices alternate.
    experts = torch.tensor([[0, 1], [1, 0], [0, 1], [0, 1]])
    gates = torch.full((4, 2), 0.5, dtype=torch.float64)
    routing = TokenRouting(experts, gates, None, None)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = weights(2, 8, 12, 4)
    y, dropped = dispatch_token_choice(x, routing, *w, capacity=2)
    # expert 0's queue: first choices of tokens 0, 2, 3, then the second choice of token 1;
    # expert 1's: the first choice of token 1, then second choices of tokens 0, 2, 3
    kept = {(0, 0), (2, 0), (1, 1), (0, 1)}  # (token, expert)
    assert dropped.item() == pytest.approx(4 / 8)
    w1, w3, w2 = split(w)
    for t in range(4):
        want = torch.zeros(8, dtype=torch.float64)
        for e in range(2):
            if (t, e) in kept:
                h = torch.nn.functional.silu(x[t] @ w1[e].T) * (x[t] @ w3[e].T)
                want += 0.5 * (h @ w2[e].T)
        torch.testing.assert_close(y[t], want.detach(), rtol=1e-12, atol=1e-12)
    assert torch.equal(y[3], torch.zeros(8, dtype=torch.float64))  # fully dropped: residual only


def test_every_expert_weight_gets_a_gradient() -> None:
    """An expert with no token still gets a (zero) gradient: DDP needs no unused-parameter scan."""
    x = torch.randn(6, 8, dtype=torch.float64)
    w = weights(3, 8, 12, 0)
    routing = TokenRouting(torch.zeros(6, 1, dtype=torch.int64), torch.ones(6, 1), None, None)
    y, _ = dispatch_token_choice(x, routing, *w)
    y.sum().backward()
    for p in w:
        assert p.grad is not None and torch.equal(p.grad[1:], torch.zeros_like(p.grad[1:]))
        assert p.grad[0].abs().sum() > 0


def test_impl_is_validated_and_grouped_mm_is_cuda_only() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = weights(2, 8, 16, 0, dtype=torch.bfloat16)
    assert not grouped_mm_supported(x, w[0])
    with pytest.raises(ValueError, match="impl must be one of"):
        expert_swiglu(x, torch.tensor([2, 2]), *w, impl="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_grouped_mm_matches_the_reference_on_cuda(skew: float) -> None:
    """bf16 grouped GEMM (forward and gradients) against the float64 loop, with empty experts."""
    n, n_experts, k, d, f = 512, 8, 2, 64, 96
    x64 = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w64 = weights(n_experts, d, f, 1)
    routing = token_routing(n, n_experts, k, 2, skew)
    ref = reference_moe(x64.requires_grad_(), *routing.assignments(), *split(w64))
    ref_grads = grads(ref, [x64, *w64])
    dev = torch.device("cuda")
    x = x64.detach().to(dev, torch.bfloat16).requires_grad_()
    w = [p.detach().to(dev, torch.bfloat16).requires_grad_() for p in w64]
    assert grouped_mm_supported(x, w[0]), "needs an sm90+ GPU and torch._grouped_mm"
    on_dev = TokenRouting(routing.experts.to(dev), routing.gates.detach().to(dev), None, None)
    probe = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for impl in ("grouped_mm", "padded"):
        y, _ = dispatch_token_choice(x, on_dev, *w, impl=impl)
        torch.testing.assert_close(y.double().cpu(), ref.detach(), rtol=3e-2, atol=3e-2)
        got = torch.autograd.grad((y * probe.to(dev, y.dtype)).sum(), [x, *w])
        for a, b in zip(got, ref_grads, strict=True):
            err = (a.double().cpu() - b).abs().max().item()
            assert err <= 3e-2 * b.abs().max().item() + 1e-3, (impl, err)
