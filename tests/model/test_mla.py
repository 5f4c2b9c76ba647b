"""Multi-head latent attention: config checks, shapes, a float64 reference written with plain
ops, cached == uncached (absorbed and naive decoding), cache bytes == accounting, generation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from model_testing import complex_rope, rms_norm64, tiny_config, tiny_model, tokens

from lmforge.accounting import attention_cost, count_params
from lmforge.model import LatentKVCache, MLAConfig, ModelConfig, MultiHeadLatentAttention
from lmforge.model.generate import generate
from lmforge.model.kv_cache import KVCache
from lmforge.model.rope import RotaryEmbedding

# q_lora_rank 0 (DeepSeek-V2-Lite: no query latent) and 12; widths all different on purpose.
MLA_SHAPES: dict[str, dict[str, int]] = {
    "q_latent": dict(q_lora_rank=12, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4,
                     v_head_dim=5),
    "no_q_latent": dict(q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6,
                        v_head_dim=8),
}  # fmt: skip


def mla_model(shape: str = "q_latent", **kw: Any) -> Any:
    return tiny_model(attention="mla", mla=MLAConfig(**MLA_SHAPES[shape]), **kw)


def mla64(attn: MultiHeadLatentAttention, x: torch.Tensor, theta: float = 1e4) -> torch.Tensor:
    """MLA written out with plain float64 ops and a loop over heads (DeepSeek-V2 eqs. 9–19)."""
    x = x.double()
    b, t, _ = x.shape
    h, dn, dr, dv, dc = attn.n_heads, attn.nope_dim, attn.rope_dim, attn.v_dim, attn.kv_lora_rank
    if attn.wq is not None:
        q = x @ attn.wq.weight.double().T
    else:
        c_q = rms_norm64(x @ attn.wq_a.weight.double().T, attn.q_norm.weight, attn.q_norm.eps)
        q = c_q @ attn.wq_b.weight.double().T
    q = q.view(b, t, h, dn + dr)
    down = x @ attn.wkv_a.weight.double().T
    c_kv = rms_norm64(down[..., :dc], attn.kv_norm.weight, attn.kv_norm.eps)
    pos = torch.arange(t)
    k_rope = complex_rope(down[..., dc:], pos, theta)  # one RoPE key for all heads
    up = (c_kv @ attn.wkv_b.weight.double().T).view(b, t, h, dn + dv)
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))
    heads = []
    for i in range(h):
        qi = torch.cat([q[:, :, i, :dn], complex_rope(q[:, :, i, dn:], pos, theta)], dim=-1)
        ki = torch.cat([up[:, :, i, :dn], k_rope], dim=-1)
        scores = (qi @ ki.transpose(-1, -2) / math.sqrt(dn + dr)).masked_fill(~allowed, -math.inf)
        heads.append(torch.softmax(scores, dim=-1) @ up[:, :, i, dn:])
    return torch.stack(heads, dim=2).reshape(b, t, h * dv) @ attn.wo.weight.double().T


# ----------------------------------------------------------------------------------- config


def test_attention_mla_without_a_table_takes_deepseek_v2_ratios() -> None:
    cfg = tiny_config(attention="mla")
    assert cfg.mla == MLAConfig.scaled_to(32, 8)
    assert cfg.mla == MLAConfig(
        kv_lora_rank=32, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, q_lora_rank=9
    )
    assert cfg.rope_dim == 4 and tiny_config().rope_dim == 8


def test_config_round_trips_through_dict_and_json(tmp_path: Any) -> None:
    cfg = tiny_config(attention="mla", mla=MLAConfig(**MLA_SHAPES["q_latent"]), mtp_depth=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    as_table = tiny_config(attention="mla", mla=dict(MLA_SHAPES["q_latent"]))
    assert as_table.mla == cfg.mla


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention="gqa"), "attention must be"),
        (dict(mla=MLAConfig(**MLA_SHAPES["q_latent"])), "set attention = 'mla'"),
        (dict(attention="mla", qk_norm=True), "qk_norm"),
        (dict(attention="mla", n_kv_heads=2), "n_kv_heads"),
        (dict(attention="mla", mla={"kv_lora_rank": 8}), "lacks"),
        (dict(attention="mla", mla={**MLA_SHAPES["q_latent"], "rank": 3}), "unknown"),
        (dict(attention="mla", mla={**MLA_SHAPES["q_latent"], "qk_rope_head_dim": 3}), "even"),
        (dict(attention="mla", mla={**MLA_SHAPES["q_latent"], "kv_lora_rank": 0}), "kv_lora"),
        (dict(attention="mla", mla={**MLA_SHAPES["q_latent"], "q_lora_rank": -1}), "q_lora"),
        (dict(attention="mla", mla=3), "mla must be"),
    ],
)
def test_config_refuses_bad_mla(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_q_lora_rank_none_means_no_query_latent() -> None:
    m = MLAConfig(**{**MLA_SHAPES["no_q_latent"], "q_lora_rank": None})  # type: ignore[arg-type]
    assert m.q_lora_rank == 0


# ----------------------------------------------------------------------------- the module


@pytest.mark.parametrize("shape", MLA_SHAPES)
def test_shapes(shape: str) -> None:
    model = mla_model(shape)
    attn = model.layers[0].attention
    m = MLAConfig(**MLA_SHAPES[shape])
    assert isinstance(attn, MultiHeadLatentAttention)
    assert attn.wkv_a.weight.shape == (m.kv_lora_rank + m.qk_rope_head_dim, 32)
    assert attn.wkv_b.weight.shape == (4 * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)
    assert attn.wo.weight.shape == (32, 4 * m.v_head_dim)
    assert (attn.wq is None) == (m.q_lora_rank > 0)
    assert model.rope.head_dim == m.qk_rope_head_dim
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    assert attn(x, model.rope).shape == (2, 7, 32)
    c_kv, k_rope = attn.latent(x, model.rope)
    assert c_kv.shape == (2, 7, m.kv_lora_rank) and k_rope.shape == (2, 7, m.qk_rope_head_dim)
    assert model(tokens((2, 7))).logits.shape == (2, 7, 67)


@pytest.mark.parametrize("shape", MLA_SHAPES)
def test_matches_float64_reference(shape: str) -> None:
    model = mla_model(shape)
    attn = model.layers[1].attention
    x = torch.randn(2, 11, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # RoPE's tables are float32 (rope.py), so float64 agrees to ~1e-8, as in test_attention.py.
    torch.testing.assert_close(attn(x, model.rope), mla64(attn, x), rtol=1e-6, atol=1e-7)


def test_every_parameter_gets_a_gradient() -> None:
    model = mla_model("q_latent").train()
    seq = tokens((2, 12))
    model(seq[:, :-1], seq[:, 1:]).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


# ------------------------------------------------------------------------------- the cache


def _cached_logits(model: Any, seq: torch.Tensor, prefill: int, step: int) -> torch.Tensor:
    cache = KVCache.for_model(model.config, seq.shape[0])
    assert isinstance(cache, LatentKVCache)
    out = [model(seq[:, :prefill], kv_cache=cache).logits]
    for start in range(prefill, seq.shape[1], step):
        out.append(model(seq[:, start : start + step], kv_cache=cache).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "naive"])
@pytest.mark.parametrize("shape", MLA_SHAPES)
@pytest.mark.parametrize("doc_mask", [False, True], ids=["causal", "doc_mask"])
def test_cache_matches_uncached_forward(absorb: bool, shape: str, doc_mask: bool) -> None:
    kw: dict[str, Any] = dict(document_mask=True, eot_id=0) if doc_mask else {}
    model = mla_model(shape, **kw)
    for layer in model.layers:
        layer.attention.absorb = absorb
    seq = tokens((3, 24), vocab=8 if doc_mask else 67)  # many end-of-text tokens
    with torch.no_grad():
        full = model(seq).logits
        for prefill, step in [(1, 1), (5, 1), (5, 3), (24, 1)]:
            cached = _cached_logits(model, seq, prefill, step)
            torch.testing.assert_close(cached, full, rtol=1e-10, atol=1e-10)


def test_absorbed_decoding_equals_the_naive_form() -> None:
    model = mla_model("q_latent")
    attn = model.layers[0].attention
    x = torch.randn(2, 9, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outs = []
    for absorb in (True, False):
        attn.absorb = absorb
        cache = KVCache.for_model(model.config, 2)
        mask, causal = cache.attention_mask(torch.ones(2, 6, dtype=torch.long))
        prefix = attn(x[:, :6], model.rope, mask=mask, is_causal=causal, kv_cache=cache)
        cache.advance(6)
        mask, causal = cache.attention_mask(torch.ones(2, 3, dtype=torch.long))
        step = attn(x[:, 6:], model.rope, mask=mask, is_causal=causal, kv_cache=cache)
        outs.append(torch.cat([prefix, step], dim=1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[0], mla64(attn, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("dtype", "name"), [(torch.float32, "fp32"), (torch.bfloat16, "bf16")], ids=["fp32", "bf16"]
)
@pytest.mark.parametrize("shape", MLA_SHAPES)
def test_cache_bytes_equal_accounting(dtype: torch.dtype, name: str, shape: str) -> None:
    model = mla_model(shape, dtype=dtype, n_layers=3)
    cache = KVCache.for_model(model.config, batch_size=2, max_len=10)
    with torch.no_grad():
        model(tokens((2, 4)), kv_cache=cache)
    measured = cache.bytes_per_token()
    m = MLAConfig(**MLA_SHAPES[shape])
    assert measured == 3 * (m.kv_lora_rank + m.qk_rope_head_dim) * dtype.itemsize
    assert measured == attention_cost(model.config, batch=1, seq=1, dtype=name).kv_bytes_per_token
    # The same shape with multi-head attention: its cache holds 2 · d_model per token per layer.
    mha = tiny_model(dtype=dtype, n_layers=3)
    mha_cache = KVCache.for_model(mha.config, batch_size=2, max_len=10)
    with torch.no_grad():
        mha(tokens((2, 4)), kv_cache=mha_cache)
    assert mha_cache.bytes_per_token() == 3 * 2 * 32 * dtype.itemsize
    assert (
        mha_cache.bytes_per_token()
        == attention_cost(mha.config, batch=1, seq=1, dtype=name).kv_bytes_per_token
    )


def test_latent_cache_refuses_keys_and_wrong_shapes() -> None:
    cfg = tiny_config(attention="mla")
    cache = LatentKVCache.for_model(cfg, batch_size=2, max_len=8)
    assert cache.bytes_per_token() == 0
    with pytest.raises(ValueError, match="latents"):
        cache.update(0, torch.zeros(2, 1, 3, 8), torch.zeros(2, 1, 3, 8))
    with pytest.raises(ValueError, match="do not fit"):
        cache.update_latent(0, torch.zeros(2, 3, 5), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="attention = 'mla'"):
        LatentKVCache.for_model(tiny_config(), batch_size=1)
    attn = MultiHeadLatentAttention(cfg).double()
    rope = RotaryEmbedding(cfg.rope_dim, cfg.context_length)
    plain = KVCache(n_layers=1, batch_size=1, n_kv_heads=4, head_dim=8, max_len=8)
    with pytest.raises(ValueError, match="LatentKVCache"):
        attn(torch.zeros(1, 2, 32, dtype=torch.float64), rope, kv_cache=plain)


def test_truncate_rolls_the_cache_back() -> None:
    model = mla_model("q_latent", document_mask=True, eot_id=0)
    seq = tokens((2, 12), vocab=6)
    with torch.no_grad():
        full = model(seq).logits
        cache = KVCache.for_model(model.config, 2)
        model(seq[:, :5], kv_cache=cache)
        model(tokens((2, 4), vocab=6, seed=9), kv_cache=cache)  # rejected drafts
        cache.truncate(5)
        rest = model(seq[:, 5:], kv_cache=cache).logits
    torch.testing.assert_close(rest, full[:, 5:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(13)


def test_greedy_generation_follows_the_uncached_argmax() -> None:
    model = mla_model("no_q_latent")
    prompt = tokens((2, 3))
    out = generate(model, prompt, 10, temperature=0.0)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("shape", MLA_SHAPES)
@pytest.mark.parametrize("mtp_depth", [0, 2])
def test_parameter_count_matches_accounting(shape: str, mtp_depth: int) -> None:
    model = mla_model(shape, mtp_depth=mtp_depth, tie_embeddings=True)
    assert count_params(model.config).total == sum(p.numel() for p in model.parameters())
