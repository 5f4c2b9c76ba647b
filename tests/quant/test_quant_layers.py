"""Int8 and fp8 weight quantization: the element-wise error bounds and the layers' forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lmforge.model.layers import Linear
from lmforge.quant import (
    Fp8Linear,
    Int8Linear,
    QuantError,
    fp8_matmul_supported,
    quantize_fp8_weight,
    quantize_int8_weight,
)

FP8_SUBNORMAL_HALF_STEP = 2.0**-10  # half the e4m3 subnormal spacing 2^-9


def _weight(seed: int, d_out: int, d_in: int, spread: float) -> torch.Tensor:
    """A weight whose rows differ in scale by up to ``exp(spread)``, with a few outliers."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * torch.exp(
        spread * torch.rand(d_out, 1, generator=g)
    )
    w[0, 0] *= 20  # an outlier coarsens only its own row's grid
    return w


shapes = st.tuples(
    st.integers(0, 2**16), st.integers(1, 24), st.integers(1, 40), st.floats(0.0, 8.0)
)


@given(shapes)
def test_int8_error_is_at_most_half_a_step_per_element(args: tuple[int, int, int, float]) -> None:
    w = _weight(*args).double()
    q, scale = quantize_int8_weight(w.float())
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    s = scale.double()[:, None]
    err = (w.float().double() - q.double() * s).abs()  # q·s is exact in float64
    assert bool((err <= s / 2 * (1 + 1e-12)).all())
    # each row's absmax lands exactly on the grid's end
    assert bool((q.abs().amax(dim=1) == 127).all())


@given(shapes)
def test_int8_relative_error_within_derived_bound(args: tuple[int, int, int, float]) -> None:
    w = _weight(*args)
    q, scale = quantize_int8_weight(w)
    deq = q.double() * scale.double()[:, None]
    rel = (w.double() - deq).norm() / w.double().norm()
    # element error <= s_r / 2 gives ||W - Ŵ||_F <= sqrt(d_in · Σ_r s_r² / 4)
    bound = math.sqrt(w.shape[1] * float((scale.double() ** 2).sum()) / 4) / float(
        w.double().norm()
    )
    assert float(rel) <= bound * (1 + 1e-9)


@given(shapes)
def test_fp8_error_is_at_most_half_an_ulp_per_element(args: tuple[int, int, int, float]) -> None:
    w = _weight(*args)
    q, scale = quantize_fp8_weight(w)
    assert q.dtype == torch.float8_e4m3fn and float(q.float().abs().max()) <= 448
    s = scale.double()[:, None]
    x = w.double() / s  # the weight in units of the row's scale
    err = (x - q.double()).abs()
    bound = torch.maximum(x.abs() * 2.0**-4, torch.full_like(x, FP8_SUBNORMAL_HALF_STEP))
    assert bool((err <= bound * (1 + 1e-6)).all())


@pytest.mark.parametrize("quant", [quantize_int8_weight, quantize_fp8_weight])
def test_zero_rows_stay_zero(quant) -> None:
    w = torch.randn(4, 16)
    w[2] = 0
    q, scale = quant(w)
    assert float(scale[2]) == 1.0
    assert bool((q[2].float() == 0).all())


@pytest.mark.parametrize("quant", [quantize_int8_weight, quantize_fp8_weight])
def test_bad_weights_are_refused(quant) -> None:
    with pytest.raises(ValueError, match="floating-point"):
        quant(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="floating-point"):
        quant(torch.ones(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        quant(torch.tensor([[1.0, float("nan")]]))


@pytest.mark.parametrize("cls", [Int8Linear, Fp8Linear])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_linear_with_dequantized_weight(cls, dtype) -> None:
    torch.manual_seed(0)
    linear = Linear(48, 32)
    layer = cls.from_linear(linear)
    x = torch.randn(3, 5, 48, dtype=dtype)
    deq = layer.qweight.to(torch.float32) * layer.scale[:, None]
    assert torch.equal(layer(x), F.linear(x, deq.to(dtype)))
    assert torch.equal(layer.weight, deq)  # the weight property, in the original dtype
    assert layer.weight.dtype == torch.float32
    assert "format=" in repr(layer)


def test_layer_checks_its_tensors() -> None:
    with pytest.raises(QuantError, match="2-D torch.int8"):
        Int8Linear(torch.zeros(4, 4), torch.ones(4), dtype=torch.float32)
    with pytest.raises(QuantError, match="scale must be float32"):
        Int8Linear(torch.zeros(4, 4, dtype=torch.int8), torch.ones(3), dtype=torch.float32)


@pytest.mark.gpu
def test_fp8_matmul_on_gpu_close_to_dequantized() -> None:
    if not fp8_matmul_supported("cuda"):
        pytest.skip("fp8 matmul needs compute capability >= 8.9")
    torch.manual_seed(0)
    layer = Fp8Linear.from_linear(Linear(256, 128, device="cuda"))
    x = torch.randn(4, 7, 256, device="cuda", dtype=torch.bfloat16)
    reference = layer(x).float()  # dequantize path
    layer.fp8_matmul = True
    assert layer._scaled_mm_applies(x)
    fast = layer(x).float()
    assert fast.shape == reference.shape and fast.dtype == torch.float32
    rel = (fast - reference).norm() / reference.norm()
    assert float(rel) < 0.1  # activations are quantized to e4m3 too (relative step 2^-4)
