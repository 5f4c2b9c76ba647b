"""Saving and loading quantized models: identical logits after a round trip, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.quant import (
    QUANTIZED_FILE,
    QuantError,
    load_quantized,
    quantize,
    quantized_modules,
    save_quantized,
)

CONFIG = ModelConfig(vocab_size=128, context_length=32, d_model=64, n_layers=2, n_heads=4)


@pytest.mark.parametrize(("fmt", "head"), [("int8", False), ("int8", True), ("fp8", True)])
def test_round_trip_gives_identical_logits(tmp_path: Path, fmt: str, head: bool) -> None:
    torch.manual_seed(0)
    model = quantize(Transformer(CONFIG).eval(), fmt, include_head=head)
    path = save_quantized(model, tmp_path / "q")
    assert path == tmp_path / "q" / QUANTIZED_FILE
    assert ModelConfig.load(tmp_path / "q" / "config.json") == CONFIG
    assert not list((tmp_path / "q").glob(".*"))  # no temp files left behind
    loaded = load_quantized(tmp_path / "q")
    assert set(quantized_modules(loaded)) == set(quantized_modules(model))
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype, name
    idx = torch.randint(0, CONFIG.vocab_size, (2, 16))
    assert torch.equal(loaded(idx).logits, model(idx).logits)
    assert torch.equal(load_quantized(path)(idx).logits, model(idx).logits)


def test_saving_a_float_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QuantError, match="quantized to one format, found none"):
        save_quantized(Transformer(CONFIG), tmp_path)


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no quantized model"):
        load_quantized(tmp_path)
    (tmp_path / QUANTIZED_FILE).write_bytes(b"not a torch file")
    with pytest.raises(QuantError, match="not a readable quantized model"):
        load_quantized(tmp_path)
    torch.save({"format": "something-else"}, tmp_path / QUANTIZED_FILE)
    with pytest.raises(QuantError, match="not an lmforge quantized model"):
        load_quantized(tmp_path)


def test_newer_version_and_unknown_format_are_refused(tmp_path: Path) -> None:
    model = quantize(Transformer(CONFIG), "int8")
    path = save_quantized(model, tmp_path)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 99}, path)
    with pytest.raises(QuantError, match="version 99 is newer"):
        load_quantized(tmp_path)
    torch.save({**payload, "dtype": "load"}, path)
    with pytest.raises(QuantError, match="unknown weight dtype 'load'"):
        load_quantized(tmp_path)
    torch.save({**payload, "quant_format": "int3"}, path)
    with pytest.raises(QuantError, match="unknown quantization format 'int3'"):
        load_quantized(tmp_path)
    state = dict(payload["state_dict"])
    state.pop("layers.0.mlp.w1.scale")
    torch.save({**payload, "state_dict": state}, path)
    with pytest.raises(QuantError, match="do not fit the model"):
        load_quantized(tmp_path)


def test_bfloat16_model_round_trips_with_its_dtype(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quantize(Transformer(CONFIG, dtype=torch.bfloat16).eval(), "int8", include_head=True)
    assert model.head_weight.dtype == torch.bfloat16  # the dequantized head, original dtype
    loaded = load_quantized(save_quantized(model, tmp_path))
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    idx = torch.randint(0, CONFIG.vocab_size, (1, 8))
    assert torch.equal(loaded(idx).logits, model(idx).logits)
