"""OptimConfig validation and serialisation; build_optimizer, lr_at and set_lr."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from lmforge.optim import (
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Muon,
    OptimConfig,
    build_optimizer,
    clip_grad_norm_,
    lr_at,
    set_lr,
)


def _labelled_mlp() -> tuple[nn.Module, list[tuple[nn.Parameter, str]]]:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "wte": nn.Embedding(16, 8),
            "fc": nn.Linear(8, 32),
            "norm": nn.LayerNorm(32),
            "head": nn.Linear(32, 16, bias=False),
        }
    )
    labelled = [
        (model["wte"].weight, "embedding"),
        (model["fc"].weight, "matrix"),
        (model["fc"].bias, "other"),
        (model["norm"].weight, "norm"),
        (model["norm"].bias, "norm"),
        (model["head"].weight, "head"),
    ]
    return model, labelled


def _loss(model: nn.Module) -> torch.Tensor:
    x = model["wte"](torch.arange(16))
    logits = model["head"](model["norm"](torch.relu(model["fc"](x))))
    return nn.functional.cross_entropy(logits, torch.arange(16))


def test_defaults_and_json_round_trip() -> None:
    cfg = OptimConfig()
    assert cfg.name == "adamw" and cfg.min_lr == pytest.approx(cfg.lr / 10)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["betas"] == [0.9, 0.95]
    assert OptimConfig.from_dict(data) == cfg
    custom = OptimConfig(name="muon", lr=1e-3, betas=[0.8, 0.9], schedule="wsd", grad_clip=0)
    assert custom.betas == (0.8, 0.9) and custom.grad_clip is None
    assert OptimConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown OptimConfig field\(s\) \['learning_rate'\]"):
        OptimConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="must be a dict"):
        OptimConfig.from_dict([("lr", 1e-3)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(name="lion"), "unknown optimizer name 'lion'"),
        (dict(schedule="linear"), "unknown schedule"),
        (dict(lr=0.0), "lr must be"),
        (dict(lr=1e-3, min_lr=1e-2), "min_lr"),
        (dict(min_lr=-1.0), "min_lr"),
        (dict(betas=(0.9,)), "betas"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
        (dict(eps=0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(muon_lr=-1), "muon_lr"),
        (dict(muon_momentum=2), "muon_momentum"),
        (dict(muon_weight_decay=float("nan")), "muon_weight_decay"),
        (dict(warmup_iters=1.5), "warmup_iters"),
        (dict(warmup_iters=-1), "warmup_iters"),
        (dict(decay_fraction=0.0), "decay_fraction"),
        (dict(decay_fraction=1.5), "decay_fraction"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(decay_norms="yes"), "decay_norms"),
        (dict(foreach=1), "foreach"),
    ],
)
def test_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OptimConfig(**overrides)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", AdamW), ("adam", Adam), ("adagrad", AdaGrad), ("sgd", SGD), ("muon", Muon)],
)
def test_build_optimizer_trains(name: str, cls: type) -> None:
    model, labelled = _labelled_mlp()
    cfg = OptimConfig(name=name, lr=1e-2, warmup_iters=2, grad_clip=1.0)
    opt = build_optimizer(labelled, cfg)
    assert type(opt) is cls
    assert all(g["base_lr"] == g["lr"] for g in opt.param_groups)
    first = float(_loss(model).detach())
    for it in range(30):
        set_lr(opt, cfg, it, 30)
        opt.zero_grad()
        _loss(model).backward()
        clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        opt.step()
    assert float(_loss(model).detach()) < first


def test_build_groups_weight_decay_and_muon_lr() -> None:
    _, labelled = _labelled_mlp()
    cfg = OptimConfig(name="muon", lr=1e-3, muon_lr=0.03, weight_decay=0.1, muon_weight_decay=0.01)
    opt = build_optimizer(labelled, cfg)
    by_kinds = {tuple(g["kinds"]): g for g in opt.param_groups}
    assert by_kinds[("matrix",)]["use_muon"] and by_kinds[("matrix",)]["base_lr"] == 0.03
    assert by_kinds[("matrix",)]["weight_decay"] == 0.01
    assert by_kinds[("embedding", "other", "norm")]["weight_decay"] == 0.0
    assert by_kinds[("head",)]["weight_decay"] == 0.1 and by_kinds[("head",)]["lr"] == 1e-3
    assert by_kinds[("head",)]["betas"] == cfg.betas


def test_lr_at_cosine_and_constant() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10)
    assert lr_at(cfg, 0, 110) == 0.0
    assert lr_at(cfg, 5, 110) == 0.5
    assert lr_at(cfg, 10, 110) == 1.0
    assert lr_at(cfg, 60, 110) == pytest.approx(0.55)
    assert lr_at(cfg, 110, 110) == pytest.approx(0.1)
    flat = OptimConfig(lr=1.0, schedule="constant", warmup_iters=4)
    assert [lr_at(flat, it, 10) for it in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]


def test_lr_at_wsd_decays_over_the_last_fraction() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10, schedule="wsd", decay_fraction=0.2)
    # max_iters 100: warm-up 10, stable 70, decay 20 (iterations 80..100)
    assert lr_at(cfg, 50, 100) == 1.0
    assert lr_at(cfg, 80, 100) == 1.0
    assert lr_at(cfg, 90, 100) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert lr_at(cfg, 100, 100) == 0.1


def test_lr_at_refusals() -> None:
    with pytest.raises(ValueError, match="max_iters"):
        lr_at(OptimConfig(), 0, 0)
    with pytest.raises(ValueError, match="exceeds max_iters"):
        lr_at(OptimConfig(warmup_iters=20), 0, 10)
    with pytest.raises(ValueError, match="exceed max_iters"):
        lr_at(OptimConfig(warmup_iters=90, schedule="wsd"), 0, 100)
    with pytest.raises(ValueError, match="it must be"):
        lr_at(OptimConfig(), -1, 10)


def test_set_lr_scales_every_group_from_its_base() -> None:
    _, labelled = _labelled_mlp()
    cfg = OptimConfig(name="muon", lr=1e-3, muon_lr=0.02, warmup_iters=10)
    opt = build_optimizer(labelled, cfg)
    assert set_lr(opt, cfg, 5, 100) == pytest.approx(5e-4)
    for group in opt.param_groups:
        expected = 0.01 if group["use_muon"] else 5e-4
        assert group["lr"] == pytest.approx(expected)
    state = opt.state_dict()
    assert all("base_lr" in g for g in state["param_groups"])


def test_set_lr_on_a_foreign_optimizer_takes_its_lr_as_base() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=0.5)
    cfg = OptimConfig(name="sgd", lr=0.1, schedule="constant", warmup_iters=4)
    assert set_lr(opt, cfg, 2, 10) == pytest.approx(0.05)
    assert opt.param_groups[0]["base_lr"] == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    set_lr(opt, cfg, 8, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
