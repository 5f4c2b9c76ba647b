"""Muon on stacked Mixture-of-Experts weights ``(E, d_out, d_in)``: each expert's matrix is
updated exactly as if it were its own 2-D parameter; the ``expert`` kind goes to Muon."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.optim import Muon, param_groups


@pytest.mark.parametrize("foreach", [True, False])
def test_stacked_experts_step_like_separate_matrices(foreach: bool) -> None:
    g = torch.Generator().manual_seed(0)
    stacked = nn.Parameter(torch.randn(3, 12, 5, generator=g))
    single = [nn.Parameter(stacked.detach()[e].clone()) for e in range(3)]
    other = nn.Parameter(torch.randn(3, 12, 5, generator=g))  # same shape: batched together
    opt_a = Muon([stacked, other], lr=0.05, weight_decay=0.1, foreach=foreach)
    opt_b = Muon([*single, other.detach().clone().requires_grad_()], lr=0.05, weight_decay=0.1,
                 foreach=False)  # fmt: skip
    for step in range(4):
        grad = torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(10 + step))
        stacked.grad, other.grad = grad, grad.flip(0)
        for e, p in enumerate(single):
            p.grad = grad[e].clone()
        opt_b.param_groups[0]["params"][3].grad = grad.flip(0)
        opt_a.step()
        opt_b.step()
    for e, p in enumerate(single):
        # a batched Newton–Schulz rounds differently from single ones (float32 on the CPU)
        torch.testing.assert_close(stacked.detach()[e], p.detach(), rtol=0, atol=2e-6)


def test_expert_kind_is_decayed_and_goes_to_muon() -> None:
    w = nn.Parameter(torch.zeros(2, 4, 3))
    router = nn.Parameter(torch.zeros(2, 3))
    groups = param_groups([(w, "expert"), (router, "other")], 0.1, muon=True)
    by_kind = {tuple(g["kinds"]): g for g in groups}
    assert by_kind[("expert",)]["use_muon"] and by_kind[("expert",)]["weight_decay"] == 0.1
    assert not by_kind[("other",)]["use_muon"]
    with pytest.raises(ValueError, match="2-D weights \\(or 3-D stacks"):
        Muon([nn.Parameter(torch.zeros(2, 2, 2, 2))])


@pytest.mark.parametrize("foreach", [True, False])
def test_row_blocks_step_each_stacked_half_like_its_own_matrix(foreach: bool) -> None:
    """``row_blocks=2`` (MoE gate and up weights ``(E, 2·f, d)``): each expert's two halves move
    exactly as two separate ``(E, f, d)`` stacks would, scale included (``f > d`` here, so the
    halves' scale differs from the whole's)."""
    g = torch.Generator().manual_seed(1)
    pair = nn.Parameter(torch.randn(3, 16, 5, generator=g))
    halves = [nn.Parameter(h.clone()) for h in pair.detach().chunk(2, dim=1)]
    opt_a = Muon([{"params": [pair], "row_blocks": 2}], lr=0.05, weight_decay=0.1, foreach=foreach)
    opt_b = Muon(halves, lr=0.05, weight_decay=0.1, foreach=foreach)
    for step in range(4):
        grad = torch.randn(3, 16, 5, generator=torch.Generator().manual_seed(20 + step))
        pair.grad = grad
        for p, half in zip(halves, grad.chunk(2, dim=1), strict=True):
            p.grad = half.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(pair.detach(), torch.cat([h.detach() for h in halves], dim=1))


def test_expert_pair_kind_goes_to_a_muon_group_with_row_blocks() -> None:
    pair, w2 = nn.Parameter(torch.zeros(2, 8, 3)), nn.Parameter(torch.zeros(2, 3, 4))
    groups = param_groups([(pair, "expert_pair"), (w2, "expert")], 0.1, muon=True)
    by_kind = {tuple(g["kinds"]): g for g in groups}
    assert by_kind[("expert_pair",)]["row_blocks"] == 2 and "row_blocks" not in by_kind[("expert",)]
    assert all(g["use_muon"] and g["weight_decay"] == 0.1 for g in groups)
    with pytest.raises(ValueError, match="row_blocks"):
        Muon([{"params": [nn.Parameter(torch.zeros(2, 7, 3))], "row_blocks": 2}])
