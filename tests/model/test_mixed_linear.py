"""``mixed_linear``: autocast's ``F.linear`` with the weight gradient written in float32.

Held to autocast itself (output and input gradient: the same bf16 operations) and to a float64
evaluation of the same bf16-rounded operands (the weight gradient, which autocast rounds to
bf16 and this path does not). The CPU tests call the autograd function directly (its float32
GEMM falls back to an upcast ``torch.mm`` there); the GPU test goes through ``Linear`` under CUDA
autocast, the path training takes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.layers import Linear
from lmforge.model.mixed_linear import _MixedLinear, mixed_linear


def _operands(device: str, n: int = 48, d_in: int = 40, d_out: int = 24):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(n + d_in)
    x = torch.randn(3, n // 3, d_in, generator=gen).to(device).requires_grad_()
    w = (torch.randn(d_out, d_in, generator=gen) / d_in**0.5).to(device).requires_grad_()
    probe = torch.randn(3, n // 3, d_out, generator=gen).to(device)
    return x, w, probe


def _weight_grad_f64(x, probe):  # type: ignore[no-untyped-def]
    """``dW = dyᵀ x`` in float64 from the bf16-rounded operands the GEMM sees."""
    dy = probe.to(torch.bfloat16).double().reshape(-1, probe.shape[-1])
    xb = x.detach().to(torch.bfloat16).double().reshape(-1, x.shape[-1])
    return dy.t() @ xb


def _run(fn, x, w, probe):  # type: ignore[no-untyped-def]
    x.grad = w.grad = None
    y = fn(x, w)
    y.backward(probe.to(y.dtype))
    return y.detach(), x.grad.clone(), w.grad.clone()


def test_matches_autocast_and_keeps_the_weight_gradient_unrounded() -> None:
    x, w, probe = _operands("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_y, ref_dx, ref_dw = _run(F.linear, x, w, probe)
    y, dx, dw = _run(lambda a, b: _MixedLinear.apply(a, b, torch.bfloat16), x, w, probe)
    assert y.dtype == ref_y.dtype == torch.bfloat16
    assert torch.equal(y, ref_y)
    assert dx.dtype == torch.float32 and torch.equal(dx, ref_dx)
    assert dw.dtype == torch.float32
    exact = _weight_grad_f64(x, probe)
    err = (dw.double() - exact).abs().max().item()
    ref_err = (ref_dw.double() - exact).abs().max().item()
    assert err < 1e-5 * exact.abs().max().item()  # float32 sums, not rounded to bf16
    assert ref_err > 10 * err  # autocast's is rounded (2⁻⁹ relative): the test can tell


def _path(x, w):  # type: ignore[no-untyped-def]
    """Which backward a ``mixed_linear`` call recorded: ``"mixed"`` or autocast's own."""
    y = mixed_linear(x, w)
    return "mixed" if type(y.grad_fn).__name__.startswith("_MixedLinear") else "autocast"


def test_the_cpu_keeps_autocast_path() -> None:
    x, w, _ = _operands("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _path(x, w) == "autocast"
        assert torch.equal(mixed_linear(x, w), F.linear(x, w))
    assert _path(x, w) == "autocast"


def test_backward_is_not_differentiated_again() -> None:
    x, w, probe = _operands("cpu")
    y = _MixedLinear.apply(x, w, torch.bfloat16)
    (dx,) = torch.autograd.grad(y, x, probe.to(y.dtype), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        dx.sum().backward()


def test_input_gradient_off_and_input_in_bf16() -> None:
    x, w, probe = _operands("cpu")
    xb = x.detach().to(torch.bfloat16)
    y = _MixedLinear.apply(xb, w, torch.bfloat16)
    y.backward(probe.to(y.dtype))
    assert w.grad is not None and w.grad.dtype == torch.float32
    exact = _weight_grad_f64(xb, probe)
    assert (w.grad.double() - exact).abs().max().item() < 1e-5 * exact.abs().max().item()


@pytest.mark.gpu
def test_which_cuda_calls_take_the_float32_gradient_path() -> None:
    x, w, _ = _operands("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert _path(x, w) == "mixed"
        assert _path(x, w.detach()) == "autocast"  # a frozen weight
        assert _path(x, w.detach().bfloat16().requires_grad_()) == "autocast"  # bf16 weight
        with torch.no_grad():
            assert mixed_linear(x, w).grad_fn is None
    with torch.autocast("cuda", dtype=torch.float16):
        assert _path(x, w) == "autocast"
    assert _path(x, w) == "autocast"  # autocast off


@pytest.mark.gpu
def test_linear_under_cuda_autocast() -> None:
    x, _, probe = _operands("cuda", n=96, d_in=64, d_out=32)
    layer = Linear(64, 32, device="cuda")
    w = layer.weight
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_y, ref_dx, ref_dw = _run(F.linear, x, w, probe)
        y, dx, dw = _run(lambda a, _: layer(a), x, w, probe)
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-2, atol=1e-3)
    exact = _weight_grad_f64(x, probe).cpu()
    scale = exact.abs().max().item()
    assert (dw.cpu().double() - exact).abs().max().item() < 1e-5 * scale
    assert (ref_dw.cpu().double() - exact).abs().max().item() < 1e-2 * scale
