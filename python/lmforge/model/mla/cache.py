"""``LatentKVCache``: MLA's KV cache, the latent ``c_KV`` and the shared RoPE key per token.

Multi-head latent attention rebuilds every head's keys and values from one latent per token
(DeepSeek-V2 §2.1.2), so that is all a decoder has to keep: ``kv_lora_rank +
qk_rope_head_dim`` numbers per token per layer, against ``2 · n_kv_heads · head_dim`` for
MHA/GQA (DeepSeek-V2, Table 1). :func:`lmforge.accounting.attention_cost` counts the same bytes
(:meth:`LatentKVCache.bytes_per_token` is tested against it).

Design choices:

* **One buffer per layer**, ``(batch, max_len, kv_lora_rank + qk_rope_head_dim)``, the latent
  in the first ``kv_lora_rank`` columns and the rotated RoPE key after it: the absorbed
  attention reads it as the keys of one shared head and its first columns as the values, as
  views, with no copy per step.
* Everything else — preallocation at the first write in the writer's dtype and device, the
  fill level, document tracking, the attention mask, ``truncate`` — is
  :class:`~lmforge.model.kv_cache.KVCache`'s, so the Transformer and ``generate`` drive both
  caches the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from lmforge.model.kv_cache import KVCache

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig

__all__ = ["LatentKVCache"]


class LatentKVCache(KVCache):
    """Per-layer latent buffers with a shared fill level ``pos``.

    Args:
        n_layers: number of attention layers (slots).
        batch_size: number of sequences decoded together.
        kv_lora_rank: width of the latent ``c_KV``.
        qk_rope_head_dim: width of the shared RoPE key.
        max_len: the most tokens the cache holds.
        eot_id: if set, track document ids and mask attention across end-of-text tokens.

    Raises:
        ValueError: if a size is not positive.
    """

    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        max_len: int,
        eot_id: int | None = None,
    ) -> None:
        super().__init__(
            n_layers=n_layers,
            batch_size=batch_size,
            n_kv_heads=1,
            head_dim=kv_lora_rank + qk_rope_head_dim,
            max_len=max_len,
            eot_id=eot_id,
        )
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim
        self.latents: list[Tensor | None] = [None] * n_layers

    @classmethod
    def for_model(
        cls, config: ModelConfig, batch_size: int, max_len: int | None = None
    ) -> LatentKVCache:
        """A latent cache for a model built from ``config`` (with MLA).

        Slots cover the ``n_layers`` blocks and the ``mtp_depth`` MTP blocks.

        Raises:
            ValueError: ``config`` is not MLA, or ``max_len`` is not in
                ``[1, context_length]``.
        """
        if config.mla is None:
            raise ValueError("LatentKVCache is for attention = 'mla'; use KVCache.for_model")
        max_len = config.context_length if max_len is None else max_len
        if max_len > config.context_length:
            raise ValueError(
                f"max_len={max_len} exceeds the model's context_length={config.context_length}"
            )
        return cls(
            n_layers=config.n_layers + config.mtp_depth,
            batch_size=batch_size,
            kv_lora_rank=config.mla.kv_lora_rank,
            qk_rope_head_dim=config.mla.qk_rope_head_dim,
            max_len=max_len,
            eot_id=config.eot_id if config.document_mask else None,
        )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Refused: a latent cache stores latents (:meth:`update_latent`), not keys/values.

        Raises:
            ValueError: always.
        """
        raise ValueError(
            "a LatentKVCache holds MLA latents; per-head keys and values go in a KVCache "
            "(build the cache with KVCache.for_model(model.config, ...))"
        )

    def update_latent(self, layer: int, c_kv: Tensor, k_rope: Tensor) -> Tensor:
        """Write the new tokens' latents and RoPE keys at ``pos``; return all cached so far.

        Args:
            layer: the layer index.
            c_kv: ``(batch, seq, kv_lora_rank)`` normalised latents of the new tokens.
            k_rope: ``(batch, seq, qk_rope_head_dim)`` their RoPE keys (rotated).

        Returns:
            A view ``(batch, pos + seq, kv_lora_rank + qk_rope_head_dim)``: latents, then keys.

        Raises:
            ValueError: if the shapes do not fit the cache or it has no room left.
        """
        batch, seq, width = c_kv.shape
        if (batch, width) != (self.batch_size, self.kv_lora_rank) or k_rope.shape != (
            batch,
            seq,
            self.qk_rope_head_dim,
        ):
            raise ValueError(
                f"latents {tuple(c_kv.shape)} and RoPE keys {tuple(k_rope.shape)} do not fit a "
                f"cache of batch={self.batch_size}, kv_lora_rank={self.kv_lora_rank}, "
                f"qk_rope_head_dim={self.qk_rope_head_dim}"
            )
        self._check_room(seq)
        buf = self.latents[layer]
        if buf is None:
            shape = (self.batch_size, self.max_len, self.head_dim)
            buf = self.latents[layer] = c_kv.new_zeros(shape)
        end = self.pos + seq
        buf[:, self.pos : end, : self.kv_lora_rank] = c_kv
        buf[:, self.pos : end, self.kv_lora_rank :] = k_rope
        return buf[:, :end]

    def _buffers(self) -> list[Tensor]:
        return [t for t in self.latents if t is not None]
