"""Parameter counts against hand-computed sums, a plain torch model, and the real model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_gpt import ReferenceGPT

from lmforge.accounting import count_params, estimate_12ld2
from lmforge.model.config import ModelConfig


def _cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        vocab_size=100, context_length=16, d_model=8, n_layers=2, n_heads=2, d_ff=24
    )
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


CONFIGS = {
    "mha": _cfg(),
    "gqa": _cfg(d_model=16, n_heads=4, n_kv_heads=2, d_ff=40),
    "mqa-qknorm": _cfg(d_model=16, n_heads=4, n_kv_heads=1, qk_norm=True),
    "tied": _cfg(tie_embeddings=True),
    "tied-gqa-qknorm": _cfg(d_model=32, n_heads=4, n_kv_heads=2, qk_norm=True, tie_embeddings=True),
    "parallel": _cfg(parallel_block=True),
    "default-d_ff": _cfg(d_model=64, n_heads=4, d_ff=None, n_layers=3),
}


def test_hand_counted_small_mha() -> None:
    # V=100, d=8, L=2, h=2 (hd=4), kv=2, f=24, untied.
    pc = count_params(CONFIGS["mha"])
    assert pc.embedding == 800
    assert pc.attention == 2 * (8 * 8 + 8 * 8 + 8 * 8 + 8 * 8)  # wq wk wv wo
    assert pc.mlp == 2 * 3 * 8 * 24
    assert pc.norms == 2 * 2 * 8 + 8
    assert pc.head == 800
    assert pc.total == 800 + 512 + 1152 + 40 + 800
    assert pc.non_embedding == pc.total - 800
    assert pc.flops_params == pc.non_embedding


def test_hand_counted_gqa_qknorm_tied() -> None:
    # d=32, h=4 (hd=8), kv=2 (kv dim 16), f=24, L=2, tied, qk_norm.
    pc = count_params(CONFIGS["tied-gqa-qknorm"])
    assert pc.attention == 2 * (32 * 32 * 2 + 2 * 16 * 32)
    assert pc.norms == 2 * (2 * 32 + 2 * 8) + 32
    assert pc.head == 0 and pc.tied_head
    assert pc.total == 100 * 32 + pc.attention + pc.mlp + pc.norms
    # The tied matrix is stored once but multiplied as the head: 6N counts it.
    assert pc.flops_params == pc.non_embedding + 100 * 32


def test_parallel_block_has_one_norm_per_block() -> None:
    assert count_params(CONFIGS["parallel"]).norms == 2 * 8 + 8


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_plain_torch_model(name: str) -> None:
    cfg = CONFIGS[name]
    if cfg.parallel_block:
        pytest.skip("the reference model has sequential blocks only")
    with torch.device("meta"):
        model = ReferenceGPT(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_lmforge_transformer(name: str) -> None:
    transformer = pytest.importorskip("lmforge.model.transformer")
    cfg = CONFIGS[name]
    with torch.device("meta"):
        model = transformer.Transformer(cfg)
    pc = count_params(cfg)
    assert pc.total == sum(p.numel() for p in model.parameters())
    if hasattr(model, "num_params"):  # its non-embedding count is our 6N count
        assert pc.flops_params == model.num_params(non_embedding=True)


def test_12ld2_is_exact_for_swiglu_8_thirds_and_gpt2_shape() -> None:
    cfg = ModelConfig(vocab_size=50304, context_length=1024, d_model=768, n_layers=12, n_heads=12)
    assert cfg.d_ff == 2048  # 8/3 · 768, already a multiple of 64
    pc = count_params(cfg)
    assert pc.blocks_matmul == estimate_12ld2(cfg) == 12 * 12 * 768**2


def test_12ld2_is_off_for_swiglu_4d_and_gqa() -> None:
    wide = _cfg(d_model=64, n_heads=4, d_ff=256)  # SwiGLU at 4d: 4d² + 12d² = 16d²
    assert count_params(wide).blocks_matmul == 16 * 2 * 64**2
    gqa = _cfg(d_model=64, n_heads=8, n_kv_heads=2, d_ff=None)
    assert count_params(gqa).blocks_matmul < estimate_12ld2(gqa)


@given(
    d_head=st.sampled_from([2, 4, 8]),
    n_heads=st.sampled_from([1, 2, 4, 8]),
    kv_div=st.sampled_from([1, 2, 4, 8]),
    n_layers=st.integers(1, 3),
    d_ff=st.integers(1, 50),
    vocab=st.integers(1, 70),
    tied=st.booleans(),
    qk_norm=st.booleans(),
    parallel=st.booleans(),
)
def test_parts_add_up(
    d_head: int,
    n_heads: int,
    kv_div: int,
    n_layers: int,
    d_ff: int,
    vocab: int,
    tied: bool,
    qk_norm: bool,
    parallel: bool,
) -> None:
    if n_heads % kv_div:
        return
    cfg = ModelConfig(
        vocab_size=vocab,
        context_length=8,
        d_model=d_head * n_heads,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads // kv_div,
        d_ff=d_ff,
        tie_embeddings=tied,
        qk_norm=qk_norm,
        parallel_block=parallel,
    )
    pc = count_params(cfg)
    assert pc.total == pc.embedding + pc.attention + pc.mlp + pc.norms + pc.head
    assert pc.flops_params == pc.total - pc.embedding + (pc.embedding if tied else 0)
