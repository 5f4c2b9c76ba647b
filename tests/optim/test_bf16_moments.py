"""``moment_dtype="bfloat16"``: Adam(W)'s moments stored in bfloat16 (DeepSeek-V3), updated in
float32 and rounded when stored; against a reference written here, and resumed exactly."""

from __future__ import annotations

import math

import pytest
import torch
from optim_testing import make_params, roundtrip
from torch import nn

from lmforge.optim import Adam, AdamW, OptimConfig, build_optimizer

BF16 = torch.bfloat16


def _reference_step(p, g, m, v, step, *, lr, beta1, beta2, eps, wd, decoupled) -> None:
    """One Adam(W) step in float32 on float32 ``p``; ``m``/``v`` bfloat16, rounded once."""
    if decoupled:
        p.mul_(1 - lr * wd)
    else:
        g = g + wd * p
    m32 = m.float() + (1 - beta1) * (g - m.float())
    v32 = v.float() * beta2 + (1 - beta2) * g * g
    denom = v32.sqrt() / math.sqrt(1 - beta2**step) + eps
    p.add_(-lr / (1 - beta1**step) * (m32 / denom))
    m.copy_(m32)
    v.copy_(v32)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize(("cls", "decoupled"), [(AdamW, True), (Adam, False)])
def test_bf16_moments_follow_the_reference(cls, decoupled: bool, foreach: bool) -> None:
    params = make_params(dtype=torch.float32)
    ref = [p.detach().clone() for p in params]
    moments = [(torch.zeros_like(p, dtype=BF16), torch.zeros_like(p, dtype=BF16)) for p in ref]
    opt = cls(params, lr=1e-2, weight_decay=0.1, foreach=foreach, moment_dtype="bfloat16")
    gen = torch.Generator().manual_seed(5)
    for step in range(1, 21):
        for p, r, (m, v) in zip(params, ref, moments, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            _reference_step(r, p.grad, m, v, step, lr=1e-2, beta1=0.9, beta2=0.95 if decoupled
                            else 0.999, eps=1e-8, wd=0.1, decoupled=decoupled)  # fmt: skip
        opt.step()
    for p, r, (m, v) in zip(params, ref, moments, strict=True):
        state = opt.state[p]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == BF16
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(state["exp_avg"], m, rtol=0, atol=0)
        torch.testing.assert_close(state["exp_avg_sq"], v, rtol=2**-8, atol=0)


def test_bf16_moments_resume_exactly_and_convert_float32_ones() -> None:
    params = make_params(dtype=torch.float32)
    opt = AdamW(params, lr=1e-2, moment_dtype="bfloat16")
    gen = torch.Generator().manual_seed(1)

    def steps(opt, params, n):
        for _ in range(n):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()

    steps(opt, params, 5)
    saved, copies = roundtrip(opt.state_dict()), [nn.Parameter(p.detach().clone()) for p in params]
    state = gen.get_state()
    steps(opt, params, 5)
    resumed = AdamW(copies, lr=1e-2, moment_dtype="bfloat16")
    resumed.load_state_dict(saved)
    gen.set_state(state)
    steps(resumed, copies, 5)
    for p, q in zip(params, copies, strict=True):
        assert torch.equal(p, q) and resumed.state[q]["exp_avg"].dtype == BF16
    wide = AdamW(params, lr=1e-2)  # the same state into float32 moments: widened on the step
    wide.load_state_dict(roundtrip(opt.state_dict()))
    for group in wide.param_groups:  # as the trainer re-applies its settings after loading
        group["moment_dtype"] = None
    steps(wide, params, 1)
    assert all(wide.state[p]["exp_avg"].dtype == torch.float32 for p in params)


def test_moment_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="moment_dtype"):
        AdamW(make_params(), lr=1e-3, moment_dtype="float16")
    with pytest.raises(ValueError, match="moment_dtype"):
        OptimConfig(name="sgd", moment_dtype="bfloat16")
    with pytest.raises(ValueError, match="moment_dtype"):
        OptimConfig(moment_dtype="fp8")
    p = nn.Parameter(torch.zeros(3, 2))
    opt = build_optimizer([(p, "matrix")], OptimConfig(moment_dtype="bfloat16"))
    assert opt.param_groups[0]["moment_dtype"] == "bfloat16"
