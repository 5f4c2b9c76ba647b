"""``CausalSelfAttention``: multi-head, grouped-query or multi-query attention with RoPE.

Design choices:

* **Separate** ``wq, wk, wv, wo`` projections (the LLaMA checkpoint layout the Hugging Face export
  maps one to one), no biases.
* **Grouped-query attention** (GQA; Ainslie et al. 2023): ``n_kv_heads`` key/value heads shared by
  groups of ``n_heads / n_kv_heads`` query heads; ``n_kv_heads = 1`` is multi-query attention
  (Shazeer 2019). Query head ``h`` uses key/value head ``h // (n_heads / n_kv_heads)``, the
  ``repeat_interleave`` grouping of ``enable_gqa`` and of Hugging Face Llama.
* **QK-norm** (optional; Dehghani et al. 2023, OLMo 2): RMSNorm over ``head_dim`` on queries and
  keys *before* RoPE, so the rotation acts on unit-scale vectors and the attention logits are
  bounded by ``max|g_q| · max|g_k| · sqrt(head_dim)`` (reported as a metric).
* **Kernels**: for plain causal attention of 16-bit tensors on CUDA up to
  :data:`lmforge.kernels.attention.MAX_SEQ` positions, lmforge's own Triton kernels
  (:mod:`lmforge.kernels.attention`: cuDNN's are built for long sequences); otherwise
  ``F.scaled_dot_product_attention`` with ``is_causal=True`` when the mask is plain causal
  (FlashAttention-2 or cuDNN on GPU); FlexAttention with a ``BlockMask`` for document
  masks on GPU (compiled once; uncompiled FlexAttention is a slow reference); an explicit boolean
  mask elsewhere. GQA uses SDPA's ``enable_gqa=True``, which the flash and cuDNN kernels serve
  without copying key/value heads (checked on an H200 with torch 2.11; ``test_model_gpu.py``
  forces the flash backend for GQA/MQA). Only float32 inputs on CUDA get expanded heads
  (``repeat_kv``): there the memory-efficient kernel is the fast one and it has no GQA, so
  ``enable_gqa`` would fall back to the math kernel, which materialises the score matrix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from lmforge.kernels import use_triton
from lmforge.kernels.attention import causal_attention, supports
from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache
from lmforge.model.layers import Linear, RMSNorm
from lmforge.model.rope import RotaryEmbedding

__all__ = ["CausalSelfAttention", "attend", "repeat_kv"]


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    return cast(Callable[..., Tensor], torch.compile(flex_attention, dynamic=False))


def _flex(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """FlexAttention; on CUDA outside ``torch.compile``, through its own compiled kernel.

    Uncompiled FlexAttention materialises the scores (a slow reference, fine for CPU tests);
    inside an outer ``torch.compile`` the plain function is traced and compiled with the model.
    """
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda and not torch.compiler.is_compiling():
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    out = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    assert isinstance(out, Tensor)
    return out


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each key/value head ``n_rep`` times (``repeat_interleave`` on the head dim).

    Args:
        x: ``(batch, n_kv_heads, seq, head_dim)``.
        n_rep: copies of each head.

    Returns:
        ``(batch, n_kv_heads * n_rep, seq, head_dim)``.
    """
    if n_rep == 1:
        return x
    batch, heads, seq, dim = x.shape
    return x[:, :, None].expand(batch, heads, n_rep, seq, dim).reshape(batch, -1, seq, dim)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | BlockMask | None = None,
    is_causal: bool = False,
) -> Tensor:
    """Scaled dot-product attention through the fastest kernel for the mask.

    Args:
        q: ``(batch, n_heads, seq_q, head_dim)``.
        k: ``(batch, n_kv_heads, seq_k, head_dim)``; ``n_heads`` divisible by ``n_kv_heads``.
        v: ``(batch, n_kv_heads, seq_k, head_dim)``.
        mask: ``None``, a boolean mask broadcastable to ``(batch, n_heads, seq_q, seq_k)``
            (True = may attend), or a FlexAttention ``BlockMask``.
        is_causal: with ``mask=None``, apply the causal mask (``seq_q == seq_k``).

    Returns:
        ``(batch, n_heads, seq_q, head_dim)``.
    """
    if isinstance(mask, BlockMask):
        return _flex(q, k, v, mask)
    if mask is None and is_causal and use_triton(q) and supports(q, k, v):
        return causal_attention(q, k, v)  # short sequences: faster than cuDNN there
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1 and q.is_cuda and q.dtype not in (torch.float16, torch.bfloat16):
        # float32 on CUDA: flash/cuDNN need 16-bit inputs and the memory-efficient kernel has
        # no GQA, so expanded heads keep it off the math kernel (see the module docstring).
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
    )


class CausalSelfAttention(nn.Module):
    """Causal self-attention with RoPE, GQA, optional QK-norm and a KV cache.

    Args:
        config: the model config (``d_model, n_heads, n_kv_heads, qk_norm, norm_eps``).
        layer_idx: this layer's index (its slot in a :class:`KVCache`).
        out_init_scale: ``init_scale`` of the output projection ``wo``.
        device: where to allocate the weights.
        dtype: the weights' dtype.
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
        assert config.n_kv_heads is not None
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim, self.layer_idx = config.head_dim, layer_idx
        d, hd = config.d_model, config.head_dim
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.wq = Linear(d, self.n_heads * hd, **kw)
        self.wk = Linear(d, self.n_kv_heads * hd, **kw)
        self.wv = Linear(d, self.n_kv_heads * hd, **kw)
        self.wo = Linear(self.n_heads * hd, d, init_scale=out_init_scale, **kw)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(hd, config.norm_eps, **kw)
            self.k_norm = RMSNorm(hd, config.norm_eps, **kw)

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
            rope: the shared rotary embedding.
            mask: see :func:`attend`; ``None`` with ``is_causal`` for plain causal attention.
            is_causal: apply the causal mask when ``mask`` is ``None``.
            kv_cache: if given, the new keys/values are appended at ``kv_cache.pos`` (the
                tokens' positions start there) and attention covers the whole cache;
                ``mask``/``is_causal`` must then come from :meth:`KVCache.attention_mask`.

        Returns:
            ``(batch, seq, d_model)``.
        """
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # Rotate in the (batch, seq, heads, head_dim) layout of the projections, so that the
        # transposes below stay views: SDPA's kernels read that layout natively.
        start = 0 if kv_cache is None else kv_cache.pos
        q, k = rope(q, start, seq_dim=-3), rope(k, start, seq_dim=-3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = attend(q, k, v, mask=mask, is_causal=is_causal)
        return self.wo(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))

    def qk_logit_bound(self) -> Tensor | None:
        """Upper bound on ``|q·k| / sqrt(head_dim)`` under QK-norm, from the norm gains.

        Returns:
            A detached scalar, or ``None`` without QK-norm.
        """
        if self.q_norm is None or self.k_norm is None:
            return None
        gq = self.q_norm.weight.detach().abs().amax().float()
        gk = self.k_norm.weight.detach().abs().amax().float()
        return gq * gk * math.sqrt(self.head_dim)
