"""Helpers for the optimizer tests: seeded parameters, a shared gradient stream, lock-step runs."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

SHAPES: tuple[tuple[int, ...], ...] = ((6, 4), (4,), (3, 5), (7,))
"""Two matrices and two vectors: enough for two groups of two, and cheap."""


def make_params(
    shapes: Sequence[tuple[int, ...]] = SHAPES, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> list[nn.Parameter]:
    """Seeded parameters of the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def clone_params(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Independent copies (no grads, no shared storage)."""
    return [nn.Parameter(p.detach().clone()) for p in params]


def set_grads(
    groups: Sequence[Sequence[nn.Parameter]], gen: torch.Generator, step: int, none_every: int
) -> None:
    """Give every parameter list the same random gradients; when ``none_every`` > 0, parameter
    ``i`` gets ``None`` on steps where ``(step + i) % none_every == 0``."""
    for i, same in enumerate(zip(*groups, strict=True)):
        grad = torch.randn(same[0].shape, generator=gen, dtype=same[0].dtype, device=same[0].device)
        drop = none_every > 0 and (step + i) % none_every == 0
        for p in same:
            p.grad = None if drop else grad.clone()


def run_lockstep(
    factories: Sequence[Factory],
    *,
    steps: int,
    seed: int = 0,
    none_every: int = 0,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
) -> list[list[nn.Parameter]]:
    """Run one optimizer per factory on copies of the same parameters with the same grads."""
    base = make_params(shapes, seed=seed)
    copies = [clone_params(base) for _ in factories]
    optimizers = [make(ps) for make, ps in zip(factories, copies, strict=True)]
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        set_grads(copies, gen, step, none_every)
        for opt in optimizers:
            opt.step()
    return copies


def max_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Largest absolute elementwise difference between two aligned tensor lists."""
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def roundtrip(state: dict) -> dict:
    """A state dict through ``torch.save``/``torch.load``, as a checkpoint would carry it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
