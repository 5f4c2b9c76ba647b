"""``MultiHeadLatentAttention``: DeepSeek-V2's MLA (DeepSeek-AI 2024, §2.1).

Keys and values are rebuilt from one low-rank latent per token, ``c_KV = RMSNorm(W_DKV x)``
(eq. 9), so the KV cache holds ``kv_lora_rank`` numbers per token instead of
``2 · n_kv_heads · head_dim``. RoPE cannot act on keys rebuilt from a cached latent (the
rotation would sit between ``W_UK`` and the query and block the absorption below), so position
travels in a separate, *decoupled* part: each head's query has ``qk_rope_head_dim`` extra
dimensions and one RoPE key of that width, computed from ``x`` and shared by all heads, is
cached beside the latent (eqs. 14–19).

Design choices:

* **Names** of DeepSeek-V3's reference code: ``wq`` (or ``wq_a → q_norm → wq_b`` with query
  compression, eqs. 12–13), ``wkv_a`` (x → latent and RoPE key in one matmul), ``kv_norm``,
  ``wkv_b`` (latent → the heads' no-RoPE keys and values), ``wo``. RMSNorm on both latents,
  as DeepSeek-V2/V3 do after the down-projections. No biases.
* **RoPE on adjacent pairs**, lmforge's convention (:mod:`lmforge.model.rope`), which is also
  DeepSeek's own (``view_as_complex`` in their reference code).
* **Softmax scale** ``1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)`` (eq. 19), the default of
  ``F.scaled_dot_product_attention`` for queries of that width.
* **Training and prefill**: the latent is up-projected to per-head keys and values, the shared
  RoPE key broadcast to every head, and :func:`~lmforge.model.attention.attend` runs (SDPA,
  FlexAttention for document masks on GPU). Values may be narrower than keys.
* **Decoding from the latent cache** (:class:`~lmforge.model.mla.cache.LatentKVCache`) uses
  the **absorbed** form by default (§2.1.2: "W_UK can be absorbed into W_UQ, W_UV into W_O"):
  each head's no-RoPE query is mapped into latent space, ``q̃ = W_UKᵀ q``, so attention runs
  like multi-query attention over the cache itself — keys ``[c_KV, k_R]``, values ``c_KV`` —
  and the output latent is up-projected by ``W_UV`` afterwards. No cached token is ever
  expanded to per-head keys. ``absorb = False`` up-projects the whole cache each step instead
  (the naive form); the two agree to rounding (tested in float64).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from lmforge.model.attention import attend
from lmforge.model.kv_cache import KVCache
from lmforge.model.layers import Linear, RMSNorm
from lmforge.model.rope import RotaryEmbedding

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig

__all__ = ["MultiHeadLatentAttention"]


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention with decoupled RoPE and a latent KV cache.

    Args:
        config: the model config; ``config.mla`` holds the widths.
        layer_idx: this layer's index (its slot in the cache).
        out_init_scale: ``init_scale`` of the output projection ``wo``.
        device: where to allocate the weights.
        dtype: the weights' dtype.

    Attributes:
        absorb: with a cache, attend in latent space (``W_UK``/``W_UV`` absorbed; the default)
            rather than up-projecting every cached latent.

    Raises:
        ValueError: ``config`` has no MLA widths.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        layer_idx: int = 0,
        out_init_scale: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        m = config.mla
        if m is None:
            raise ValueError("MultiHeadLatentAttention needs config.mla (attention = 'mla')")
        self.n_heads, self.layer_idx, self.absorb = config.n_heads, layer_idx, True
        self.q_lora_rank, self.kv_lora_rank = m.q_lora_rank, m.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
        )
        d, h, qk = config.d_model, config.n_heads, m.qk_head_dim
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.wq: Linear | None = None
        self.wq_a: Linear | None = None
        self.q_norm: RMSNorm | None = None
        self.wq_b: Linear | None = None
        if m.q_lora_rank:
            self.wq_a = Linear(d, m.q_lora_rank, **kw)
            self.q_norm = RMSNorm(m.q_lora_rank, config.norm_eps, **kw)
            self.wq_b = Linear(m.q_lora_rank, h * qk, **kw)
        else:
            self.wq = Linear(d, h * qk, **kw)
        self.wkv_a = Linear(d, m.kv_lora_rank + m.qk_rope_head_dim, **kw)
        self.kv_norm = RMSNorm(m.kv_lora_rank, config.norm_eps, **kw)
        self.wkv_b = Linear(m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim), **kw)
        self.wo = Linear(h * m.v_head_dim, d, init_scale=out_init_scale, **kw)

    def _queries(self, x: Tensor) -> Tensor:
        """``(batch, seq, n_heads, nope + rope)`` queries, through the query latent if any."""
        if self.wq is not None:
            q = self.wq(x)
        else:
            assert self.wq_a is not None and self.q_norm is not None and self.wq_b is not None
            q = self.wq_b(self.q_norm(self.wq_a(x)))
        return q.unflatten(-1, (self.n_heads, -1))

    def latent(self, x: Tensor, rope: RotaryEmbedding, start: int = 0) -> tuple[Tensor, Tensor]:
        """What the cache stores for ``x``: the normalised latent and the rotated RoPE key.

        Args:
            x: ``(batch, seq, d_model)`` normalised input.
            rope: the rotary embedding (width ``qk_rope_head_dim``).
            start: the position of the first token.

        Returns:
            ``c_kv`` ``(batch, seq, kv_lora_rank)`` and ``k_rope`` ``(batch, seq, rope_dim)``.
        """
        c_kv, k_rope = self.wkv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_norm(c_kv), rope(k_rope, start, seq_dim=-2)

    def forward(
        self,
        x: Tensor,
        rope: RotaryEmbedding,
        *,
        mask: Tensor | BlockMask | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Attend from every position of ``x`` to itself and the positions before it.

        Args:
            x: ``(batch, seq, d_model)`` normalised input.
            rope: the shared rotary embedding (width ``qk_rope_head_dim``).
            mask: see :func:`~lmforge.model.attention.attend`.
            is_causal: apply the causal mask when ``mask`` is ``None``.
            kv_cache: a :class:`~lmforge.model.mla.cache.LatentKVCache`; the new latents are
                appended at its ``pos`` and attention covers the whole cache (``mask`` and
                ``is_causal`` then come from its ``attention_mask``).

        Returns:
            ``(batch, seq, d_model)``.

        Raises:
            ValueError: ``kv_cache`` is not a latent cache.
        """
        start = 0 if kv_cache is None else kv_cache.pos
        q_nope, q_rope = self._queries(x).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = rope(q_rope, start, seq_dim=-3)
        c_kv, k_rope = self.latent(x, rope, start)
        if kv_cache is not None:
            update = getattr(kv_cache, "update_latent", None)
            if update is None:
                raise ValueError(
                    "MLA needs a LatentKVCache (KVCache.for_model builds one for an MLA config)"
                )
            cached = update(self.layer_idx, c_kv, k_rope)
            if self.absorb:
                y = self._absorbed(q_nope, q_rope, cached, mask, is_causal)
                return self.wo(y.flatten(2))
            c_kv, k_rope = cached.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        y = self._expanded(q_nope, q_rope, c_kv, k_rope, mask, is_causal)
        return self.wo(y.flatten(2))

    def _expanded(
        self,
        q_nope: Tensor,
        q_rope: Tensor,
        c_kv: Tensor,
        k_rope: Tensor,
        mask: Tensor | BlockMask | None,
        is_causal: bool,
    ) -> Tensor:
        """Per-head keys and values from the latents, then attention: ``(b, s, h, v_dim)``."""
        batch, n = c_kv.shape[:2]
        k_nope, v = (
            self.wkv_b(c_kv)
            .unflatten(-1, (self.n_heads, -1))
            .split([self.nope_dim, self.v_dim], dim=-1)
        )
        k_rope = k_rope.unsqueeze(2).expand(batch, n, self.n_heads, self.rope_dim)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_rope], dim=-1).transpose(1, 2)
        y = attend(q, k, v.transpose(1, 2), mask=mask, is_causal=is_causal)
        return y.transpose(1, 2)

    def _absorbed(
        self,
        q_nope: Tensor,
        q_rope: Tensor,
        cached: Tensor,
        mask: Tensor | BlockMask | None,
        is_causal: bool,
    ) -> Tensor:
        """Attention in latent space over the cache ``[c_KV, k_R]``: ``(b, s, h, v_dim)``."""
        if isinstance(mask, BlockMask):
            raise ValueError("the absorbed MLA form takes a boolean mask, not a BlockMask")
        w_ukv = self.wkv_b.weight.unflatten(0, (self.n_heads, -1))  # (h, nope + v, d_c)
        w_uk, w_uv = w_ukv.split([self.nope_dim, self.v_dim], dim=1)
        q_latent = torch.einsum("bshn,hnc->bhsc", q_nope, w_uk.to(q_nope.dtype))
        q = torch.cat([q_latent, q_rope.transpose(1, 2)], dim=-1)  # (b, h, s, d_c + rope)
        kv = cached.unsqueeze(1)  # (b, 1, n, d_c + rope): one "head" shared by all
        o_latent = F.scaled_dot_product_attention(
            q,
            kv,
            kv[..., : self.kv_lora_rank],
            attn_mask=mask,
            is_causal=is_causal,
            scale=1.0 / math.sqrt(self.nope_dim + self.rope_dim),
            enable_gqa=True,
        )
        return torch.einsum("bhsc,hvc->bshv", o_latent, w_uv.to(o_latent.dtype))

    def qk_logit_bound(self) -> Tensor | None:
        """``None``: MLA has no QK-norm (the interface of ``CausalSelfAttention``)."""
        return None
