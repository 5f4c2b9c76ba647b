"""In-batch balancing (``MoEConfig.batch_load_cap``): the capping offsets by hand and on a skewed
batch, the router in training against evaluation, the bias learning from the loads before the
cap, and the layer inside a model."""

from __future__ import annotations

import math

import pytest
import torch
from model_testing import tiny_model, tokens

from lmforge.kernels.balance_histograms import thresholds
from lmforge.model.moe import (
    MoEConfig,
    SigmoidRouter,
    TokenChoiceRouter,
    batch_balance_offsets,
    expert_counts,
    warn_if_noncausal,
)


def _loads(scores: torch.Tensor, offsets: torch.Tensor, k: int) -> torch.Tensor:
    return expert_counts((scores + offsets).topk(k, dim=-1).indices, scores.shape[1])


def test_one_overloaded_expert_keeps_its_best_placed_rows() -> None:
    """Six rows all prefer expert 0 (mean load 1.5, band [1, 2] at cap 4/3): a round lowers
    expert 0 until only two rows — those with the largest margin over their second choice —
    would keep it, and raises each idle expert until one row would choose it."""
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],  # margin 0.1
            [0.9, 0.1, 0.5, 0.0],  # margin 0.4
            [0.9, 0.0, 0.2, 0.6],  # margin 0.3
            [0.9, 0.85, 0.0, 0.1],  # margin 0.05
            [0.95, 0.0, 0.0, 0.2],  # margin 0.75
            [0.9, 0.0, 0.0, 0.0],  # margin 0.9
        ],
        dtype=torch.float64,
    )
    offsets, before = batch_balance_offsets(scores, top_k=1, cap=4 / 3, rounds=1)
    assert before.tolist() == [6, 0, 0, 0]
    edges = thresholds("cpu", torch.float64)

    def above(x: float) -> float:
        return float(edges[edges > x][0])

    # expert 0 down by the first edge above its third-largest margin (0.4); each idle expert up
    # by the first edge above its smallest gap: expert 1 row 3 (0.05), expert 2 row 1 (0.4),
    # expert 3 row 2 (0.3)
    assert offsets.tolist() == [-above(0.4), above(0.05), above(0.4), above(0.3)]
    # the moves are simultaneous and overshoot here (rows 4 and 5 lean to the raised experts,
    # and expert 0 keeps no row); the next rounds settle within the band
    picks = (scores + offsets).argmax(dim=-1)
    assert expert_counts(picks, 4).tolist() == [0, 2, 2, 2], picks
    offsets, _ = batch_balance_offsets(scores, top_k=1, cap=4 / 3, rounds=3)
    loads = expert_counts((scores + offsets).argmax(dim=-1), 4)
    assert 1 <= int(loads.min()) and int(loads.max()) <= 2, loads


def test_offsets_are_zero_when_every_expert_is_within_the_band() -> None:
    scores = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    before = expert_counts(scores.topk(2, dim=-1).indices, 8)
    cap = float(before.max()) / 16 + 1e-9  # mean 16; within [mean/cap, cap·mean] already?
    cap = max(cap, 16 / float(before.min()) + 1e-9)
    offsets, counted = batch_balance_offsets(scores, 2, cap)
    assert torch.equal(counted, before) and torch.equal(offsets, torch.zeros(8))


def _document_skew(n_docs: int, per_doc: int, n_experts: int, spread: float) -> torch.Tensor:
    """Sigmoid scores where each document favours its own experts (the per-batch noise that a
    bias from earlier steps cannot know)."""
    g = torch.Generator().manual_seed(1)
    favour = torch.randn(n_docs, n_experts, generator=g) * spread
    noise = torch.randn(n_docs * per_doc, n_experts, generator=g)
    return torch.sigmoid(noise + favour.repeat_interleave(per_doc, dim=0))


def _collapsed(n: int, n_experts: int) -> torch.Tensor:
    """Every row shares one direction, so every row ranks the experts alike (a router at
    initialisation)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 24, generator=g)
    x[:, 0] += 2.0
    return torch.sigmoid(x @ (0.5 * torch.randn(n_experts, 24, generator=g)).t())


@pytest.mark.parametrize(
    ("case", "scores", "worst"),
    [
        ("documents", _document_skew(16, 256, 64, spread=1.5), 1.23),
        ("collapsed", _collapsed(4096, 64), 1.25),
    ],
)
def test_a_skewed_batch_comes_near_the_band(case: str, scores: torch.Tensor, worst: float) -> None:
    n_experts, k = 64, 8
    mean = scores.shape[0] * k / n_experts
    offsets, before = batch_balance_offsets(scores, k, 1.2)
    after = _loads(scores, offsets, k)
    assert before.max() / mean > 2.2, case  # measured 2.28 / 3.0
    assert after.max() / mean <= worst, (
        case,
        after.max() / mean,
    )  # measured 1.20 / 1.23 (two rounds)
    assert after.min() / mean >= 0.8, (case, after.min() / mean)  # measured 0.83 / 0.84
    assert int(after.sum()) == scores.shape[0] * k  # dropless: every row keeps k experts


def test_offsets_from_a_strided_sample_balance_the_whole_batch() -> None:
    """32K rows of 32 documents: the rounds read 8,192 of them (every 4th), and the whole
    batch lands near the band; the loads before it are the sample's, scaled to the batch."""
    scores = _document_skew(32, 1024, 64, spread=1.0)
    mean = scores.shape[0] * 8 / 64
    offsets, before = batch_balance_offsets(scores, 8, 1.2)
    exact = _loads(scores, torch.zeros(64), 8)
    assert exact.max() / mean > 1.4  # measured 1.42
    assert _loads(scores, offsets, 8).max() / mean <= 1.23  # measured 1.21 (all rows: 1.19)
    assert int(before.sum()) == pytest.approx(scores.shape[0] * 8, rel=1e-3)
    assert ((before - exact).abs() / mean).max() < 0.08  # measured 0.045


