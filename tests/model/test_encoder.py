"""The bidirectional Encoder: float64 reference, padding invariance, document masks, MLM loss."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from model_testing import VARIANTS, attention64, rms_norm64, tiny_config, tokens

from lmforge.model import (
    Encoder,
    ModelConfig,
    Transformer,
    build_model,
    generate,
    scaled_dot_product_attention,
)
from lmforge.model.attention import attend
from lmforge.model.kv_cache import KVCache
from lmforge.model.masks import key_padding_mask


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Matmuls of tiny models: threads cost more than they save (and the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encoder(seed: int = 0, **overrides: object) -> Encoder:
    """A tiny float64 encoder with random (not all-one) norm gains, in eval mode."""
    torch.manual_seed(seed)
    model = Encoder(tiny_config(causal=False, **overrides)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def encoder64(model: Encoder, idx: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states of ``model`` recomputed in float64 from its weights: pre-norm blocks
    with bidirectional attention over the real keys (``real``: bool ``(batch, seq)``)."""
    cfg = model.config
    x = model.tok_embeddings.weight.double()[idx]
    mask = None if real is None else real[:, None, :]
    for block in model.layers:
        h = rms_norm64(x, block.attention_norm.weight, cfg.norm_eps)
        a = attention64(block.attention, h, mask=mask, theta=cfg.rope_theta, causal=False)
        mlp = block.mlp
        if block.mlp_norm is None:
            m_in = h
            x = x + a
        else:
            x = x + a
            m_in = rms_norm64(x, block.mlp_norm.weight, cfg.norm_eps)
        gate = F.silu(m_in @ mlp.w1.weight.double().T) * (m_in @ mlp.w3.weight.double().T)
        x = x + gate @ mlp.w2.weight.double().T
    return rms_norm64(x, model.norm.weight, cfg.norm_eps)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_float64_reference_with_padding(variant: str) -> None:
    model = encoder(**VARIANTS[variant])
    idx = tokens((3, 12))
    real = torch.ones(3, 12, dtype=torch.bool)
    real[1, 7:], real[2, 2:] = False, False
    hidden, _ = model.forward_hidden(idx, attention_mask=real)
    expected = encoder64(model, idx, real)
    # 1e-6: the RoPE tables are float32 even in a float64 model (see lmforge.model.rope)
    torch.testing.assert_close(hidden[real], expected[real], rtol=1e-6, atol=1e-6)


