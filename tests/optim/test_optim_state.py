"""What every optimizer owes a trainer: exact resume from a state dict, closures, no autograd
graph, skipped ``None`` grads, and clear errors on bad hyperparameters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from optim_testing import clone_params, make_params, roundtrip, set_grads
from torch import nn

from lmforge.optim import SGD, AdaGrad, Adam, AdamW, Muon

FACTORIES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adamw": lambda ps: AdamW(ps, lr=1e-2),
    "adam": lambda ps: Adam(ps, lr=1e-2, weight_decay=0.01),
    "adagrad": lambda ps: AdaGrad(ps, lr=1e-1, lr_decay=1e-2),
    "sgd": lambda ps: SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
    "muon": lambda ps: Muon(
        [
            {"params": [p for p in ps if p.ndim == 2], "use_muon": True, "weight_decay": 0.01},
            {"params": [p for p in ps if p.ndim != 2], "use_muon": False},
        ],
        lr=0.02,
    ),
}


def _train(opt: torch.optim.Optimizer, params: list, gen: torch.Generator, steps: int) -> None:
    for step in range(steps):
        set_grads([params], gen, step, none_every=5)
        opt.step()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    make = FACTORIES[name]
    params = make_params()
    opt = make(params)
    gen = torch.Generator().manual_seed(1)
    _train(opt, params, gen, 15)
    saved_state = roundtrip(opt.state_dict())
    saved_params = clone_params(params)
    saved_gen = gen.get_state()
    _train(opt, params, gen, 15)

    resumed = saved_params
    opt2 = make(resumed)
    opt2.load_state_dict(saved_state)
    gen2 = torch.Generator()
    gen2.set_state(saved_gen)
    _train(opt2, resumed, gen2, 15)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


def test_adamw_state_dict_interchanges_with_torch() -> None:
    """Same state names and step counters as torch.optim.AdamW: a torch checkpoint loads."""
    params = make_params()
    theirs = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(2)
    _train(theirs, params, gen, 10)
    twins = clone_params(params)
    ours = AdamW(twins, lr=1e-2)
    ours.load_state_dict(roundtrip(theirs.state_dict()))
    assert set(ours.state[twins[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    assert ours.state[twins[0]]["step"].device.type == "cpu"
    gen_twin = torch.Generator()
    gen_twin.set_state(gen.get_state())
    _train(theirs, params, gen, 10)
    _train(ours, twins, gen_twin, 10)
    for a, b in zip(params, twins, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_step_with_closure_returns_loss_and_builds_no_graph(name: str) -> None:
    params = make_params()
    opt = FACTORIES[name](params)

    def closure() -> float:
        opt.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()  # needs grad mode, which step() turns off around the update
        return loss.item()

    with torch.no_grad():
        before = float(sum((p**2).sum() for p in params))
    loss = opt.step(closure)
    assert loss == pytest.approx(before)
    assert all(p.is_leaf and p.grad_fn is None for p in params)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_parameters_without_grad_are_skipped(name: str) -> None:
    params = make_params()
    frozen = params[0].detach().clone()
    opt = FACTORIES[name](params)
    for p in params[1:]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(params[0], frozen)
    assert not opt.state.get(params[0])
    assert not torch.equal(params[1], make_params()[1])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: AdamW(ps, lr=-1.0), "lr"),
        (lambda ps: AdamW(ps, lr=1e-3, betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda ps: AdamW(ps, lr=1e-3, betas=(0.9,)), "betas"),
        (lambda ps: Adam(ps, lr=1e-3, eps=0.0), "eps"),
        (lambda ps: AdamW(ps, lr=1e-3, weight_decay=-0.1), "weight_decay"),
        (lambda ps: AdamW(ps, lr=1e-3, foreach="yes"), "foreach"),
        (lambda ps: AdamW([{"params": ps, "lr": float("nan")}], lr=1e-3), "lr"),
        (lambda ps: AdaGrad(ps, lr=1e-2, lr_decay=-1.0), "lr_decay"),
        (lambda ps: SGD(ps, lr=1e-2, momentum=1.5), "momentum"),
        (lambda ps: SGD(ps, lr=1e-2, nesterov=True), "nesterov"),
        (lambda ps: Muon(ps, lr=0.02), "2-D"),
        (lambda ps: Muon([{"params": ps, "use_muon": False, "betas": (2, 0)}]), "betas"),
        (lambda ps: Muon([p for p in ps if p.ndim == 2], ns_steps=0), "ns_steps"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make: Callable, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(make_params())


def test_add_param_group_is_validated_too() -> None:
    params = make_params()
    opt = AdamW(params[:2], lr=1e-3)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": params[2:], "weight_decay": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": (p for p in params[2:]), "lr": 1e-4})
    assert opt.param_groups[1]["lr"] == 1e-4
    assert len(opt.param_groups[1]["params"]) == 2


def test_sparse_gradients_are_refused() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        AdamW(emb.parameters(), lr=1e-3).step()
