"""param_groups: weight decay by kind, tied parameters once, Muon's split, and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.optim import AdamW, Muon, param_groups


def _labelled() -> dict[str, tuple[nn.Parameter, str]]:
    """A toy model's labelled parameters, by name."""
    p = lambda *shape: nn.Parameter(torch.zeros(shape))  # noqa: E731
    return {
        "wte": (p(10, 4), "embedding"),
        "q": (p(4, 4), "matrix"),
        "norm": (p(4), "norm"),
        "bias": (p(4), "other"),
        "mlp": (p(8, 4), "matrix"),
        "scale2d": (p(2, 2), "other"),
        "lm_head": (p(10, 4), "head"),
    }


def _ids(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


def test_default_decay_rules() -> None:
    named = _labelled()
    groups = param_groups(named.values(), 0.1)
    assert len(groups) == 2
    no_decay, decay = groups  # first seen: the embedding
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert _ids(no_decay) == {id(named[n][0]) for n in ("wte", "norm", "bias")}
    assert _ids(decay) == {id(named[n][0]) for n in ("q", "mlp", "scale2d", "lm_head")}
    assert no_decay["kinds"] == ["embedding", "norm", "other"]
    assert decay["kinds"] == ["matrix", "other", "head"]
    assert [p for p in decay["params"]][:2] == [named["q"][0], named["mlp"][0]]  # kept in order
    assert "use_muon" not in decay


def test_decay_embeddings_and_norms_on_request() -> None:
    named = _labelled()
    groups = param_groups(named.values(), 0.1, decay_embeddings=True, decay_norms=True)
    decayed = next(g for g in groups if g["weight_decay"] == 0.1)
    assert id(named["wte"][0]) in _ids(decayed) and id(named["norm"][0]) in _ids(decayed)
    (plain,) = [g for g in groups if g["weight_decay"] == 0.0]
    assert _ids(plain) == {id(named["bias"][0])}


def test_tied_parameters_appear_once_with_their_first_kind() -> None:
    named = _labelled()
    tied = named["wte"][0]
    labelled = list(named.values()) + [(tied, "head")]
    groups = param_groups(labelled, 0.1)
    all_params = [p for g in groups for p in g["params"]]
    assert sum(p is tied for p in all_params) == 1
    assert len(all_params) == len(named)
    assert tied in groups[0]["params"] and groups[0]["weight_decay"] == 0.0
    AdamW(groups, lr=1e-3)  # torch refuses a parameter in two groups; this must be accepted


def test_muon_split() -> None:
    named = _labelled()
    groups = param_groups(named.values(), 0.1, muon=True)
    muon_groups = [g for g in groups if g["use_muon"]]
    assert len(muon_groups) == 1
    assert _ids(muon_groups[0]) == {id(named["q"][0]), id(named["mlp"][0])}
    assert muon_groups[0]["kinds"] == ["matrix"]
    adam_ids = set().union(*(_ids(g) for g in groups if not g["use_muon"]))
    assert id(named["lm_head"][0]) in adam_ids and id(named["wte"][0]) in adam_ids
    Muon(groups)  # every Muon group holds 2-D weights only


def test_frozen_parameters_are_left_out() -> None:
    named = _labelled()
    named["q"][0].requires_grad_(False)
    groups = param_groups(named.values(), 0.1)
    assert all(p is not named["q"][0] for g in groups for p in g["params"])


@pytest.mark.parametrize(
    ("labelled", "weight_decay", "match"),
    [
        ([(nn.Parameter(torch.zeros(2)), "bias")], 0.1, "unknown parameter kind"),
        ([(torch.zeros(2).tolist(), "other")], 0.1, "expected a parameter"),
        ([(nn.Parameter(torch.zeros(2)), "norm")], -0.1, "weight_decay"),
        ([(nn.Parameter(torch.zeros(2), requires_grad=False), "norm")], 0.1, "no trainable"),
        ([], 0.1, "no trainable"),
    ],
)
def test_refusals(labelled: list, weight_decay: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        param_groups(labelled, weight_decay)
