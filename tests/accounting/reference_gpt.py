"""A plain-PyTorch model with the shapes of ``lmforge.model.Transformer``, for the accounting tests.

Stands in for the real model where it is not importable, and lets the memory tests list the
tensors autograd saves. Token embedding → blocks (RMSNorm → attention with separate ``wq, wk,
wv, wo``, optional per-head q/k RMSNorm, RoPE, SDPA → RMSNorm → SwiGLU ``w1, w3, w2``) → final
RMSNorm → LM head (tied or not); no biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.config import ModelConfig


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        assert cfg.n_kv_heads is not None and cfg.d_ff is not None
        self.h, self.h_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, hd
        self.attn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, self.h_kv * hd, bias=False)
        self.wv = nn.Linear(d, self.h_kv * hd, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.q_norm = nn.RMSNorm(hd, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(hd, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.w1 = nn.Linear(d, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(d, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(b, t, self.h, self.hd)
        k = self.wk(h).view(b, t, self.h_kv, self.hd)
        v = self.wv(h).view(b, t, self.h_kv, self.hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=self.h != self.h_kv,
        )
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, -1))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class ReferenceGPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        hd = cfg.head_dim
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
        ang = torch.outer(torch.arange(cfg.context_length).float(), inv)  # (T, hd/2)
        self.register_buffer("cos", ang.cos()[:, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[:, None, :], persistent=False)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        t = idx.shape[1]
        x = self.embed(idx)
        cos, sin = self.cos[:t], self.sin[:t]
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
