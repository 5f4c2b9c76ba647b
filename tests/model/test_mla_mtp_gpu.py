"""MLA and MTP on the GPU (run on the device machine): compiled bf16 training with document
masks (FlexAttention with values narrower than keys), and bf16 cached/speculative decoding.

Skipped without CUDA (``tests/conftest.py``). Tolerances are bf16's.
"""

from __future__ import annotations

import pytest
import torch
from model_testing import tiny_config, tokens

from lmforge.model.generate import generate
from lmforge.model.kv_cache import KVCache
from lmforge.model.mla import MLAConfig
from lmforge.model.transformer import Transformer

pytestmark = pytest.mark.gpu
CUDA = "cuda"
MLA = MLAConfig(
    q_lora_rank=96, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32
)


def _model(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    cfg = tiny_config(context_length=256, d_model=128, n_heads=4, attention="mla", mla=MLA,
                      **overrides)  # fmt: skip
    return Transformer(cfg).to(CUDA)


@pytest.mark.parametrize(
    "overrides",
    [dict(mtp_depth=2), dict(mtp_depth=1, document_mask=True, eot_id=0)],
    ids=["mtp2", "mtp1-docmask"],
)
def test_compiled_mla_mtp_matches_eager_bf16(overrides: dict[str, object]) -> None:
    torch._dynamo.reset()
    model = _model(**overrides).train()
    compiled = torch.compile(model, fullgraph=True)
    idx = tokens((4, 256), vocab=40).to(CUDA)
    tgt = tokens((4, 256), seed=2).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(idx, tgt, return_logits=False)
        out = compiled(idx, tgt, return_logits=False)
    torch.testing.assert_close(out.loss, eager.loss, rtol=2e-2, atol=2e-2)
    for key in eager.losses:
        torch.testing.assert_close(out.losses[key], eager.losses[key], rtol=2e-2, atol=2e-2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mla_cache_and_speculative_decoding_bf16() -> None:
    model = _model(mtp_depth=2).eval()
    seq = tokens((2, 64), vocab=40).to(CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(seq).logits
        cache = KVCache.for_model(model.config, 2)
        steps = [model(seq[:, :32], kv_cache=cache).logits]
        steps += [model(seq[:, i : i + 1], kv_cache=cache).logits for i in range(32, 64)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=5e-2, atol=5e-2)
        prompt = seq[:, :8]
        out = generate(model, prompt, 24, temperature=0.0, speculative=True)
    assert out.shape == (2, 32) and torch.equal(out[:, :8], prompt)