def test_every_token_sees_the_whole_sequence() -> None:
    enc, dec = encoder(), Transformer(tiny_config()).double().eval()
    idx = tokens((1, 10))
    later = idx.clone()
    later[0, -1] = (later[0, -1] + 1) % 67
    # changing the last token moves the encoder's first position, never the decoder's
    assert not torch.allclose(enc.forward_hidden(idx)[0][0, 0], enc.forward_hidden(later)[0][0, 0])
    torch.testing.assert_close(dec.forward_hidden(idx)[0][0, 0], dec.forward_hidden(later)[0][0, 0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_leaves_real_tokens_as_alone(variant: str) -> None:
    model = encoder(**VARIANTS[variant])
    lengths = [12, 7, 1, 9]
    idx = tokens((len(lengths), 12), seed=3)
    real = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    out = model(idx, attention_mask=real).logits
    junk = torch.where(real, idx, (idx * 7 + 5) % 67)  # other ids at the padded positions
    out_junk = model(junk, attention_mask=real).logits
    for b, n in enumerate(lengths):
        alone = model(idx[b : b + 1, :n]).logits[0]
        torch.testing.assert_close(out[b, :n], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_junk[b, :n], alone, rtol=1e-12, atol=1e-12)


def test_left_padding_equals_right_padding_under_rope() -> None:
    model = encoder(n_kv_heads=2)
    idx = tokens((1, 8), seed=4)
    left = torch.cat([torch.zeros(1, 4, dtype=torch.long), idx], dim=1)
    real = torch.arange(12)[None, :] >= 4
    out = model.forward_hidden(left, attention_mask=real)[0][0, 4:]
    # equal up to the float32 RoPE tables' rounding of the shifted angles
    torch.testing.assert_close(out, model.forward_hidden(idx)[0][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_sdpa_key_padding_mask_agrees_with_reference_attention(n_kv_heads: int) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 9, 8, generator=g, dtype=torch.float64)
    k = torch.randn(3, n_kv_heads, 9, 8, generator=g, dtype=torch.float64)
    v = torch.randn(3, n_kv_heads, 9, 8, generator=g, dtype=torch.float64)
    real = torch.arange(9)[None, :] < torch.tensor([9, 5, 1])[:, None]
    mask = key_padding_mask(real)
    rep = 4 // n_kv_heads
    ref = scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask
    )
    torch.testing.assert_close(attend(q, k, v, mask=mask), ref, rtol=1e-12, atol=1e-12)


def test_document_mask_keeps_documents_apart() -> None:
    eot = 66
    model = encoder(document_mask=True, eot_id=eot)
    first, second = tokens((1, 5), vocab=60, seed=5), tokens((1, 6), vocab=60, seed=6)
    idx = torch.cat([first, torch.tensor([[eot]]), second], dim=1)
    hidden = model.forward_hidden(idx)[0][0]
    # the first document with its end-of-text token, and the second, each as if alone
    doc1 = model.forward_hidden(idx[:, :6])[0][0]
    doc2 = model.forward_hidden(second)[0][0]
    torch.testing.assert_close(hidden[:6], doc1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden[6:], doc2, rtol=1e-6, atol=1e-6)  # shifted: float32 RoPE


def test_mlm_loss_and_accuracy_match_reference() -> None:
    model = encoder()
    idx = tokens((2, 10), seed=7)
    targets = torch.full_like(idx, -100)
    targets[:, ::3] = tokens((2, 4), seed=8)
    real = torch.ones_like(idx, dtype=torch.bool)
    real[1, 8:] = False
    targets[1, 9] = 5  # a target on a padded position: ignored
    out = model(idx, targets, attention_mask=real)
    logits = encoder64(model, idx, real) @ model.head_weight.double().T
    keep = (targets != -100) & real
    ref = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)  # float32 RoPE tables
    acc = (logits[keep].argmax(-1) == targets[keep]).double().mean()
    torch.testing.assert_close(out.metrics["accuracy"], acc)
    chunked = model(idx, targets, attention_mask=real, return_logits=False)
    torch.testing.assert_close(chunked.loss, out.loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked.metrics["accuracy"], acc)


def test_same_parameters_as_the_decoder() -> None:
    causal = tiny_config(tie_embeddings=True)
    enc = build_model(ModelConfig(**{**causal.to_dict(), "causal": False}))
    dec = build_model(causal)
    assert type(enc) is Encoder and type(dec) is Transformer
    assert [(n, p.shape) for n, p in enc.named_parameters()] == [
        (n, p.shape) for n, p in dec.named_parameters()
    ]
    assert enc.param_kinds() == dec.param_kinds()


def test_refusals() -> None:
    with pytest.raises(ValueError, match="build lmforge.model.Encoder"):
        Transformer(tiny_config(causal=False))
    with pytest.raises(ValueError, match="causal=false"):
        Encoder(tiny_config())
    with pytest.raises(ValueError, match="causal must be"):
        tiny_config(causal="no")
    model = encoder()
    idx = tokens((1, 4))
    with pytest.raises(ValueError, match="no KV cache"):
        model(idx, kv_cache=KVCache.for_model(model.config, 1))
    with pytest.raises(ValueError, match="cannot generate"):
        generate(model, idx, 2)
    with pytest.raises(ValueError, match="attention_mask must be a boolean"):
        model(idx, attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="attention_mask must be a boolean"):
        model(idx, attention_mask=torch.ones(1, 5, dtype=torch.bool))


def test_trains_in_float32() -> None:
    torch.manual_seed(0)
    model = Encoder(tiny_config(causal=False))
    idx = tokens((2, 8))
    targets = torch.where(torch.arange(8) % 2 == 0, idx, -100)
    out = model(idx, targets, return_logits=False)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlm_learns_to_fill_in_from_both_sides(one_thread: None) -> None:
    """Rows ``a + a`` (a random half repeated): a masked token is its copy's, which lies to its
    left or to its right; a bidirectional encoder learns it from the MLM objective alone."""
    import numpy as np

    from lmforge.data import MLMMasking, mask_tokens
    from lmforge.optim import AdamW

    vocab, half = 16, 6
    masking = MLMMasking(mask_id=0, n_vocab=vocab, probability=0.15)
    rng = np.random.default_rng(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = rng.integers(1, vocab, size=(n, half))
        inputs, labels = mask_tokens(np.concatenate([a, a], axis=1), masking, rng)
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    torch.manual_seed(0)
    config = tiny_config(vocab_size=vocab, context_length=2 * half, d_model=64, causal=False)
    model = Encoder(config)
    optimizer = AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(300):
        x, y = batch(64)
        loss = model(x, y, return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = batch(1024)
    with torch.no_grad():
        out = model(x, y)
    # chance is 1/15. The copy tells the answer unless it was masked (12%) or replaced by a
    # random id (1.5%) itself: the best possible accuracy is about 0.865 + 0.135 / 15 = 0.874
    assert out.metrics["accuracy"] > 0.8, out.metrics["accuracy"]


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_compiled_encoder_matches_eager_bf16_on_cuda(padded: bool) -> None:
    """The MLM training step compiles as one graph; with padding, the masked SDPA kernel."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Encoder(tiny_config(causal=False, context_length=256, n_kv_heads=2)).cuda().train()
    compiled = torch.compile(model, fullgraph=True)
    idx = tokens((4, 256)).cuda()
    tgt = torch.where(torch.rand(4, 256, device="cuda") < 0.15, idx, -100)
    real = (
        (torch.arange(256, device="cuda") < torch.tensor([[256], [200], [17], [1]], device="cuda"))
        if padded
        else None
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(idx, tgt, attention_mask=real, return_logits=False)
        out = compiled(idx, tgt, attention_mask=real, return_logits=False)
    torch.testing.assert_close(out.loss, eager.loss, rtol=2e-2, atol=2e-2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
