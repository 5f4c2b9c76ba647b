"""Helpers for the model tests: tiny configs and models, float64 reference math."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

TINY: dict[str, Any] = dict(vocab_size=67, context_length=32, d_model=32, n_layers=2, n_heads=4)

VARIANTS: dict[str, dict[str, Any]] = {
    "mha": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "qk_norm": dict(qk_norm=True, n_kv_heads=2),
    "parallel": dict(parallel_block=True),
}
"""The architectures every equivalence test runs over."""


def tiny_config(**overrides: Any) -> ModelConfig:
    """A two-layer, 32-wide config, changed by ``overrides``."""
    return ModelConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> Transformer:
    """A tiny model in ``dtype`` with random (not all-one) norm gains, in eval mode."""
    torch.manual_seed(seed)
    model = Transformer(tiny_config(**overrides)).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def tokens(shape: tuple[int, ...], vocab: int = TINY["vocab_size"], seed: int = 1) -> Tensor:
    """Seeded random token ids."""
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def complex_rope(x: Tensor, positions: Tensor, theta: float = 10_000.0) -> Tensor:
    """RoPE written as complex multiplication on adjacent pairs (RoFormer eq. 34), float64.

    ``x``: ``(..., seq, head_dim)``; ``positions``: ``(seq,)``.
    """
    hd = x.shape[-1]
    freqs = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = positions.double()[:, None] * freqs
    rot = torch.polar(torch.ones_like(angles), angles)
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(z * rot).flatten(-2)


def rms_norm64(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x²) + eps) * weight`` in float64."""
    x = x.double()
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * weight.double()


def attention64(
    attn: Any, x: Tensor, mask: Tensor | None = None, theta: float = 1e4, causal: bool = True
) -> Tensor:
    """A straightforward float64 self-attention with ``attn``'s weights (causal by default;
    ``mask`` broadcastable to ``(batch, seq, seq)``, True = may attend).

    Loops over heads, repeats key/value heads by grouping, rotates with :func:`complex_rope`.
    """
    x = x.double()
    b, t, _ = x.shape
    h, hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = (x @ attn.wq.weight.double().T).view(b, t, h, hd)
    k = (x @ attn.wk.weight.double().T).view(b, t, hkv, hd)
    v = (x @ attn.wv.weight.double().T).view(b, t, hkv, hd)
    if attn.q_norm is not None:
        q = rms_norm64(q, attn.q_norm.weight, attn.q_norm.eps)
        k = rms_norm64(k, attn.k_norm.weight, attn.k_norm.eps)
    pos = torch.arange(t)
    allowed = torch.ones(t, t, dtype=torch.bool)
    if causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask
    heads = []
    for i in range(h):
        j = i // (h // hkv)
        qi = complex_rope(q[:, :, i], pos, theta)
        kj = complex_rope(k[:, :, j], pos, theta)
        scores = qi @ kj.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, :, j])
    y = torch.stack(heads, dim=2).reshape(b, t, h * hd)
    return y @ attn.wo.weight.double().T
