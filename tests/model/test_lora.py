"""LoRA adapters: exact zero-init, freezing, counts, merge/unmerge, adapter files, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from model_testing import tiny_model

from lmforge.model import Linear, Transformer
from lmforge.model.lora import (
    LoRAConfig,
    LoRAError,
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameters,
    unload_lora,
    unmerge_lora,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matmuls on a loaded 2-core CI box: OpenMP's second thread costs 100x in spin-waits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _idx(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 67, (2, 16), generator=g)


def _randomise_adapters(model: torch.nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def test_zero_initialised_adapter_leaves_output_unchanged() -> None:
    model = tiny_model(dtype=torch.float32)
    idx = _idx()
    before = model(idx).logits
    apply_lora(model, LoRAConfig(rank=4, targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3")))
    assert torch.equal(model(idx).logits, before)
    wq = model.get_submodule("layers.0.attention.wq")
    assert isinstance(wq, LoRALinear)
    assert wq.lora_A.abs().sum() > 0  # A is random, only B starts at zero


def test_names_kept_and_only_adapters_trainable() -> None:
    model = tiny_model(dtype=torch.float32)
    base_names = {n for n, _ in model.named_parameters()}
    apply_lora(model, LoRAConfig(rank=2, targets=("wq", "attention.wv")))
    names = {n: p for n, p in model.named_parameters()}
    assert base_names <= set(names)
    assert isinstance(model.get_submodule("layers.1.attention.wq"), LoRALinear)
    assert type(model.get_submodule("layers.1.attention.wk")) is Linear
    trainable = sorted(n for n, p in names.items() if p.requires_grad)
    expected = sorted(
        f"layers.{i}.attention.{w}.lora_{ab}" for i in (0, 1) for w in ("wq", "wv") for ab in "AB"
    )
    assert trainable == expected
    assert set(Transformer.param_kinds(model)) == set(names)  # every param still has a kind


def test_trainable_parameter_count_is_hand_computed() -> None:
    # d_model 32, 4 heads of 8, GQA with 2 kv heads: wq 32->32, wv 32->16, 2 layers, r = 3.
    model = tiny_model(dtype=torch.float32, n_kv_heads=2)
    apply_lora(model, LoRAConfig(rank=3, targets=("wq", "wv")))
    per_layer = 3 * (32 + 32) + 3 * (32 + 16)
    assert trainable_parameters(model) == 2 * per_layer == 672


def test_merge_equals_unmerged_and_unmerge_is_exact() -> None:
    model = tiny_model(dtype=torch.float32)
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    _randomise_adapters(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    idx = _idx()
    unmerged = model(idx).logits
    merge_lora(model)
    wq = model.get_submodule("layers.0.attention.wq")
    assert isinstance(wq, LoRALinear) and wq.merged
    assert not torch.equal(wq.weight, base["layers.0.attention.wq.weight"])
    torch.testing.assert_close(model(idx).logits, unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            assert torch.equal(p, base[n]), n
    assert torch.equal(model(idx).logits, unmerged)


def test_unload_gives_plain_model_with_merged_weights() -> None:
    model = tiny_model(dtype=torch.float32)
    apply_lora(model, LoRAConfig(rank=4))
    _randomise_adapters(model)
    idx = _idx()
    expected = model(idx).logits
    plain_names = {n for n, _ in tiny_model(dtype=torch.float32).named_parameters()}
    unload_lora(model)
    assert {n for n, _ in model.named_parameters()} == plain_names
    assert type(model.get_submodule("layers.0.attention.wq")) is Linear
    torch.testing.assert_close(model(idx).logits, expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_holds_only_adapters(tmp_path: Path) -> None:
    config = LoRAConfig(rank=2, alpha=4.0, dropout=0.1, targets=("wq", "wv", "w2"))
    model = apply_lora(tiny_model(dtype=torch.float32), config)
    _randomise_adapters(model)
    path = tmp_path / "lora.pt"
    save_lora(model, path)
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == config.to_dict()
    assert set(payload["state_dict"]) == set(lora_state_dict(model))
    assert all(k.endswith(("lora_A", "lora_B")) for k in payload["state_dict"])
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    assert not model.get_submodule("layers.0.attention.wq").training  # eval, as the base was

    fresh = tiny_model(dtype=torch.float32)  # same seed: same base weights
    load_lora(fresh, path)
    for k, v in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[k], v)
    idx = _idx()
    assert torch.equal(fresh(idx).logits, model(idx).logits)


def test_load_refuses_mismatched_file(tmp_path: Path) -> None:
    path = tmp_path / "lora.pt"
    save_lora(apply_lora(tiny_model(dtype=torch.float32), LoRAConfig(rank=2)), path)
    other = apply_lora(tiny_model(dtype=torch.float32), LoRAConfig(rank=4))
    with pytest.raises(LoRAError, match="holds adapters for"):
        load_lora(other, path)
    wide = tiny_model(dtype=torch.float32, d_model=64)
    with pytest.raises(LoRAError, match="has shape"):
        load_lora(wide, path)
    with pytest.raises(FileNotFoundError):
        load_lora(tiny_model(), tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(LoRAError, match="not an lmforge LoRA"):
        load_lora(tiny_model(), tmp_path / "junk.pt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rank=0), "rank must be an integer >= 1"),
        (dict(rank=2.0), "rank must be an integer >= 1"),
        (dict(alpha=0.0), "alpha"),
        (dict(dropout=1.0), "dropout"),
        (dict(targets=()), "targets"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(LoRAError, match=match):
        LoRAConfig(**kwargs)


def test_model_errors() -> None:
    model = tiny_model(dtype=torch.float32)
    with pytest.raises(LoRAError, match=r"no Linear module matches .*'wq'"):
        apply_lora(model, LoRAConfig(targets=("q_proj",)))
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on failure
    with pytest.raises(LoRAError, match="exceeds min"):  # wv is 32 -> 8 with one kv head
        apply_lora(model_mqa := tiny_model(dtype=torch.float32, n_kv_heads=1), LoRAConfig(rank=9))
    assert all(p.requires_grad for p in model_mqa.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model_mqa.modules())
    with pytest.raises(LoRAError, match="no LoRA adapters"):
        merge_lora(model)
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(LoRAError, match="already has LoRA"):
        apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(LoRAError, match="nothing to unmerge"):
        unmerge_lora(model)
    merge_lora(model)
    with pytest.raises(LoRAError, match="already merged"):
        merge_lora(model)
    assert isinstance(LoRAError("x"), ValueError)


@given(
    rank=st.integers(1, 6),
    alpha=st.floats(0.5, 64.0),
    d_in=st.integers(6, 24),
    d_out=st.integers(6, 24),
    seed=st.integers(0, 2**16),
)
def test_linear_merge_round_trip_property(
    rank: int, alpha: float, d_in: int, d_out: int, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = LoRALinear(Linear(d_in, d_out), LoRAConfig(rank=rank, alpha=alpha))
    torch.nn.init.normal_(layer.lora_B)
    base = layer.weight.detach().clone()
    x = torch.randn(5, d_in)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5 * max(1.0, alpha / rank))
    layer.unmerge()
    assert torch.equal(layer.weight, base)
