"""Exports: lmforge's safetensors round trip, and HF Llama folders with the same logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmforge.model import export
from lmforge.model.config import ModelConfig
from lmforge.model.export import (
    adjacent_to_half_rope_rows,
    export_hf_llama,
    export_safetensors,
    load_safetensors,
)
from lmforge.model.layers import cast_parameters_
from lmforge.model.transformer import Transformer

BASE = dict(vocab_size=96, context_length=32, d_model=64, n_layers=2, n_heads=4, d_ff=96)

HF_CASES = {
    "mha": dict(BASE, eot_id=95),
    "gqa": dict(BASE, n_kv_heads=2, rope_theta=500.0, norm_eps=1e-6),
    "tied": dict(BASE, n_kv_heads=1, tie_embeddings=True),
}


def _model(seed: int = 0, **overrides: Any) -> Transformer:
    """A small float32 model, random norm weights (not all ones) so their mapping is tested."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**BASE, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def _ids(vocab_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


# ------------------------------------------------------------------------ lmforge safetensors


def test_bf16_weights_round_trip_with_float32_buffers(tmp_path: Path) -> None:
    """bf16 parameters (``train.param_dtype``, ``lmforge export --dtype bfloat16``) load back in
    bf16, beside an MoE router's float32 weight and bias, and RoPE's tables stay float32 as in
    training: the same logits as the exported model. An export whose router weight is bf16 too
    (every parameter cast) loads the same way, its router widened exactly."""
    from lmforge.model.moe import MoEConfig

    moe = MoEConfig(n_routed_experts=4, top_k=2, router="sigmoid")
    model = _model(moe=moe)
    cast_parameters_(model, torch.bfloat16)
    routers = {k for k, _ in model.named_parameters() if k.endswith("router.weight")}
    assert len(routers) == 2
    assert all(p.dtype == torch.float32 for k, p in model.named_parameters() if k in routers)
    ids = _ids(BASE["vocab_size"])
    for name, every in (("bf16", False), ("all-bf16", True)):
        if every:
            with torch.no_grad():
                for p in model.parameters():
                    p.data = p.data.bfloat16()
        loaded = load_safetensors(export_safetensors(model, tmp_path / name))
        dtypes = {k: p.dtype for k, p in loaded.named_parameters()}
        assert {dtypes.pop(k) for k in routers} == {torch.float32}  # keeps_float32
        assert set(dtypes.values()) == {torch.bfloat16}
        buffers = dict(loaded.named_buffers())
        assert buffers["layers.0.mlp.router.expert_bias"].dtype == torch.float32
        assert all(b.dtype == torch.float32 for k, b in buffers.items() if k.startswith("rope."))
        assert torch.equal(_logits(loaded, ids), _logits(model, ids))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_safetensors_round_trip_gives_identical_logits(tmp_path: Path, tied: bool) -> None:
    model = _model(tie_embeddings=tied, n_kv_heads=2)
    out = export_safetensors(model, tmp_path / "new" / "dir")
    assert out == tmp_path / "new" / "dir"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text()) == model.config.to_dict()
    loaded = load_safetensors(out)
    assert loaded.config == model.config
    ids = _ids(BASE["vocab_size"])
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_safetensors_writes_tied_weights_once(tmp_path: Path) -> None:
    model = _model(tie_embeddings=True)
    export_safetensors(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "tok_embeddings.weight" in keys and "output.weight" not in keys
    loaded = load_safetensors(tmp_path)
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_shared_tensors_are_written_once_and_restored(tmp_path: Path) -> None:
    # The real Transformer ties by reusing the embedding (no output.weight); a model that ties
    # by sharing a Parameter under two names must still export, as one tensor plus an alias.
    t = torch.arange(12.0).reshape(4, 3)
    tensors, aliases = export._dedup_shared({"a": t, "b": t, "c": t[1:], "d": t.T})
    assert sorted(tensors) == ["a", "c", "d"] and aliases == {"b": "a"}
    assert tensors["c"].untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    save_file(tensors, tmp_path / "x.safetensors")  # raises on shared memory
    assert torch.equal(load_file(tmp_path / "x.safetensors")["d"], t.T)


def test_safetensors_overwrites_an_export(tmp_path: Path) -> None:
    export_safetensors(_model(seed=0), tmp_path)
    second = _model(seed=1)
    export_safetensors(second, tmp_path)
    ids = _ids(BASE["vocab_size"])
    assert torch.equal(_logits(load_safetensors(tmp_path), ids), _logits(second, ids))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_safetensors_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export_safetensors"):
        load_safetensors(tmp_path)
    export_safetensors(_model(), tmp_path)
    ModelConfig(**{**BASE, "d_model": 128}).save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="does not fit"):
        load_safetensors(tmp_path)


