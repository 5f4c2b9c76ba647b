"""The optimizers on CUDA: the foreach path against torch's CUDA kernels, Muon's bf16
Newton–Schulz, clipping, and a group spread over two device types."""

from __future__ import annotations

import pytest
import torch
from optim_testing import make_params, max_diff, set_grads
from torch import nn

from lmforge.optim import SGD, AdaGrad, Adam, AdamW, Muon, clip_grad_norm_, newton_schulz

pytestmark = pytest.mark.gpu

PAIRS = {
    "adamw": (AdamW, torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)),
    "adam": (Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.01)),
    "adagrad": (AdaGrad, torch.optim.Adagrad, dict(lr=1e-1, weight_decay=0.01)),
    "sgd": (SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True)),
}
SHAPES = ((256, 128), (128,), (512, 64), (64,))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_foreach_on_cuda_matches_torch(name: str) -> None:
    ours, ref, kw = PAIRS[name]
    base = make_params(SHAPES, dtype=torch.float32)
    copies = [[nn.Parameter(p.detach().cuda()) for p in base] for _ in range(3)]
    optimizers = [
        ours(copies[0], **kw),  # foreach=None: the CUDA multi-tensor path
        ours(copies[1], foreach=False, **kw),
        ref(copies[2], foreach=True, **kw),
    ]
    gen = torch.Generator(device="cuda").manual_seed(1)
    for step in range(200):
        set_grads(copies, gen, step, none_every=7)
        for opt in optimizers:
            opt.step()
    fast, loop, theirs = copies
    assert max_diff(fast, theirs) < 1e-5
    assert max_diff(fast, loop) < 1e-5


@pytest.mark.parametrize("shape", [(1024, 256), (256, 1024), (768, 3072)])
def test_newton_schulz_in_bf16_on_cuda(shape: tuple[int, int]) -> None:
    G = torch.randn(shape, device="cuda")
    X = newton_schulz(G)
    assert X.dtype == torch.float32
    s = torch.linalg.svdvals(X.double())
    assert 0.6 <= s.min() and s.max() <= 1.3


def _train_mlp_with_muon(foreach: bool, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(32, 256),
        nn.GELU(),
        nn.Linear(256, 256),
        nn.GELU(),
        nn.Linear(256, 256),
        nn.GELU(),
        nn.Linear(256, 1),
    ).cuda()
    hidden = [mlp[2].weight, mlp[4].weight]  # one shape twice: the batched Newton–Schulz
    rest = [p for p in mlp.parameters() if all(p is not h for h in hidden)]
    opt = Muon(
        [{"params": hidden}, {"params": rest, "use_muon": False}], adam_lr=3e-3, foreach=foreach
    )
    gen = torch.Generator(device="cuda").manual_seed(1)
    X = torch.randn(1024, 32, device="cuda", generator=gen)
    y = torch.sin(X[:, :1])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((mlp(X) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in mlp.parameters()]


def test_muon_on_cuda_foreach_equals_loop_and_trains() -> None:
    _, start = _train_mlp_with_muon(foreach=True, steps=0)
    _, fast = _train_mlp_with_muon(foreach=True, steps=3)
    _, loop = _train_mlp_with_muon(foreach=False, steps=3)
    # bf16 Newton–Schulz, batched or not, agrees only to bf16 precision: compare the total
    # change of each parameter in relative norm.
    for s, f, lo in zip(start, fast, loop, strict=True):
        assert (f - lo).norm() <= 0.05 * (lo - s).norm()
    losses, _ = _train_mlp_with_muon(foreach=True, steps=100)
    assert losses[-1] < 0.3 * losses[0]


def test_clip_on_cuda_and_across_devices() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, 40, generator=gen), torch.randn(70, generator=gen)]
    for devices in (("cuda", "cuda"), ("cuda", "cpu")):
        ours = [
            nn.Parameter(torch.zeros_like(g, device=d)) for g, d in zip(grads, devices, strict=True)
        ]
        theirs = [
            nn.Parameter(torch.zeros_like(g, device=d)) for g, d in zip(grads, devices, strict=True)
        ]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.to(p.device, copy=True), g.to(q.device, copy=True)
        got = clip_grad_norm_(ours, 1.0)
        want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        torch.testing.assert_close(got, want)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p.grad, q.grad)


def test_group_spread_over_cpu_and_cuda_uses_the_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(16, 8, generator=gen), torch.randn(8, generator=gen)]
    ours = [nn.Parameter(base[0].cuda()), nn.Parameter(base[1].clone())]
    theirs = [nn.Parameter(base[0].cuda()), nn.Parameter(base[1].clone())]
    a, b = (
        AdamW(ours, lr=1e-2),
        torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False),
    )
    for _ in range(20):
        for p, q in zip(ours, theirs, strict=True):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.to(p.device, copy=True), g.to(q.device, copy=True)
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q)
