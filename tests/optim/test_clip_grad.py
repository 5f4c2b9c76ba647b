"""clip_grad_norm_ against torch.nn.utils.clip_grad_norm_, and its non-finite departure;
clip_coefficient handed to Adam(W).step against clipping first."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from optim_testing import clone_params, make_params

from lmforge.optim import Adam, AdamW, clip_coefficient, clip_grad_norm_


def _with_grads(scale: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> list:
    params = make_params(seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * scale
    params[1].grad = None  # a parameter without a gradient is skipped
    return params


def _twins(params: list) -> list:
    twins = clone_params(params)
    for p, q in zip(params, twins, strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return twins


@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above max_norm
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch(
    foreach: bool | None, norm_type: float, scale: float, dtype: torch.dtype
) -> None:
    ours = _with_grads(scale, dtype=dtype)
    theirs = _twins(ours)
    got = clip_grad_norm_(ours, 1.0, norm_type, foreach=foreach)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, foreach=foreach)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    for p, q in zip(ours, theirs, strict=True):
        if p.grad is None:
            assert q.grad is None
        else:
            torch.testing.assert_close(
                p.grad, q.grad, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0
            )


def test_returns_the_norm_before_clipping_and_clips_to_max_norm() -> None:
    params = _with_grads(10.0)
    grads = [p.grad.clone() for p in params if p.grad is not None]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    total = clip_grad_norm_(params, 0.5)
    torch.testing.assert_close(total, expected)
    after = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    )
    assert after == pytest.approx(0.5, rel=1e-5)  # 0.5 · total / (total + 1e-6)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_norm_is_returned_and_nothing_is_scaled(bad: float) -> None:
    params = _with_grads(10.0)
    params[0].grad[0, 0] = bad
    before = [p.grad.clone() for p in params if p.grad is not None]
    total = clip_grad_norm_(params, 1.0)
    assert not torch.isfinite(total)
    after = [p.grad for p in params if p.grad is not None]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


def test_edge_cases() -> None:
    assert torch.equal(clip_grad_norm_([], 1.0), torch.tensor(0.0))
    zero = torch.nn.Parameter(torch.ones(3))
    zero.grad = torch.zeros(3)
    assert clip_grad_norm_(zero, 1.0) == 0.0  # a single tensor; the 1e-6 keeps it finite
    assert torch.equal(zero.grad, torch.zeros(3))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm_(zero, -1.0)


@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-3, 1e2), seed=st.integers(0, 2**16))
def test_matches_torch_for_any_scale(scale: float, max_norm: float, seed: int) -> None:
    ours = _with_grads(scale, seed=seed)
    theirs = _twins(ours)
    got = clip_grad_norm_(ours, max_norm)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for p, q in zip(ours, theirs, strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)


def test_generator_params_are_read_once() -> None:
    params = _with_grads(10.0)
    twins = _twins(params)
    got = clip_grad_norm_((p for p in params), 1.0)
    torch.testing.assert_close(got, clip_grad_norm_(twins, 1.0), rtol=0, atol=0)
    for p, q in zip(params, twins, strict=True):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_clip_coefficient_is_the_factor_clip_grad_norm_scales_by(bad: float | None) -> None:
    params = _with_grads(10.0)
    if bad is not None:
        params[0].grad[0, 0] = bad
    before = [p.grad.clone() for p in params if p.grad is not None]
    total, coef = clip_coefficient(params, 0.5)
    for a, p in zip(before, [p for p in params if p.grad is not None], strict=True):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0, equal_nan=True)
    twins = _twins(params)
    want = clip_grad_norm_(twins, 0.5)
    torch.testing.assert_close(total, want, rtol=0, atol=0, equal_nan=True)
    for a, q in zip(before, [q for q in twins if q.grad is not None], strict=True):
        torch.testing.assert_close(a * coef, q.grad, rtol=0, atol=0, equal_nan=True)
    assert coef == 1.0 if bad else coef < 1.0
    assert clip_coefficient([], 1.0) == (torch.tensor(0.0), torch.tensor(1.0))


@pytest.mark.parametrize("cls", [AdamW, Adam])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_with_grad_scale_equals_clipping_first(
    cls, foreach: bool, max_norm: float, dtype: torch.dtype
) -> None:
    """``clip_coefficient`` + ``step(grad_scale=coef)`` is ``clip_grad_norm_`` + ``step()`` to the
    bit, over several steps, and leaves the gradients as they were."""
    ours = _with_grads(10.0, dtype=dtype)
    theirs = _twins(ours)
    opt_a = cls(ours, lr=1e-2, weight_decay=0.1, foreach=foreach)
    opt_b = cls(theirs, lr=1e-2, weight_decay=0.1, foreach=foreach)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        for p, q in zip(ours, theirs, strict=True):
            if p.grad is not None:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * 10
                q.grad = p.grad.clone()
        grads = [p.grad.clone() for p in ours if p.grad is not None]
        total, coef = clip_coefficient(ours, max_norm)
        opt_a.step(grad_scale=coef)
        torch.testing.assert_close(total, clip_grad_norm_(theirs, max_norm), rtol=0, atol=0)
        opt_b.step()
        for g, p in zip(grads, [p for p in ours if p.grad is not None], strict=True):
            assert torch.equal(g, p.grad)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
