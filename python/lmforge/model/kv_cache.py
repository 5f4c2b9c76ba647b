"""``KVCache``: the keys and values of past tokens, for incremental decoding.

During generation each new token needs the keys and values of every earlier token in every
layer; recomputing them costs a full forward per token, caching them turns generation into one
small forward per token (Pope et al. 2022, "Efficiently Scaling Transformer Inference").

Design choices:

* **Keys and values only.** Past queries are never needed again: a new token's query attends to
  the old keys, and old queries do not attend to the new key.
* **Preallocated** ``(batch, n_kv_heads, max_len, head_dim)`` per layer, written in place, so a
  step costs no reallocation. Only ``n_kv_heads`` heads are stored: grouped-query attention
  shrinks the cache by ``n_heads / n_kv_heads`` (Ainslie et al. 2023).
* **Allocated at the first write**, in the dtype and on the device of the first keys, so the
  cache follows the model (float32, bf16, or autocast) without being told.
* **Document ids** are tracked when the model masks documents, so that generation sees exactly
  the mask training saw (a prompt that contains an end-of-text token starts a new document).
* **Rollback** (:meth:`KVCache.truncate`): speculative decoding writes draft tokens and keeps
  only those the model accepts.
* The cache holds no autograd graph: build and use it under ``torch.no_grad()``.
* A model with multi-head latent attention gets a
  :class:`~lmforge.model.mla.cache.LatentKVCache` from :meth:`KVCache.for_model` (latents
  instead of keys and values); slots cover the multi-token-prediction blocks too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model.config import ModelConfig
from lmforge.model.masks import causal_mask, document_causal_mask, document_ids

__all__ = ["KVCache"]


class KVCache:
    """Per-layer key/value buffers with a shared fill level ``pos``.

    Args:
        n_layers: number of attention layers.
        batch_size: number of sequences decoded together.
        n_kv_heads: key/value heads per layer.
        head_dim: width of one head.
        max_len: the most tokens the cache holds (prompt + generated).
        eot_id: if set, track document ids and mask attention across end-of-text tokens.

    Raises:
        ValueError: if a size is not positive.
    """

    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        eot_id: int | None = None,
    ) -> None:
        sizes = dict(
            n_layers=n_layers,
            batch_size=batch_size,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            max_len=max_len,
        )
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"KVCache sizes must be positive, got {bad}")
        self.n_layers, self.batch_size, self.max_len = n_layers, batch_size, max_len
        self.n_kv_heads, self.head_dim, self.eot_id = n_kv_heads, head_dim, eot_id
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.pos = 0
        self._doc_ids: Tensor | None = None
        self._next_doc: Tensor | None = None

    @classmethod
    def for_model(cls, config: ModelConfig, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache shaped for a model built from ``config``.

        Args:
            config: the model's config.
            batch_size: number of sequences.
            max_len: capacity; default ``config.context_length``.

        Returns:
            An empty cache (document ids tracked iff ``config.document_mask``): a
            :class:`~lmforge.model.mla.cache.LatentKVCache` for an MLA model. It has a slot
            for each of the ``n_layers + mtp_depth`` blocks (a slot costs memory only once
            written).

        Raises:
            ValueError: if ``max_len`` exceeds ``config.context_length`` or is not positive.
        """
        if config.mla is not None:
            from lmforge.model.mla.cache import LatentKVCache  # it subclasses this one

            return LatentKVCache.for_model(config, batch_size, max_len)
        max_len = config.context_length if max_len is None else max_len
        if max_len > config.context_length:
            raise ValueError(
                f"max_len={max_len} exceeds the model's context_length={config.context_length}"
            )
        assert config.n_kv_heads is not None
        return cls(
            n_layers=config.n_layers + config.mtp_depth,
            batch_size=batch_size,
            n_kv_heads=config.n_kv_heads,
            head_dim=config.head_dim,
            max_len=max_len,
            eot_id=config.eot_id if config.document_mask else None,
        )

    def _check_room(self, seq: int) -> None:
        if self.pos + seq > self.max_len:
            raise ValueError(
                f"KVCache is full: {self.pos} cached + {seq} new tokens > max_len={self.max_len}"
            )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new tokens' keys and values at ``pos`` and return all cached so far.

        Args:
            layer: the layer index.
            k: ``(batch, n_kv_heads, seq, head_dim)`` keys of the new tokens (RoPE applied).
            v: ``(batch, n_kv_heads, seq, head_dim)`` values of the new tokens.

        Returns:
            Views ``(batch, n_kv_heads, pos + seq, head_dim)`` of the keys and the values.

        Raises:
            ValueError: if the shapes do not match the cache or it has no room left.
        """
        batch, heads, seq, dim = k.shape
        if (batch, heads, dim) != (self.batch_size, self.n_kv_heads, self.head_dim):
            raise ValueError(
                f"keys of shape {tuple(k.shape)} do not fit a cache of batch={self.batch_size}, "
                f"n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"
            )
        self._check_room(seq)
        cache_k, cache_v = self.keys[layer], self.values[layer]
        if cache_k is None or cache_v is None:
            shape = (self.batch_size, self.n_kv_heads, self.max_len, self.head_dim)
            cache_k = self.keys[layer] = k.new_zeros(shape)
            cache_v = self.values[layer] = v.new_zeros(shape)
        end = self.pos + seq
        cache_k[:, :, self.pos : end] = k
        cache_v[:, :, self.pos : end] = v
        return cache_k[:, :, :end], cache_v[:, :, :end]

    def attention_mask(self, idx: Tensor) -> tuple[Tensor | None, bool]:
        """The mask for new tokens ``idx`` attending to the cache and to themselves.

        Records their document ids when documents are tracked. Call once per forward, before
        the layers write their keys.

        Args:
            idx: ``(batch, seq)`` the new token ids.

        Returns:
            ``(mask, is_causal)`` for ``F.scaled_dot_product_attention``: a boolean mask
            broadcastable to ``(batch, 1, seq, pos + seq)`` (True = may attend) or ``None``.

        Raises:
            ValueError: if the cache has no room for ``seq`` more tokens.
        """
        seq = idx.shape[-1]
        self._check_room(seq)
        end = self.pos + seq
        if self.eot_id is not None:
            if self._doc_ids is None or self._next_doc is None:
                self._doc_ids = idx.new_zeros((self.batch_size, self.max_len), dtype=torch.int32)
                self._next_doc = idx.new_zeros((self.batch_size,), dtype=torch.int32)
            doc_q = document_ids(idx, self.eot_id, first_doc=self._next_doc)
            self._doc_ids[:, self.pos : end] = doc_q
            self._next_doc = doc_q[:, -1] + (idx[:, -1] == self.eot_id).to(torch.int32)
            return document_causal_mask(doc_q, self._doc_ids[:, :end], start=self.pos), False
        if seq == 1:
            return None, False  # one new token sees the whole cache
        if self.pos == 0:
            return None, True
        return causal_mask(seq, end, start=self.pos, device=idx.device), False

    def advance(self, seq: int) -> None:
        """Move the fill level past ``seq`` tokens written by every layer.

        Raises:
            ValueError: if that overflows the cache.
        """
        self._check_room(seq)
        self.pos += seq

    def truncate(self, pos: int) -> None:
        """Forget the tokens from position ``pos`` on (rejected draft tokens).

        Raises:
            ValueError: if ``pos`` is not in ``[0, self.pos]``.
        """
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= self.pos:
            raise ValueError(f"truncate position must be in [0, {self.pos}], got {pos!r}")
        if self._doc_ids is not None and pos < self.pos:
            # A position's document id depends only on the tokens before it: the id written
            # at ``pos`` is the one the next token gets.
            self._next_doc = self._doc_ids[:, pos].clone()
        self.pos = pos

    def _buffers(self) -> list[Tensor]:
        return [t for t in (*self.keys, *self.values) if t is not None]

    def bytes_per_token(self) -> int:
        """Bytes the allocated buffers hold per token of one sequence, all layers.

        Returns:
            ``sum(buffer bytes) / (batch_size · max_len)``; 0 before the first write.
        """
        total = sum(t.numel() * t.element_size() for t in self._buffers())
        return total // (self.batch_size * self.max_len)

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept for reuse)."""
        self.pos = 0
        self._next_doc = None if self._next_doc is None else torch.zeros_like(self._next_doc)
