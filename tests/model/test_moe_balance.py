"""The balance losses against hand-computed values, and the loss-free bias driving a skewed
router toward balance."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.model.moe import (
    MoEConfig,
    SigmoidRouter,
    device_balance_loss,
    expert_counts,
    load_balance_loss,
    router_z_loss,
    sequence_balance_loss,
    update_expert_bias,
)

F64 = torch.float64
# 4 tokens, 4 experts, top-1 picks: experts 0, 0, 1, 3 (expert 2 idle)
PROBS = torch.tensor(
    [[0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6]],
    dtype=F64,
)
PICKS = torch.tensor([[0], [0], [1], [3]])


def test_switch_aux_loss_by_hand() -> None:
    # P = column means = (0.35, 0.25, 0.175, 0.225); f = counts / 4 = (0.5, 0.25, 0, 0.25)
    # E · Σ f·P = 4 · (0.175 + 0.0625 + 0 + 0.05625) = 1.175
    assert load_balance_loss(PROBS, PICKS).item() == pytest.approx(1.175, abs=1e-12)


def test_deepseek_expert_level_is_the_switch_loss() -> None:
    """DeepSeekMoE eq. 12-14: f'_i = E/(K·T) · count_i, P_i = mean s; L = Σ f'_i P_i."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(10, 6, generator=g, dtype=F64).softmax(-1)
    picks = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(10)])
    counts = torch.tensor([(picks == i).sum().item() for i in range(6)], dtype=F64)
    deepseek = sum(6 / (2 * 10) * counts[i] * probs[:, i].mean() for i in range(6))
    assert load_balance_loss(probs, picks).item() == pytest.approx(deepseek.item(), abs=1e-12)


def test_balanced_load_gives_one() -> None:
    probs = torch.rand(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64).softmax(-1)
    picks = torch.tensor([[0, 1], [2, 3]] * 4)  # every expert picked 4 times
    assert load_balance_loss(probs, picks).item() == pytest.approx(1.0, abs=1e-12)


def test_device_loss_by_hand() -> None:
    # groups {0,1} and {2,3}; f' = E·count/(K·T) = (2, 1, 0, 1); f'' = (1.5, 0.5)
    # P'' = (0.35 + 0.25, 0.175 + 0.225) = (0.6, 0.4); Σ f''·P'' = 0.9 + 0.2 = 1.1
    assert device_balance_loss(PROBS, PICKS, 2).item() == pytest.approx(1.1, abs=1e-12)
    # one group per expert is the expert-level loss
    assert device_balance_loss(PROBS, PICKS, 4).item() == pytest.approx(1.175, abs=1e-12)


def test_sequence_loss_by_hand_and_per_sequence() -> None:
    # sequence 0 = tokens 0, 1 (both expert 0): f = 4/2 · (2, 0, 0, 0), P = (0.55, 0.2, ...):
    # L0 = 4 · 0.55 = 2.2. Sequence 1 = tokens 2, 3 (experts 1, 3): f = (0, 2, 0, 2),
    # P = (0.15, 0.3, 0.2, 0.35): L1 = 0.6 + 0.7 = 1.3. Mean 1.75.
    got = sequence_balance_loss(PROBS.view(2, 2, 4), PICKS.view(2, 2, 1))
    assert got.item() == pytest.approx(1.75, abs=1e-12)
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(3, 5, 6, generator=g, dtype=F64).softmax(-1)
    picks = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(15)]).view(3, 5, 2)
    per_seq = torch.stack([load_balance_loss(probs[b], picks[b]) for b in range(3)]).mean()
    torch.testing.assert_close(sequence_balance_loss(probs, picks), per_seq)


def test_z_loss_by_hand() -> None:
    logits = torch.zeros(3, 4, dtype=F64)
    assert router_z_loss(logits).item() == pytest.approx(math.log(4) ** 2)
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=F64)  # logsumexp = log 4
    assert router_z_loss(logits).item() == pytest.approx(math.log(4) ** 2)


def test_losses_reach_the_router_through_probs_only() -> None:
    logits = torch.randn(6, 4, dtype=F64, requires_grad=True)
    probs = logits.softmax(-1)
    picks = probs.topk(2, dim=-1).indices
    (grad,) = torch.autograd.grad(load_balance_loss(probs, picks), logits)
    assert grad.abs().sum() > 0


def test_bias_update_by_hand() -> None:
    bias = torch.tensor([0.5, 0.0, -0.5])
    update_expert_bias(bias, torch.tensor([30, 10, 20]), 0.1)  # mean 20: over, under, even
    torch.testing.assert_close(bias, torch.tensor([0.4, 0.1, -0.5]))
    update_expert_bias(bias, torch.zeros(3, dtype=torch.int64), 0.1)  # no load: no change
    torch.testing.assert_close(bias, torch.tensor([0.4, 0.1, -0.5]))
    assert torch.equal(expert_counts(torch.tensor([[2, 0], [2, 1]]), 4), torch.tensor([1, 1, 2, 0]))


def _max_over_mean(router: SigmoidRouter, x: torch.Tensor) -> float:
    counts = expert_counts(router(x).experts, router.n_experts).float()
    return (counts.max() / counts.mean()).item()


def test_loss_free_bias_balances_a_skewed_router() -> None:
    """A frozen router that sends most tokens to experts 0 and 1; only the bias moves."""
    torch.manual_seed(0)
    moe = MoEConfig(n_routed_experts=8, top_k=2, router="sigmoid", bias_update_rate=0.003)
    router = SigmoidRouter(16, moe, init_std=0.5).train()
    with torch.no_grad():
        router.weight[0] += 1.0
        router.weight[1] += 0.5
    held_out = torch.randn(4096, 16, generator=torch.Generator().manual_seed(9)) + 0.5
    start = _max_over_mean(router, held_out)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):  # one "training step": forward passes count, then the hook
        x = torch.randn(1024, 16, generator=g) + 0.5
        router.record_load(expert_counts(router(x).experts, 8))
        router.after_optimizer_step()
    assert router.expert_load is not None and router.expert_load.sum() == 0  # reset per step
    end = _max_over_mean(router, held_out)
    assert start > 3.0 and end < 1.2, (start, end)  # measured: 3.62 -> 1.04..1.09
    assert router.expert_bias is not None and router.expert_bias[0] < router.expert_bias[7]
