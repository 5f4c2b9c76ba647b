"""Linear, Embedding, RMSNorm, SwiGLU against plain PyTorch and float64 math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_testing import rms_norm64

from lmforge.model.layers import Embedding, Linear, RMSNorm, SwiGLU, trunc_normal_


def test_linear_matches_f_linear() -> None:
    torch.manual_seed(0)
    lin = Linear(24, 40, dtype=torch.float64)
    assert lin.weight.shape == (40, 24)
    assert [n for n, _ in lin.named_parameters()] == ["weight"]  # no bias
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight), rtol=0, atol=0)
    torch.testing.assert_close(lin(x), x @ lin.weight.T)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_linear_init_is_truncated_normal_with_fan_in_std(scale: float) -> None:
    torch.manual_seed(0)
    w = Linear(400, 300, init_scale=scale).weight.detach()
    std = scale / math.sqrt(400)
    assert w.abs().max() <= 3 * std + 1e-7
    # a normal truncated at ±3σ has std 0.9866σ
    assert 0.97 * std < w.std() < 1.0 * std
    assert abs(w.mean()) < 0.01 * std * 10


def test_embedding_lookup_and_init() -> None:
    torch.manual_seed(0)
    emb = Embedding(500, 64, init_std=0.02)
    idx = torch.tensor([[0, 499, 7], [7, 7, 1]])
    torch.testing.assert_close(emb(idx), emb.weight[idx], rtol=0, atol=0)
    w = emb.weight.detach()
    assert w.abs().max() <= 0.06 + 1e-7 and 0.019 < w.std() < 0.0201


def test_rmsnorm_matches_torch_and_float64() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = torch.nn.RMSNorm(48, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(4, 7, 48) * 3
    torch.testing.assert_close(norm(x), ref(x))
    torch.testing.assert_close(
        norm(x).double(), rms_norm64(x, norm.weight, 1e-5), rtol=1e-6, atol=1e-6
    )
    assert torch.equal(RMSNorm(8).weight, torch.ones(8))


def test_rmsnorm_computes_in_float32_and_casts_back() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(256)
    x = (torch.randn(8, 256) * 100).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = rms_norm64(x.float(), norm.weight, norm.eps).to(torch.bfloat16)
    assert torch.equal(y, expected)


def test_swiglu_formula() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(16, 40, dtype=torch.float64)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    w1, w2, w3 = mlp.w1.weight, mlp.w2.weight, mlp.w3.weight
    assert (w1.shape, w2.shape, w3.shape) == ((40, 16), (16, 40), (40, 16))
    gate = x @ w1.T
    expected = ((gate * torch.sigmoid(gate)) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(mlp(x), expected)


def test_param_kinds_and_reset() -> None:
    assert (Linear.param_kind, Embedding.param_kind, RMSNorm.param_kind) == (
        "matrix",
        "embedding",
        "norm",
    )
    norm = RMSNorm(4)
    with torch.no_grad():
        norm.weight.zero_()
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(4))


def test_meta_device_then_materialise() -> None:
    lin = Linear(8, 4, device="meta")
    assert lin.weight.is_meta
    lin.to_empty(device="cpu")
    lin.reset_parameters()
    assert torch.isfinite(lin.weight).all() and lin.weight.abs().max() <= 3 / math.sqrt(8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(0, 4),
        lambda: Linear(4, 4, init_scale=0.0),
        lambda: Embedding(0, 4),
        lambda: RMSNorm(4, eps=0.0),
        lambda: trunc_normal_(torch.empty(2), -1.0),
    ],
)
def test_bad_arguments_raise(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        make()