def test_more_rounds_come_closer_to_the_band() -> None:
    scores = _collapsed(4096, 64)
    worst = [
        int(_loads(scores, batch_balance_offsets(scores, 8, 1.1, r)[0], 8).max()) for r in (1, 3)
    ]
    assert worst[0] > worst[1] > 512 * 1.1, worst  # measured 606, 568


def _router(cls: type, cap: float | None, **moe: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = MoEConfig(n_routed_experts=16, top_k=4, batch_load_cap=cap, **moe)  # type: ignore[arg-type]
    return cls(24, config, init_std=0.5)


@pytest.mark.parametrize("cls", [SigmoidRouter, TokenChoiceRouter])
def test_the_router_caps_in_training_and_not_in_evaluation(cls: type) -> None:
    extra = {"router": "sigmoid"} if cls is SigmoidRouter else {}
    capped, plain = _router(cls, 1.2, **extra), _router(cls, None, **extra)
    x = torch.randn(2048, 24, generator=torch.Generator().manual_seed(2))
    x[:, 0] += 2.0  # every row shares a direction: the experts it favours are overloaded
    limit = math.ceil(1.2 * 2048 * 4 / 16)

    train = capped.train()(x)
    reference = plain.train()(x)
    assert train.unbalanced_counts is not None and reference.unbalanced_counts is None
    assert torch.equal(train.unbalanced_counts, expert_counts(reference.experts, 16))
    assert int(train.unbalanced_counts.max()) > limit
    assert int(expert_counts(train.experts, 16).max()) <= limit * 1.05
    # the gates are still the raw scores of the chosen experts, normalised
    torch.testing.assert_close(train.gates.sum(dim=-1), torch.ones(2048))

    with torch.no_grad():  # no gradients: routed as in inference, with the bias alone
        assert torch.equal(capped(x).experts, reference.experts)
    assert torch.equal(capped.eval()(x).experts, reference.experts)


def test_the_bias_and_the_losses_learn_from_the_loads_before_the_cap() -> None:
    """A layer in training records the counts without the offsets (what inference routes), and
    the expert-level loss reads them too: the routed counts are even by design."""
    from lmforge.model.moe import load_balance_loss
    from lmforge.model.moe.stats import collect_moe_stats

    cap = dict(n_routed_experts=8, top_k=2, router="sigmoid", batch_load_cap=1.1)
    model = tiny_model(dtype=torch.float32, moe=cap).train()
    layer = model.layers[1].mlp
    x = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(6))
    x[..., 0] += 3.0  # a shared direction: the router's own choices are skewed
    layer(x)
    stats = layer.stats
    routing = stats.routing
    before = routing.unbalanced_counts
    assert before is not None
    with torch.no_grad():  # the plain top-k of score + bias, without offsets
        scores = torch.sigmoid(layer.router.logits(x.reshape(-1, 32)))
        plain = (scores + layer.router.expert_bias).topk(2, dim=-1).indices
    assert torch.equal(before, expert_counts(plain, 8))
    assert torch.equal(layer.router.expert_load, before)
    assert not torch.equal(before, stats.counts) and int(before.max()) > int(stats.counts.max())
    _, losses, metrics = collect_moe_stats(model)
    want = load_balance_loss(routing.probs, routing.experts, before)
    capped = load_balance_loss(routing.probs, routing.experts)
    torch.testing.assert_close(metrics["moe/L1/aux_loss"], want.detach())
    assert float(want) > float(capped) + 0.01  # measured 1.019 against 1.000


def test_a_capped_model_trains_and_generation_warns() -> None:
    model = tiny_model(
        dtype=torch.float32, moe=dict(n_routed_experts=4, router="sigmoid", batch_load_cap=1.1)
    ).train()
    idx = tokens((2, 16))
    out = model(idx, idx)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[1].mlp.router.weight.grad.abs().sum() > 0
    with pytest.warns(UserWarning, match="in-batch balancing"):
        warn_if_noncausal(model.config.moe)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(batch_load_cap=0.9), "must be >= 1"),
        (dict(batch_load_cap=float("nan")), "positive number"),
        (dict(router="expert_choice", batch_load_cap=1.2), "top-k router"),
        (dict(router="hash", batch_load_cap=1.2, aux_loss_weight=0.0), "top-k router"),
    ],
)
def test_config_refuses_a_cap_it_cannot_use(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MoEConfig(n_routed_experts=8, **fields)
