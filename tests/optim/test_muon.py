"""Muon: the Newton–Schulz orthogonaliser, the update rule, its AdamW half, and that it trains."""

from __future__ import annotations

import pytest
import torch
from optim_testing import make_params, max_diff, run_lockstep
from torch import nn

from lmforge.optim import AdamW, Muon, muon_scale, newton_schulz

# The quintic's 5-step output is not exactly orthogonal: its singular values land in about
# [0.68, 1.2] (Jordan 2024); the band below leaves a little room around that.
BAND = (0.65, 1.25)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (128, 16), (100, 300), (8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_newton_schulz_singular_values_near_one(shape: tuple[int, int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    if shape[0] == shape[1]:  # square Gaussians can be near-singular: use a tame spectrum
        u, _ = torch.linalg.qr(torch.randn(shape, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(shape, generator=gen))
        G = u @ torch.diag(torch.linspace(0.05, 1.0, shape[0])) @ v.T
    else:
        G = torch.randn(shape, generator=gen)
    X = newton_schulz(G)
    assert X.shape == G.shape and X.dtype == G.dtype
    s = torch.linalg.svdvals(X.double())
    assert BAND[0] <= s.min() and s.max() <= BAND[1], s


def test_newton_schulz_points_where_the_polar_factor_does() -> None:
    G = torch.randn(48, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, _, vh = torch.linalg.svd(G, full_matrices=False)
    polar = u @ vh
    X = newton_schulz(G)
    cosine = (X * polar).sum() / (X.norm() * polar.norm())
    assert cosine > 0.95
    assert X.dtype == torch.float64  # worked in float32 on the CPU, returned in G's dtype


def test_newton_schulz_tall_is_the_transpose_of_wide() -> None:
    G = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(newton_schulz(G), newton_schulz(G.T).T)


def test_newton_schulz_batched_and_zero() -> None:
    G = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    batched = newton_schulz(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], newton_schulz(G[i]))
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(5))


def test_muon_scale() -> None:
    assert muon_scale((128, 32)) == 2.0
    assert muon_scale((32, 128)) == 1.0
    assert muon_scale(torch.Size([50, 50])) == 1.0


def test_first_step_is_scaled_orthogonalised_gradient() -> None:
    """From zero momentum, the Nesterov direction is a multiple of g, and NS ignores scale."""
    W = nn.Parameter(torch.randn(24, 8, generator=torch.Generator().manual_seed(0)))
    W0 = W.detach().clone()
    W.grad = torch.randn(24, 8, generator=torch.Generator().manual_seed(1))
    lr, wd = 0.02, 0.1
    Muon([W], lr=lr, weight_decay=wd).step()
    expected = W0 * (1 - lr * wd) - lr * muon_scale(W.shape) * newton_schulz(W.grad)
    torch.testing.assert_close(W.detach(), expected, rtol=0, atol=1e-5)


def _muon_groups(ps: list[nn.Parameter]) -> list[dict]:
    return [
        {"params": [p for p in ps if p.ndim == 2], "use_muon": True},
        {"params": [p for p in ps if p.ndim != 2], "use_muon": False, "weight_decay": 0.1},
    ]


@pytest.mark.parametrize("nesterov", [True, False])
def test_foreach_equals_loop(nesterov: bool) -> None:
    a, b = run_lockstep(
        [
            lambda ps: Muon(_muon_groups(ps), weight_decay=0.01, nesterov=nesterov, foreach=True),
            lambda ps: Muon(_muon_groups(ps), weight_decay=0.01, nesterov=nesterov, foreach=False),
        ],
        steps=50,
        none_every=6,
        shapes=((6, 4), (4,), (6, 4), (3, 5), (6, 4)),  # same shapes: batched Newton–Schulz
    )
    # Newton–Schulz works in float32 on the CPU, and a batched matmul rounds differently
    # from single ones: equal to float32 rounding, not float64's.
    assert max_diff(a, b) < 1e-6


def test_adamw_groups_are_adamw() -> None:
    """A use_muon=False group takes the adam_* defaults and steps exactly as AdamW."""
    a, b = run_lockstep(
        [
            lambda ps: Muon(
                [{"params": ps, "use_muon": False}],
                adam_lr=1e-2,
                adam_betas=(0.8, 0.9),
                adam_eps=1e-7,
                adam_weight_decay=0.05,
            ),
            lambda ps: AdamW(ps, lr=1e-2, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.05),
        ],
        steps=100,
        none_every=4,
    )
    assert max_diff(a, b) == 0.0
    opt = Muon([{"params": make_params(), "use_muon": False}], adam_lr=1e-2)
    assert opt.param_groups[0]["lr"] == 1e-2


def _least_squares_loss(W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    return ((X @ W.T - Y) ** 2).mean()


def test_muon_solves_least_squares() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, generator=gen)
    Y = X @ (torch.randn(16, 32, generator=gen).T / 32**0.5)
    W = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([W], lr=0.02)
    initial = float(_least_squares_loss(W, X, Y).detach())
    for _ in range(100):
        opt.zero_grad()
        _least_squares_loss(W, X, Y).backward()
        opt.step()
    assert float(_least_squares_loss(W, X, Y).detach()) < 0.05 * initial


def test_muon_trains_an_mlp_with_mixed_groups() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(512, 8, generator=gen)
    y = torch.sin(X[:, :1] * 2) + X[:, 1:2] * X[:, 2:3]
    hidden = [mlp[2].weight]
    rest = [p for p in mlp.parameters() if p is not mlp[2].weight]
    opt = Muon(
        [{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}],
        lr=0.02,
        adam_lr=3e-3,
    )
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = ((mlp(X) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]
    assert set(opt.state[mlp[2].weight]) == {"momentum_buffer"}
    assert set(opt.state[mlp[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}
