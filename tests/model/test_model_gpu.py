"""GPU paths (run on the device machine): flash/cuDNN SDPA, FlexAttention, Inductor, bf16.

Skipped without CUDA (``tests/conftest.py``). Tolerances are bf16's: the fast kernels are held
to a float32 evaluation of the reference formula.
"""

from __future__ import annotations

import pytest
import torch
from model_testing import tiny_config, tokens
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmforge.model.attention import attend, repeat_kv
from lmforge.model.functional import scaled_dot_product_attention
from lmforge.model.generate import generate
from lmforge.model.loss import lm_head_loss, loss_from_logits
from lmforge.model.masks import causal_mask, document_block_mask, document_causal_mask, document_ids
from lmforge.model.transformer import Transformer

pytestmark = pytest.mark.gpu
CUDA = "cuda"


def _qkv(n_kv: int, seq: int = 512, heads: int = 8, dim: int = 64):  # type: ignore[no-untyped-def]
    gen = torch.Generator(CUDA).manual_seed(0)
    q = torch.randn(2, heads, seq, dim, device=CUDA, generator=gen)
    k = torch.randn(2, n_kv, seq, dim, device=CUDA, generator=gen)
    v = torch.randn(2, n_kv, seq, dim, device=CUDA, generator=gen)
    return q, k, v


def _reference(q, k, v, mask):  # type: ignore[no-untyped-def]
    n_rep = q.shape[1] // k.shape[1]
    return scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)


@pytest.mark.parametrize("n_kv", [8, 2, 1])
def test_flash_causal_matches_reference_bf16(n_kv: int) -> None:
    q, k, v = _qkv(n_kv)
    ref = _reference(q, k, v, causal_mask(512, 512, device=q.device))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash cannot serve the call
        out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("n_kv", [8, 2])
def test_flex_document_mask_matches_reference_bf16(n_kv: int) -> None:
    q, k, v = _qkv(n_kv)
    idx = torch.randint(
        0, 200, (2, 512), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1)
    )
    docs = document_ids(idx, eot_id=0)
    ref = _reference(q, k, v, document_causal_mask(docs))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    out = attend(qb, kb, vb, mask=document_block_mask(docs))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (qb, kb, vb))


def _model(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    cfg = tiny_config(context_length=256, d_model=128, n_heads=4, **overrides)
    return Transformer(cfg).to(CUDA)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(n_kv_heads=2, qk_norm=True, z_loss=1e-4, logit_softcap=30.0),
        dict(n_kv_heads=1, document_mask=True, eot_id=0, activation_checkpointing=True),
    ],
    ids=["plain", "gqa-stability", "mqa-docmask-ckpt"],
)
def test_compiled_model_matches_eager_bf16(overrides: dict[str, object]) -> None:
    torch._dynamo.reset()
    model = _model(**overrides).train()
    compiled = torch.compile(model, fullgraph=True)
    idx = tokens((4, 256), vocab=40).to(CUDA)
    tgt = tokens((4, 256), seed=2).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(idx, tgt, return_logits=False)
        out = compiled(idx, tgt, return_logits=False)
        full = compiled(idx, tgt)
    torch.testing.assert_close(out.loss, eager.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(full.loss, eager.loss, rtol=2e-2, atol=2e-2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_chunked_head_loss_bf16_matches_full() -> None:
    gen = torch.Generator(CUDA).manual_seed(0)
    hidden = torch.randn(4096, 256, device=CUDA, generator=gen)
    weight = (torch.randn(1000, 256, device=CUDA, generator=gen) / 16).requires_grad_()
    targets = torch.randint(0, 1000, (4096,), device=CUDA, generator=gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        full = loss_from_logits(hidden @ weight.T, targets, z_loss=1e-4)
        ours = lm_head_loss(hidden, weight, targets, z_loss=1e-4, chunk_size=1024)
    torch.testing.assert_close(ours.loss, full.loss, rtol=1e-3, atol=1e-3)
    (g,) = torch.autograd.grad(ours.loss, (weight,))
    (g_ref,) = torch.autograd.grad(full.loss, (weight,))
    torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=1e-4)


def test_generate_on_gpu() -> None:
    model = _model(n_kv_heads=2, document_mask=True, eot_id=0).eval()
    prompt = tokens((3, 10), vocab=40).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = generate(model, prompt, 20, top_k=10, generator=torch.Generator(CUDA).manual_seed(0))
    assert out.shape == (3, 30) and out.device.type == "cuda"
    assert torch.equal(out[:, :10], prompt)


def test_short_causal_attention_kernel_past_65535_heads() -> None:
    """Batch × heads above a grid's second-axis limit (65,535): the kernels' one-axis grid
    takes it, and every head still matches float32 SDPA."""
    from lmforge.kernels.attention import causal_attention

    gen = torch.Generator(CUDA).manual_seed(0)
    q, k, v = (torch.randn(4097, 16, 16, 16, device=CUDA, generator=gen).bfloat16() for _ in "qkv")
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True
    )
    torch.testing.assert_close(causal_attention(q, k, v).float(), want, rtol=2e-2, atol=2e-2)
