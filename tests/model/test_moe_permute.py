"""The sort maps and the gather / combine functions of ``lmforge.model.moe.permute``: both
formulations (eager batched matmuls, and the gather-and-sum the compiler fuses) against plain
indexing in float64, gradients by ``torch.autograd.gradcheck``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.model.moe import permute
from lmforge.model.moe.permute import combine_rows, gather_rows, sort_maps


def maps(n: int, n_experts: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    experts = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(n)])
    order = torch.argsort(experts.t().reshape(-1), stable=True)
    return (order, *sort_maps(order, n, k))


@pytest.fixture(params=[False, True], ids=["eager", "fused"])
def fused(request, monkeypatch) -> bool:
    monkeypatch.setattr(permute, "_fused", lambda: request.param)
    return request.param


@given(n=st.integers(1, 9), n_experts=st.integers(1, 5), k=st.integers(1, 3), seed=st.integers())
@settings(max_examples=30)
def test_sort_maps_are_inverse(n: int, n_experts: int, k: int, seed: int) -> None:
    k = min(k, n_experts)
    order, token_of_row, rows_of_token = maps(n, n_experts, k, seed % 2**31)
    assert torch.equal(token_of_row, order % n)
    for t in range(n):
        for j in range(k):
            r = int(rows_of_token[t, j])
            assert int(order[r]) == j * n + t and int(token_of_row[r]) == t


@pytest.mark.parametrize("n,n_experts,k", [(1, 1, 1), (7, 4, 2), (12, 8, 3)])
def test_gather_and_combine_equal_indexing(fused: bool, n: int, n_experts: int, k: int) -> None:
    _, token_of_row, rows_of_token = maps(n, n_experts, k, n + k)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, dtype=torch.float64, generator=g)
    hs = torch.randn(n * k, 5, dtype=torch.float64, generator=g)
    gates = torch.rand(n, k, dtype=torch.float64, generator=g)
    assert torch.equal(gather_rows(x, token_of_row, rows_of_token), x[token_of_row])
    expected = torch.zeros(n, 5, dtype=torch.float64)
    for t in range(n):
        for j in range(k):
            expected[t] += gates[t, j] * hs[rows_of_token[t, j]]
    got = combine_rows(hs, gates, token_of_row, rows_of_token)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,n_experts,k", [(3, 2, 1), (6, 4, 2), (5, 8, 3)])
def test_gradcheck(fused: bool, n: int, n_experts: int, k: int) -> None:
    _, token_of_row, rows_of_token = maps(n, n_experts, k, 11 * n + k)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, dtype=torch.float64, generator=g, requires_grad=True)
    hs = torch.randn(n * k, 4, dtype=torch.float64, generator=g, requires_grad=True)
    gates = torch.rand(n, k, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gather_rows(a, token_of_row, rows_of_token), (x,))
    assert torch.autograd.gradcheck(
        lambda h, w: combine_rows(h, w, token_of_row, rows_of_token), (hs, gates)
    )


def test_bf16_rows_sum_in_float32(fused: bool) -> None:
    """256 + 7 × 1 = 263 rounds to 264 in bf16; a running bf16 sum would stay at 256."""
    n, k = 1, 8
    _, token_of_row, rows_of_token = maps(n, 8, k, 0)
    hs = torch.ones((k, 1), dtype=torch.bfloat16)
    hs[rows_of_token[0, 0]] = 256.0
    gates = torch.ones(n, k)
    y = combine_rows(hs, gates, token_of_row, rows_of_token)
    assert y.dtype == torch.bfloat16
    assert float(y) == 264.0
