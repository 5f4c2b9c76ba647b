"""Quantizing a whole Transformer: what is swapped, the memory report, generation, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.model.generate import generate
from lmforge.model.layers import Embedding, Linear
from lmforge.model.lora import LoRAConfig, apply_lora
from lmforge.quant import (
    FORMATS,
    QuantError,
    QuantizedLinear,
    WeightBytes,
    quantization_report,
    quantize,
    quantized_modules,
    weight_bytes,
)

CONFIG = ModelConfig(vocab_size=128, context_length=32, d_model=64, n_layers=2, n_heads=4)


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = CONFIG if not overrides else ModelConfig(**{**CONFIG.to_dict(), **overrides})
    return Transformer(config).eval()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_linear_but_the_head_is_swapped(fmt: str) -> None:
    model = quantize(_model(), fmt)
    layers = quantized_modules(model)
    assert len(layers) == 2 * 7  # wq wk wv wo w1 w2 w3 per block
    assert not any(type(m) is Linear for m in model.modules() if m is not model.output)
    assert type(model.output) is Linear  # the head stays in float by default
    assert isinstance(model.tok_embeddings, Embedding)
    assert all(m.format == fmt for m in layers.values())
    assert not any(n.endswith("qweight") for n, _ in model.named_parameters())


def test_head_is_quantized_on_request_and_logits_still_work() -> None:
    model = quantize(_model(), "int8", include_head=True)
    assert isinstance(model.output, QuantizedLinear)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 8))
    out = model(idx, idx)
    assert out.logits is not None and out.logits.shape == (2, 8, CONFIG.vocab_size)
    assert torch.isfinite(out.loss).all()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_report_counts_bytes(fmt: str) -> None:
    before = _model()
    after = quantize(copy.deepcopy(before), fmt, include_head=True)
    report = quantization_report(before, after)
    linears = [m for m in before.modules() if isinstance(m, Linear)]
    fp32 = sum(4 * m.d_out * m.d_in for m in linears)
    assert report.linear_before == fp32
    assert report.linear_after == sum(m.d_out * m.d_in + 4 * m.d_out for m in linears)
    assert report.linear_ratio >= 3.5
    emb = 4 * CONFIG.vocab_size * CONFIG.d_model
    assert report.total_before - report.total_after == fp32 - report.linear_after
    assert report.total_after > emb  # the embedding stays in float
    assert report.formats == (fmt,) and report.n_quantized == len(linears)
    assert "smaller" in report.summary()


def test_report_from_weight_bytes_taken_before_quantizing_in_place() -> None:
    model = _model()
    before = weight_bytes(model)
    assert isinstance(before, WeightBytes)
    report = quantization_report(before, quantize(model, "int8"))
    assert report == quantization_report(_model(), model)


def test_tied_embedding_counts_once() -> None:
    model = _model(tie_embeddings=True)
    params = sum(p.numel() * 4 for p in model.parameters())  # parameters() dedups shared tensors
    assert weight_bytes(model).total == params


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_generation_runs_on_a_quantized_model(fmt: str) -> None:
    model = quantize(_model(), fmt, include_head=True)
    idx = torch.randint(0, CONFIG.vocab_size, (2, 5))
    greedy = generate(model, idx, 10, temperature=0)
    assert greedy.shape == (2, 15) and torch.equal(greedy[:, :5], idx)
    assert int(greedy.min()) >= 0 and int(greedy.max()) < CONFIG.vocab_size
    g = torch.Generator().manual_seed(0)
    sampled = generate(model, idx, 10, temperature=1.0, top_k=20, generator=g)
    assert int(sampled.max()) < CONFIG.vocab_size
    # the cache path and a full forward agree on the quantized model too
    logits = model(greedy[:, :-1]).logits
    assert logits is not None
    assert torch.equal(logits[:, 4:].argmax(-1), greedy[:, 5:])


def test_quantizing_twice_is_refused() -> None:
    model = quantize(_model(), "int8")
    with pytest.raises(QuantError, match="already quantized \\(int8"):
        quantize(model, "fp8")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(QuantError, match="unknown quantization format 'int4'.*fp8.*int8"):
        quantize(_model(), "int4")


def test_lora_layers_must_be_unloaded_first() -> None:
    model = apply_lora(_model(), LoRAConfig(rank=2))
    with pytest.raises(QuantError, match="LoRALinear.*unload_lora"):
        quantize(model, "int8")


def test_a_model_without_linear_layers_is_refused() -> None:
    with pytest.raises(QuantError, match="no Linear layer"):
        quantize(torch.nn.Sequential(torch.nn.ReLU()), "int8")


def test_report_refuses_an_unrelated_model() -> None:
    after = quantize(_model(), "int8")
    with pytest.raises(ValueError, match="no Linear layer 'layers.0"):
        quantization_report(torch.nn.Sequential(), after)
