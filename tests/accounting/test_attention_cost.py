"""KV-cache bytes and decoding-step cost of MHA, GQA, MQA and MLA."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.accounting import (
    AttentionShape,
    MLAShape,
    attention_cost,
    attention_cost_table,
    count_params,
    default_mla_shape,
)
from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache

GPT2 = ModelConfig(
    vocab_size=50304, context_length=1024, d_model=768, n_layers=12, n_heads=12, d_ff=2048
)
TINY = AttentionShape(d_model=4, n_heads=2)  # head_dim 2


def test_mha_by_hand() -> None:
    # d=4, h=2, k=2, g=2 (d_kv=4), b=2, n=3, fp32 (s=4), one layer.
    c = attention_cost(TINY, batch=2, seq=3, dtype="fp32")
    assert (c.kind, c.n_kv_heads) == ("mha", 2)
    # W = 2·d·h·k + 2·d·d_kv = 2·4·4 + 2·4·4 = 64 = 4·d²
    assert c.weight_bytes == 64 * 4
    # cache: 2·d_kv = 8 elements per token = 32 bytes; b·n = 6 tokens -> 192
    assert (c.kv_bytes_per_token, c.kv_bytes_total) == (32, 192)
    # FLOPs: 2·b·W + 4·b·n·h·k = 2·2·64 + 4·2·3·4 = 256 + 96 = 352
    assert c.decode_flops == 352
    # elements: W + 2·b·n·d_kv + b·(2d + 2hk + 2d_kv) = 64 + 48 + 2·24 = 160 -> 640 bytes
    assert c.decode_bytes == 640
    # no cache: 2·b·n·W + 4·b·n²·h·k = 2·2·3·64 + 4·2·9·4 = 768 + 288 = 1056
    assert c.decode_flops_no_cache == 1056
    # elements: W + b·n·(2d + 2hk + 2d_kv) = 64 + 6·24 = 208 -> 832 bytes
    assert c.decode_bytes_no_cache == 832
    assert c.intensity_with_cache == pytest.approx(352 / 640)
    assert c.intensity_no_cache == pytest.approx(1056 / 832)


def test_mqa_by_hand_and_layers_multiply() -> None:
    # g=1: d_kv=2, W = 2·4·4 + 2·4·2 = 48; two layers, bf16 (s=2), b=2, n=3.
    c = attention_cost(dataclasses.replace(TINY, n_layers=2), batch=2, seq=3, kind="mqa")
    assert (c.kind, c.n_kv_heads, c.dtype) == ("mqa", 1, "bf16")
    assert c.kv_bytes_per_token == 2 * (2 * 2) * 2  # layers · 2·d_kv · s
    # FLOPs per layer: 2·2·48 + 4·2·3·4 = 192 + 96 = 288
    assert c.decode_flops == 2 * 288
    # elements per layer: 48 + 2·2·3·2 + 2·(8 + 8 + 4) = 48 + 24 + 40 = 112
    assert c.decode_bytes == 2 * 112 * 2
    # no cache: 2·b·n·W + 4·b·n²·h·k = 2·2·3·48 + 4·2·9·4 = 576 + 288 = 864;
    # elements W + b·n·(2d + 2hk + 2d_kv) = 48 + 6·20 = 168
    assert c.decode_flops_no_cache == 2 * 864
    assert c.decode_bytes_no_cache == 2 * 168 * 2


def test_mla_by_hand() -> None:
    # d=4, h=2; d_c=2, no query compression, d_n=2, d_r=1, d_v=2; b=1, n=3, fp32.
    m = MLAShape(
        kv_lora_rank=2, q_lora_rank=0, qk_nope_head_dim=2, qk_rope_head_dim=1, v_head_dim=2
    )
    c = attention_cost(TINY, batch=1, seq=3, dtype="fp32", mla=m)
    assert (c.kind, c.n_kv_heads) == ("mla", None)
    # cache: d_c + d_r = 3 elements = 12 bytes per token, 3 tokens
    assert (c.kv_bytes_per_token, c.kv_bytes_total) == (12, 36)
    # W = d·h·(d_n+d_r) + d·(d_c+d_r) + d_c·h·(d_n+d_v) + h·d_v·d = 24 + 12 + 16 + 16 = 68
    assert c.weight_bytes == 68 * 4
    # absorbed: 2·b·W + 2·b·n·h·(2·d_c + d_r) = 136 + 2·3·2·5 = 136 + 60 = 196
    assert c.decode_flops == 196
    # acts: x, y 8 + q 6 + new entry 3 + o 4 = 21; absorbed query + latent out 2·h·d_c = 8;
    # elements = 68 + b·n·3 + 29 = 106
    assert c.decode_bytes == 106 * 4
    # training form on the prefix: 2·n·W + 2·n²·h·(d_n + d_r + d_v) = 408 + 180 = 588
    assert c.decode_flops_no_cache == 588
    # elements: W + n·(21 + h·(d_n + d_v) = 8) = 68 + 87 = 155
    assert c.decode_bytes_no_cache == 155 * 4


def test_q_lora_rank_adds_the_query_latent() -> None:
    m = MLAShape(
        kv_lora_rank=2, q_lora_rank=3, qk_nope_head_dim=2, qk_rope_head_dim=1, v_head_dim=2
    )
    c = attention_cost(TINY, batch=1, seq=3, dtype="fp32", mla=m)
    # W_q = d_cq·(d + h·(d_n + d_r)) = 3·(4 + 6) = 30 instead of 24
    assert c.weight_bytes == (68 - 24 + 30) * 4


@pytest.mark.parametrize(
    ("n_kv_heads", "dtype", "torch_dtype"),
    [(12, "bf16", torch.bfloat16), (4, "bf16", torch.bfloat16), (1, "fp32", torch.float32)],
)
def test_kv_bytes_equal_the_real_cache(
    n_kv_heads: int, dtype: str, torch_dtype: torch.dtype
) -> None:
    cfg = ModelConfig(
        vocab_size=64, context_length=32, d_model=48, n_layers=3, n_heads=12, n_kv_heads=n_kv_heads
    )
    batch, max_len = 2, 20
    cache = KVCache.for_model(cfg, batch, max_len)
    new = torch.zeros(batch, n_kv_heads, 1, cfg.head_dim, dtype=torch_dtype)
    for layer in range(cfg.n_layers):
        cache.update(layer, new, new)  # the buffers are allocated at the first write
    buffers = [t for t in cache.keys + cache.values if t is not None]
    assert len(buffers) == 2 * cfg.n_layers
    real = sum(t.numel() * t.element_size() for t in buffers)
    c = attention_cost(cfg, batch=batch, seq=max_len, dtype=dtype)
    assert c.kv_bytes_total == real
    assert c.kv_bytes_per_token * batch * max_len == real


def test_cache_sizes_mha_gqa_mqa() -> None:
    gqa_cfg = dataclasses.replace(GPT2, n_kv_heads=4)
    mha = attention_cost(GPT2, batch=8, seq=1024)
    gqa = attention_cost(gqa_cfg, batch=8, seq=1024)
    mqa = attention_cost(GPT2, batch=8, seq=1024, kind="mqa")
    assert (mha.kind, gqa.kind, mqa.kind) == ("mha", "gqa", "mqa")
    assert mha.kv_bytes_total == GPT2.n_heads * mqa.kv_bytes_total
    assert mha.kv_bytes_total == 3 * gqa.kv_bytes_total  # 12 / 4 heads
    assert mqa.kv_bytes_total < gqa.kv_bytes_total < mha.kv_bytes_total
    # MHA in bf16: 2 (k, v) · 768 · 12 layers · 2 bytes per token
    assert mha.kv_bytes_per_token == 2 * 768 * 12 * 2
    # kind overrides the config's n_kv_heads
    assert attention_cost(gqa_cfg, batch=8, seq=1024, kind="mha") == mha


def test_default_mla_is_gqa_with_2_25_groups() -> None:
    m = default_mla_shape(GPT2)
    assert (m.kv_lora_rank, m.qk_rope_head_dim, m.q_lora_rank) == (256, 32, 230)
    mla = attention_cost(GPT2, batch=1, seq=1, kind="mla")
    mqa = attention_cost(GPT2, batch=1, seq=1, kind="mqa")
    assert mla.kv_bytes_per_token / mqa.kv_bytes_per_token == 2.25  # DeepSeek-V2, Table 1


def test_decode_flops_match_the_forward_count() -> None:
    # One token at batch 1 attends T positions: forward FLOPs' attention part, 2·N_attn + 4·L·T·d.
    gqa_cfg = dataclasses.replace(GPT2, n_kv_heads=4)
    for cfg in (GPT2, gqa_cfg):
        c = attention_cost(cfg, batch=1, seq=1024)
        expected = 2 * count_params(cfg).attention + 4 * cfg.n_layers * 1024 * cfg.d_model
        assert c.decode_flops == expected
        assert c.weight_bytes == 2 * count_params(cfg).attention


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla"])
def test_intensity_rises_with_batch(kind: str) -> None:
    cfg = dataclasses.replace(GPT2, n_kv_heads=4)
    costs = [attention_cost(cfg, batch=b, seq=1024, kind=kind) for b in (1, 2, 8, 64)]
    with_cache = [c.intensity_with_cache for c in costs]
    no_cache = [c.intensity_no_cache for c in costs]
    assert with_cache == sorted(with_cache) and len(set(with_cache)) == len(with_cache)
    assert no_cache == sorted(no_cache) and len(set(no_cache)) == len(no_cache)
    # recomputing the prefix does far more FLOPs per byte (and far more FLOPs)
    assert all(c.intensity_no_cache > 10 * c.intensity_with_cache for c in costs)
    assert all(c.decode_flops_no_cache > c.decode_flops for c in costs)


def test_mqa_intensity_beats_mha_at_long_n() -> None:
    # Shazeer 2019: MHA's bytes/FLOP ~ n/d + 1/b, MQA's ~ 1/d + n/(d·h) + 1/b. At n >> d, b
    # large, MHA sits at ~2 FLOP per element (1 FLOP/B in bf16) and MQA near h times that.
    n, b = 1 << 20, 256
    mha = attention_cost(GPT2, batch=b, seq=n, kind="mha").intensity_with_cache
    gqa = attention_cost(GPT2, batch=b, seq=n, kind="gqa").intensity_with_cache
    mqa = attention_cost(GPT2, batch=b, seq=n, kind="mqa").intensity_with_cache
    assert gqa == mha  # GPT-2's config is MHA
    assert mha == pytest.approx(1.0, rel=0.01)
    assert 0.9 * GPT2.n_heads < mqa / mha < GPT2.n_heads
    gqa4 = attention_cost(dataclasses.replace(GPT2, n_kv_heads=4), batch=b, seq=n)
    assert mha < gqa4.intensity_with_cache < mqa
    short = attention_cost(GPT2, batch=1, seq=16, kind="mha").intensity_with_cache
    assert short == pytest.approx(1.0, rel=0.05)  # batch 1: weights dominate, ~2 FLOP/element


@settings(max_examples=40, deadline=None)
@given(
    heads=st.sampled_from([(8, 8), (8, 2), (8, 1)]),
    head_dim=st.sampled_from([2, 16, 64]),
    layers=st.integers(1, 4),
    batch=st.integers(1, 64),
    seq=st.integers(1, 4096),
)
def test_invariants(
    heads: tuple[int, int], head_dim: int, layers: int, batch: int, seq: int
) -> None:
    n_heads, n_kv = heads
    a = AttentionShape(
        d_model=n_heads * head_dim, n_heads=n_heads, n_kv_heads=n_kv, n_layers=layers
    )
    for kind in ("mha", "gqa", "mqa", "mla"):
        c = attention_cost(a, batch=batch, seq=seq, kind=kind)
        assert c.kv_bytes_total == c.kv_bytes_per_token * batch * seq
        assert c.decode_bytes >= c.weight_bytes + c.kv_bytes_total  # reads weights and cache
        if kind != "mla":  # absorbed MLA attends with width 2·d_c + d_r: more at n = 1
            assert c.decode_flops_no_cache >= c.decode_flops
        bigger = attention_cost(a, batch=batch + 1, seq=seq, kind=kind)
        assert bigger.intensity_with_cache > c.intensity_with_cache


def test_table_rows() -> None:
    table = attention_cost_table(GPT2, 8, 1024)
    rows = [line.split()[0] for line in table.splitlines()[2:]]
    assert rows == ["MHA", "GQA", "GQA", "MQA", "MLA"]  # GQA with 12/2 and 12/4 heads
    assert "batch 8, seq 1024, bf16, 12 layers" in table
    assert "288.00 MiB" in table  # MHA cache: 8 · 1024 · 36 KiB
    gqa_table = attention_cost_table(dataclasses.replace(GPT2, n_kv_heads=4), 1, 64, "fp32")
    first_rows = [line.split()[:2] for line in gqa_table.splitlines()[2:4]]
    assert first_rows == [["MHA", "12"], ["GQA", "4"]]  # the config's own GQA only
    three = attention_cost_table(AttentionShape(d_model=24, n_heads=3), 1, 8)
    assert [line.split()[0] for line in three.splitlines()[2:]] == ["MHA", "MQA", "MLA"]


def test_shape_matches_config() -> None:
    assert attention_cost(AttentionShape.from_config(GPT2), batch=2, seq=64) == attention_cost(
        GPT2, batch=2, seq=64
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch": 0, "seq": 8}, "batch"),
        ({"batch": 1, "seq": -1}, "seq"),
        ({"batch": 1, "seq": 8, "dtype": "int4"}, "dtype"),
        ({"batch": 1, "seq": 8, "kind": "gqa2"}, "kind"),
        ({"batch": 1, "seq": 8, "kind": "mha", "mla": default_mla_shape(GPT2)}, "kind='mla'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        attention_cost(GPT2, **kwargs)  # type: ignore[arg-type]


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        AttentionShape(d_model=64, n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="or pass head_dim"):
        AttentionShape(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        MLAShape(
            kv_lora_rank=0, q_lora_rank=0, qk_nope_head_dim=2, qk_rope_head_dim=1, v_head_dim=2
        )
    with pytest.raises(ValueError, match="ModelConfig or an AttentionShape"):
        attention_cost({"d_model": 4}, batch=1, seq=1)  # type: ignore[arg-type]
