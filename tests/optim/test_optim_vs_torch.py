"""AdamW, Adam, AdaGrad and SGD against their torch.optim peers, and foreach against the loop.

Float64 parameters, random gradients from a seeded generator, 1,000 steps, two param groups
with different hyperparameters, and parameters that sometimes have no gradient (both sides must
skip them, and keep their own step counts).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_testing import make_params, max_diff, run_lockstep

from lmforge.optim import SGD, AdaGrad, Adam, AdamW

STEPS = 1000
TOL = 1e-6

# (ours, torch's, group-0 kwargs (defaults), group-1 overrides)
CASES: dict[str, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {
    "adamw": (
        AdamW,
        torch.optim.AdamW,
        dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1),
        dict(lr=3e-3, weight_decay=0.0),
    ),
    "adam": (
        Adam,
        torch.optim.Adam,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        dict(lr=3e-3, weight_decay=0.0, betas=(0.9, 0.999)),
    ),
    "adagrad": (
        AdaGrad,
        torch.optim.Adagrad,
        dict(lr=1e-1, lr_decay=1e-3, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-10),
        dict(lr=3e-2, lr_decay=0.0, weight_decay=0.0),
    ),
    "sgd": (
        SGD,
        torch.optim.SGD,
        dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01),
        dict(lr=3e-3, momentum=0.5, dampening=0.0, nesterov=True),
    ),
}


def _factories(name: str, ours_foreach: bool) -> list:
    ours, ref, defaults, overrides = CASES[name]

    def groups(ps: list) -> list[dict[str, Any]]:
        return [{"params": ps[:2]}, {"params": ps[2:], **overrides}]

    return [
        lambda ps: ours(groups(ps), foreach=ours_foreach, **defaults),
        lambda ps: ref(groups(ps), foreach=False, **defaults),
    ]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_over_1000_steps(name: str, foreach: bool) -> None:
    ours, ref = run_lockstep(_factories(name, foreach), steps=STEPS, none_every=7)
    assert max_diff(ours, ref) < TOL
    assert max_diff(ours, make_params()) > 1e-2  # the run did move the parameters


@pytest.mark.parametrize("name", sorted(CASES))
def test_foreach_equals_loop(name: str) -> None:
    ours = CASES[name][0]
    defaults = CASES[name][2]
    a, b = run_lockstep(
        [
            lambda ps: ours(ps, foreach=True, **defaults),
            lambda ps: ours(ps, foreach=False, **defaults),
        ],
        steps=200,
        none_every=5,
    )
    assert max_diff(a, b) < 1e-12


@settings(max_examples=25)
@given(
    lr=st.floats(1e-4, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-10, 1e-3),
    weight_decay=st.floats(0.0, 0.5),
    decoupled=st.booleans(),
    foreach=st.booleans(),
)
def test_adam_family_matches_torch_for_any_hyperparameters(
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    foreach: bool,
) -> None:
    ours, ref = (AdamW, torch.optim.AdamW) if decoupled else (Adam, torch.optim.Adam)
    kw = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    a, b = run_lockstep(
        [lambda ps: ours(ps, foreach=foreach, **kw), lambda ps: ref(ps, foreach=False, **kw)],
        steps=30,
        none_every=4,
    )
    assert max_diff(a, b) < 1e-9


@settings(max_examples=25)
@given(
    lr=st.floats(1e-4, 1e-1),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    nesterov=st.booleans(),
    weight_decay=st.floats(0.0, 0.5),
    foreach=st.booleans(),
)
def test_sgd_matches_torch_for_any_hyperparameters(
    lr: float, momentum: float, nesterov: bool, weight_decay: float, foreach: bool
) -> None:
    nesterov = nesterov and momentum > 0
    kw = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    a, b = run_lockstep(
        [
            lambda ps: SGD(ps, foreach=foreach, **kw),
            lambda ps: torch.optim.SGD(ps, foreach=False, **kw),
        ],
        steps=30,
        none_every=4,
    )
    assert max_diff(a, b) < 1e-9


def test_float32_params_match_torch_closely() -> None:
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    params = make_params(seed=3, dtype=torch.float32)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, ref = AdamW(params, **kw), torch.optim.AdamW(twins, **kw)
    gen = torch.Generator().manual_seed(4)
    for _ in range(100):
        for p, q in zip(params, twins, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    assert max_diff(params, twins) < 1e-5
