"""Router invariants: k distinct experts per token, gates that sum to one where normalised,
selection on score + bias but gates from raw scores, expert-choice's exact capacity, hash
determinism, float32 router math under autocast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.model.moe import (
    ExpertChoiceRouter,
    HashRouter,
    MoEConfig,
    SigmoidRouter,
    TokenChoiceRouter,
    build_router,
    warn_if_noncausal,
)

D = 16


def inputs(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def router(cls, seed: int = 0, **moe):
    torch.manual_seed(seed)
    if cls is ExpertChoiceRouter:
        moe["router"] = "expert_choice"
    return cls(D, MoEConfig(**moe), init_std=0.5).double()


@given(
    n=st.integers(1, 40),
    n_experts=st.integers(1, 9),
    k=st.integers(1, 4),
    normalize=st.booleans(),
    scale=st.sampled_from([1.0, 2.5]),
    sigmoid=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_top_k_routers(n, n_experts, k, normalize, scale, sigmoid, seed) -> None:
    k = min(k, n_experts)
    cls = SigmoidRouter if sigmoid else TokenChoiceRouter
    r = router(
        cls, seed, n_routed_experts=n_experts, top_k=k, normalize_gates=normalize, route_scale=scale
    )
    out = r(inputs(n, seed))
    assert out.experts.shape == out.gates.shape == (n, k)
    assert all(len(set(row)) == k for row in out.experts.tolist())  # k distinct experts
    assert out.logits is not None and out.probs is not None
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(n, dtype=torch.float64))
    scores = torch.sigmoid(out.logits) if sigmoid else out.logits.softmax(-1)
    chosen = scores.gather(1, out.experts)
    rest = scores.scatter(1, out.experts, float("-inf"))
    assert (chosen.min(-1).values >= rest.max(-1).values).all()  # the top k, no bias here
    want = chosen / chosen.sum(-1, keepdim=True) if normalize else chosen
    torch.testing.assert_close(out.gates, want * scale)
    if normalize:
        torch.testing.assert_close(out.gates.sum(-1), torch.full((n,), scale, dtype=torch.float64))


def test_bias_steers_selection_not_gates() -> None:
    r = router(SigmoidRouter, n_routed_experts=6, top_k=2, bias_update_rate=0.01)
    x = inputs(50)
    plain = r(x)
    assert r.expert_bias is not None
    r.expert_bias[4] = 10.0  # expert 4 now wins every selection
    biased = r(x)
    assert (biased.experts == 4).any(-1).all() and not (plain.experts == 4).any(-1).all()
    scores = torch.sigmoid(biased.logits).gather(1, biased.experts)  # gates from raw scores
    torch.testing.assert_close(biased.gates, scores / scores.sum(-1, keepdim=True))
    torch.testing.assert_close(biased.probs, plain.probs)


@given(n=st.integers(1, 30), n_experts=st.integers(1, 6), cf=st.sampled_from([0.5, 1.0, 2.0]))
def test_expert_choice_takes_exactly_its_capacity(n, n_experts, cf) -> None:
    r = router(ExpertChoiceRouter, n_routed_experts=n_experts, top_k=1, capacity_factor=cf)
    out = r(inputs(n))
    capacity = r.moe.capacity(n)
    assert out.tokens.shape == out.gates.shape == (n_experts, capacity)
    for e, row in enumerate(out.tokens.tolist()):
        assert len(set(row)) == capacity  # distinct tokens, exactly C of them
        column = out.probs[:, e]
        taken = column[row]
        others = column[[t for t in range(n) if t not in row]]
        assert others.numel() == 0 or taken.min() >= others.max()  # its top-C tokens
        torch.testing.assert_close(out.gates[e], taken)


def test_expert_choice_capacity_formula() -> None:
    moe = MoEConfig(n_routed_experts=8, top_k=2, router="expert_choice", capacity_factor=1.5)
    assert moe.capacity(100) == 38  # ceil(1.5 · 100 · 2 / 8) = ceil(37.5)
    assert moe.capacity(2) == 1
    assert MoEConfig(n_routed_experts=2, router="expert_choice").capacity(5) == 5  # <= N


def test_expert_choice_is_non_causal_and_generation_warns() -> None:
    """Token 0's expert is decided by token 1, which comes after it."""
    r = router(ExpertChoiceRouter, n_routed_experts=2, top_k=1)  # C = 1: one token per expert
    x = inputs(2)
    toward = r.weight.detach()[0] - r.weight.detach()[1]
    first_experts = []
    for sign in (1.0, -1.0):  # token 1 strongly prefers expert 0, then expert 1
        x[1] = sign * 1000 * toward
        out = r(x)
        first_experts.append([e for e in range(2) if 0 in out.tokens[e].tolist()])
    assert first_experts == [[1], [0]]
    with pytest.warns(UserWarning, match="non-causal"):
        warn_if_noncausal(r.moe)


def test_hash_router_is_deterministic() -> None:
    moe = MoEConfig(n_routed_experts=8, top_k=3, router="hash", hash_seed=5)
    a, b = HashRouter(100, moe, None), HashRouter(100, moe, None)
    other = HashRouter(100, MoEConfig(n_routed_experts=8, top_k=3, router="hash"), None)
    assert torch.equal(a.table, b.table) and not torch.equal(a.table, other.table)
    ids = torch.tensor([3, 99, 3, 0])
    out = a(inputs(4), ids)
    assert torch.equal(out.experts, a.table[ids]) and torch.equal(out.experts[0], out.experts[2])
    assert all(len(set(row)) == 3 for row in a.table.tolist())
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(4, dtype=torch.float64))
    assert out.logits is None and out.probs is None and not list(a.parameters())
    with pytest.raises(ValueError, match="token ids"):
        a(inputs(4))


def test_router_math_is_float32_under_autocast() -> None:
    r = build_router(MoEConfig(n_routed_experts=4), D, 100, 0.5)
    x = inputs(8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(x)
    assert out.logits.dtype == torch.float32 and out.gates.dtype == torch.float32
    torch.testing.assert_close(out.logits, x @ r.weight.T)
