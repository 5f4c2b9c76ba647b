"""CausalSelfAttention against float64 math; GQA/MQA; QK-norm; document masks and FlexAttention."""

from __future__ import annotations

import warnings

import pytest
import torch
from model_testing import VARIANTS, attention64, tiny_config

from lmforge.model.attention import CausalSelfAttention, attend, repeat_kv
from lmforge.model.functional import scaled_dot_product_attention
from lmforge.model.masks import (
    causal_mask,
    document_block_mask,
    document_causal_mask,
    document_ids,
)
from lmforge.model.rope import RotaryEmbedding


def _attention(seed: int = 0, **overrides: object) -> CausalSelfAttention:
    torch.manual_seed(seed)
    attn = CausalSelfAttention(tiny_config(**overrides), dtype=torch.float64)
    if attn.q_norm is not None and attn.k_norm is not None:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    return attn


@pytest.mark.parametrize("variant", ["mha", "gqa", "mqa", "qk_norm"])
def test_matches_float64_reference(variant: str) -> None:
    attn = _attention(**VARIANTS[variant])
    cfg = tiny_config()
    rope = RotaryEmbedding(cfg.head_dim, cfg.context_length)
    x = torch.randn(2, 11, cfg.d_model, dtype=torch.float64)
    torch.testing.assert_close(attn(x, rope), attention64(attn, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_repeated_kv_weights(n_kv_heads: int) -> None:
    gqa = _attention(n_kv_heads=n_kv_heads)
    mha = _attention(seed=1)
    n_rep, hd = 4 // n_kv_heads, gqa.head_dim
    with torch.no_grad():
        for name in ("wq", "wo"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("wk", "wv"):
            w = getattr(gqa, name).weight.view(n_kv_heads, hd, -1)
            getattr(mha, name).weight.copy_(w.repeat_interleave(n_rep, dim=0).flatten(0, 1))
    rope = RotaryEmbedding(hd, 32)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(gqa(x, rope), mha(x, rope))


def test_repeat_kv_is_repeat_interleave() -> None:
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(repeat_kv(x, 4), x.repeat_interleave(4, dim=1))
    assert repeat_kv(x, 1) is x


def test_attend_gqa_matches_reference() -> None:
    q = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    k, v = (
        torch.randn(2, 2, 7, 8, dtype=torch.float64),
        torch.randn(2, 2, 7, 8, dtype=torch.float64),
    )
    ref = scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), causal_mask(7, 7))
    torch.testing.assert_close(attend(q, k, v, is_causal=True), ref)


def test_qk_logit_bound_bounds_the_scores() -> None:
    attn = _attention(qk_norm=True)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(-3, 3)  # type: ignore[union-attr]
    rope = RotaryEmbedding(attn.head_dim, 32)
    x = torch.randn(2, 16, 32, dtype=torch.float64) * 10
    b, t = x.shape[:2]
    q = attn.q_norm(attn.wq(x).view(b, t, 4, -1)).transpose(1, 2)  # type: ignore[misc]
    k = attn.k_norm(attn.wk(x).view(b, t, 4, -1)).transpose(1, 2)  # type: ignore[misc]
    scores = rope(q) @ rope(k).transpose(-1, -2) / attn.head_dim**0.5
    bound = attn.qk_logit_bound()
    assert bound is not None and scores.abs().max() <= bound
    assert _attention().qk_logit_bound() is None


def test_document_ids_put_eot_in_the_document_it_ends() -> None:
    idx = torch.tensor([[5, 6, 0, 7, 0, 0, 8], [0, 1, 2, 3, 4, 5, 6]])
    expected = torch.tensor([[0, 0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    assert torch.equal(document_ids(idx, eot_id=0), expected)
    shifted = document_ids(idx, eot_id=0, first_doc=torch.tensor([3, 0]))
    assert torch.equal(shifted, expected + torch.tensor([[3], [0]], dtype=torch.int32))


def test_document_causal_mask() -> None:
    docs = torch.tensor([[0, 0, 1, 1]])
    mask = document_causal_mask(docs)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool
    )
    assert mask.shape == (4, 4) and torch.equal(mask, expected)
    assert torch.equal(causal_mask(2, 4, start=2), expected.new_ones(2, 4).tril(2))


def _docs(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 5, (batch, seq), generator=gen)
    return document_ids(idx, eot_id=0)


@pytest.mark.parametrize("n_kv", [4, 2])
def test_document_masks_bool_and_flex_match_reference(n_kv: int) -> None:
    torch.manual_seed(0)
    seq = 40
    q = torch.randn(2, 4, seq, 8)
    k, v = torch.randn(2, n_kv, seq, 8), torch.randn(2, n_kv, seq, 8)
    docs = _docs(2, seq)
    dense = document_causal_mask(docs)
    ref = scaled_dot_product_attention(q, repeat_kv(k, 4 // n_kv), repeat_kv(v, 4 // n_kv), dense)
    torch.testing.assert_close(attend(q, k, v, mask=dense), ref, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention on CPU warns that it is slow
        block = document_block_mask(docs, block_size=16)
        flex = attend(q, k, v, mask=block)
    torch.testing.assert_close(flex, ref, rtol=1e-5, atol=1e-5)


def test_module_with_document_mask_matches_float64_reference() -> None:
    attn = _attention(n_kv_heads=2, qk_norm=True)
    rope = RotaryEmbedding(attn.head_dim, 32)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    docs = _docs(2, 20, seed=3)
    mask = document_causal_mask(docs)
    out = attn(x, rope, mask=mask, is_causal=False)
    torch.testing.assert_close(out, attention64(attn, x, mask=mask[:, 0]), rtol=1e-6, atol=1e-6)