def test_export_refuses_a_module_without_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lmforge Transformer"):
        export_safetensors(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="lmforge Transformer"):
        export_hf_llama(torch.nn.Linear(2, 2), tmp_path)


# ----------------------------------------------------------------------- Hugging Face Llama


def test_rope_row_permutation_puts_even_rows_first() -> None:
    w = torch.arange(2 * 8, dtype=torch.float32)[:, None].expand(-1, 3)  # 2 heads of dim 8
    rows = adjacent_to_half_rope_rows(w, head_dim=8)[:, 0].long().tolist()
    assert rows == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
    with pytest.raises(ValueError, match="RoPE heads"):
        adjacent_to_half_rope_rows(w, head_dim=6)


@pytest.fixture(scope="module")
def llama() -> Any:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.LlamaForCausalLM


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_llama_gives_the_same_logits(tmp_path: Path, llama: Any, case: str) -> None:
    model = _model(**HF_CASES[case])
    export_hf_llama(model, tmp_path)
    hf = llama.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.model.embed_tokens.weight.dtype == torch.float32
    ids = _ids(model.config.vocab_size)
    diff = (_logits(hf, ids) - _logits(model, ids)).abs().max().item()
    assert diff < 1e-4, f"{case}: max |logit diff| = {diff}"


def test_hf_llama_logits_differ_without_the_rope_permutation(
    tmp_path: Path, llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the test above: it would catch a missing (or wrong) permutation.
    monkeypatch.setattr(export, "adjacent_to_half_rope_rows", lambda w, head_dim: w)
    model = _model(**HF_CASES["gqa"])
    export_hf_llama(model, tmp_path)
    hf = llama.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _ids(model.config.vocab_size)
    assert (_logits(hf, ids) - _logits(model, ids)).abs().max().item() > 1e-3


def test_hf_llama_files(tmp_path: Path) -> None:
    model = _model(**HF_CASES["tied"])
    export_hf_llama(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (64, 1, 96)
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert "model.layers.1.mlp.down_proj.weight" in keys


@pytest.mark.parametrize(
    ("option", "value"), [("qk_norm", True), ("logit_softcap", 30.0), ("parallel_block", True)]
)
def test_hf_llama_refuses_what_llama_cannot_express(
    tmp_path: Path, option: str, value: object
) -> None:
    with pytest.raises(ValueError, match=option):
        export_hf_llama(_model(**{option: value}), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_hf_llama_accepts_training_only_options(tmp_path: Path) -> None:
    model = _model(document_mask=True, eot_id=0, z_loss=1e-4)
    export_hf_llama(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["eos_token_id"] == 0


def test_hf_llama_with_tokenizer(tmp_path: Path) -> None:
    auto = pytest.importorskip("transformers").AutoTokenizer
    from lmforge.tokenizer import Tokenizer

    texts = ["the cat sat on the mat. " * 4, "a dog ran in the fog; the cat ran too. " * 4]
    tok = Tokenizer.train(iter(texts), 280, progress=False)
    eot = tok.special_tokens["<|endoftext|>"]
    model = _model(vocab_size=320, eot_id=eot)
    export_hf_llama(model, tmp_path, tokenizer=tok)
    hf_tok = auto.from_pretrained(tmp_path)
    text = "the cat ran in the fog<|endoftext|>a dog sat"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token == "<|endoftext|>"

    with pytest.raises(ValueError, match="vocab_size=256"):
        export_hf_llama(_model(vocab_size=256), tmp_path / "small", tokenizer=tok)
    with pytest.raises(ValueError, match="eot_id=3"):
        export_hf_llama(_model(vocab_size=320, eot_id=3), tmp_path / "eot", tokenizer=tok)
