"""Low-precision parameters: Adam(W) keeps float32 master weights, the rest refuse them."""

from __future__ import annotations

import pytest
import torch
from optim_testing import make_params, roundtrip
from torch import nn

from lmforge.optim import SGD, AdaGrad, Adam, AdamW, Muon, clip_coefficient

LOW = [torch.bfloat16, torch.float16]


def _pair(dtype: torch.dtype) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The same starting weights as low-precision parameters and as float32 ones."""
    low = [nn.Parameter(p.detach().to(dtype)) for p in make_params(dtype=torch.float32)]
    return low, [nn.Parameter(p.detach().float()) for p in low]


def _grads(params: list[nn.Parameter], gen: torch.Generator, dtype: torch.dtype) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("cls", [AdamW, Adam])
def test_masters_follow_the_float32_update(cls, foreach: bool, dtype: torch.dtype) -> None:
    """A low-precision parameter's master moves exactly as a float32 parameter fed the same
    (low-precision) gradients, clipping's factor included, and the parameter is the master
    rounded."""
    low, ref = _pair(dtype)
    opt = cls(low, lr=1e-2, weight_decay=0.1, foreach=foreach)
    ref_opt = cls(ref, lr=1e-2, weight_decay=0.1, foreach=foreach)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        _grads(low, gen, dtype)
        for p, q in zip(low, ref, strict=True):
            q.grad = p.grad.float()
        _, coef = clip_coefficient(low, 1.0)
        opt.step(grad_scale=coef)
        ref_opt.step(grad_scale=coef)
    for p, q in zip(low, ref, strict=True):
        state = opt.state[p]
        assert state["master"].dtype == state["exp_avg"].dtype == torch.float32
        assert torch.equal(state["master"], q.detach())
        assert torch.equal(p.detach(), q.detach().to(dtype))
        assert p.dtype == dtype and p.grad.dtype == dtype


def test_masters_keep_updates_that_bfloat16_would_lose() -> None:
    """Steps far below a bfloat16 ulp accumulate in the master until they show."""
    p = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = AdamW([p], lr=1e-4, weight_decay=0.0)
    for _ in range(100):
        p.grad = torch.full_like(p, -1.0)
        opt.step()
    torch.testing.assert_close(opt.state[p]["master"], torch.full((4,), 1.01), rtol=1e-5, atol=0)
    assert (p.detach() > 1).all()  # bfloat16 steps of 1e-4 from 1.0 would all round away


@pytest.mark.parametrize("dtype", LOW)
def test_state_dict_keeps_masters_in_float32_and_resumes_exactly(dtype: torch.dtype) -> None:
    low, _ = _pair(dtype)
    opt = AdamW(low, lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        _grads(low, gen, dtype)
        opt.step()
    saved = roundtrip(opt.state_dict())
    copies = [nn.Parameter(p.detach().clone()) for p in low]
    resumed = AdamW(copies, lr=1e-2)
    resumed.load_state_dict(saved)
    for p, q in zip(low, copies, strict=True):
        for key in ("master", "exp_avg", "exp_avg_sq"):
            assert resumed.state[q][key].dtype == torch.float32
            assert torch.equal(resumed.state[q][key], opt.state[p][key])
    for _ in range(5):
        _grads(low, gen, dtype)
        for p, q in zip(low, copies, strict=True):
            q.grad = p.grad.clone()
        opt.step()
        resumed.step()
    for p, q in zip(low, copies, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["master"], resumed.state[q]["master"])


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SGD(ps, lr=0.1),
        lambda ps: AdaGrad(ps, lr=0.1),
        lambda ps: Muon([{"params": ps, "use_muon": True}], lr=0.02),
    ],
    ids=["sgd", "adagrad", "muon"],
)
def test_optimizers_without_masters_refuse_low_precision_params(make) -> None:
    params = [nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match=r"master weights.*AdamW or Adam.*expert_dtype"):
        make(params)


@pytest.mark.parametrize("foreach", [True, False])
def test_bf16_state_into_float32_params_continues_from_the_masters(foreach: bool) -> None:
    low, _ = _pair(torch.bfloat16)
    opt = AdamW(low, lr=1e-2, foreach=foreach)
    gen = torch.Generator().manual_seed(3)
    _grads(low, gen, torch.bfloat16)
    opt.step()
    wide = [nn.Parameter(p.detach().float()) for p in low]  # as a model state would load
    resumed = AdamW(wide, lr=1e-2, foreach=foreach)
    resumed.load_state_dict(roundtrip(opt.state_dict()))
    _grads(low, gen, torch.bfloat16)
    for p, q in zip(low, wide, strict=True):
        q.grad = p.grad.float()
    opt.step()
    resumed.step()
    for p, q in zip(low, wide, strict=True):
        assert "master" not in resumed.state[q]
        assert torch.equal(q.detach(), opt.state[p]["master"])


@pytest.mark.parametrize("foreach", [True, False])
def test_float32_state_into_bf16_params_makes_masters(foreach: bool) -> None:
    _, wide = _pair(torch.bfloat16)
    opt = AdamW(wide, lr=1e-2, foreach=foreach)
    gen = torch.Generator().manual_seed(3)
    _grads(wide, gen, torch.float32)
    opt.step()
    low = [nn.Parameter(p.detach().to(torch.bfloat16)) for p in wide]
    resumed = AdamW(low, lr=1e-2, foreach=foreach)
    resumed.load_state_dict(roundtrip(opt.state_dict()))
    before = [p.detach().clone() for p in low]
    _grads(low, gen, torch.bfloat16)
    resumed.step()
    for p, b in zip(low, before, strict=True):
        state = resumed.state[p]
        assert state["exp_avg"].dtype == state["master"].dtype == torch.float32
        assert torch.equal(p.detach(), state["master"].to(torch.bfloat16))
        assert not torch.equal(p.detach(), b)


def test_frozen_low_precision_params_are_not_refused() -> None:
    frozen = nn.Parameter(torch.zeros(3, dtype=torch.bfloat16), requires_grad=False)
    SGD([frozen, nn.Parameter(torch.zeros(3))], lr=0.1)
