"""``MLAConfig``: the shape of multi-head latent attention (DeepSeek-V2 §2.1).

Kept beside the MLA module and nested in :class:`~lmforge.model.config.ModelConfig` as
``mla`` (a ``[model.mla]`` table in a run config). The field names are those of DeepSeek's own
configs, so a reader can set them from the papers' tables: DeepSeek-V2 uses ``q_lora_rank =
1536, kv_lora_rank = 512, qk_nope_head_dim = 128, qk_rope_head_dim = 64, v_head_dim = 128`` at
``d_model = 5120`` with 128 heads; DeepSeek-V2-Lite compresses no queries (``q_lora_rank = 0``).

:meth:`MLAConfig.scaled_to` gives DeepSeek-V2's ratios for a smaller model (§2.1.4, §3.1.2:
d_c = 4·d_h, d_h^R = d_h/2, d_c' = 3·d/10), the shape ``attention = "mla"`` gets when no table
is given; it equals :func:`lmforge.accounting.default_mla_shape` except that the RoPE width is
rounded down to an even number (RoPE rotates pairs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["MLAConfig"]


@dataclass(frozen=True, kw_only=True)
class MLAConfig:
    """Multi-head latent attention's widths (DeepSeek-V2 §2.1, the names of its config).

    Attributes:
        kv_lora_rank: d_c, the width of the compressed key/value latent ``c_KV`` (cached).
        qk_nope_head_dim: d_h, a head's query/key width that carries no position.
        qk_rope_head_dim: d_h^R, the decoupled RoPE query/key width; the RoPE key is shared by
            all heads and cached beside the latent. Even (RoPE rotates pairs).
        v_head_dim: a head's value width.
        q_lora_rank: d_c', the query latent's width; 0 projects queries straight from
            ``d_model`` (DeepSeek-V2-Lite).

    Raises:
        ValueError: a width that is not a positive integer (``q_lora_rank`` may be 0), or an
            odd ``qk_rope_head_dim``.
    """

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0

    def __post_init__(self) -> None:
        if self.q_lora_rank is None:  # "no query compression", as DeepSeek's configs write it
            object.__setattr__(self, "q_lora_rank", 0)
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("q_lora_rank", self.q_lora_rank, minimum=0)
        if self.qk_rope_head_dim % 2:
            raise ValueError(
                f"mla.qk_rope_head_dim must be even (RoPE rotates pairs), got "
                f"{self.qk_rope_head_dim}"
            )

    @property
    def qk_head_dim(self) -> int:
        """A head's query/key width, ``qk_nope_head_dim + qk_rope_head_dim`` (the softmax scale
        is ``1 / sqrt`` of it)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_width(self) -> int:
        """Elements cached per token per layer: the latent plus the shared RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @classmethod
    def scaled_to(cls, d_model: int, head_dim: int) -> MLAConfig:
        """DeepSeek-V2's ratios for a model of width ``d_model`` and head dim ``head_dim``.

        Returns:
            ``kv_lora_rank = 4·head_dim``, ``qk_nope_head_dim = v_head_dim = head_dim``,
            ``qk_rope_head_dim = head_dim / 2`` rounded down to an even number (at least 2),
            ``q_lora_rank = 3·d_model / 10`` rounded down.
        """
        return cls(
            kv_lora_rank=4 * head_dim,
            qk_nope_head_dim=head_dim,
            qk_rope_head_dim=max(2, head_dim // 2 // 2 * 2),
            v_head_dim=head_dim,
            q_lora_rank=3 * d_model // 10,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MLAConfig:
        """Build from :meth:`to_dict`'s output (a ``[model.mla]`` table).

        Raises:
            ValueError: unknown or missing keys, or invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown [model.mla] key(s) {unknown}; known keys: {sorted(fields)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(
                f"[model.mla] lacks {missing}; give every width, or drop the table to get "
                "DeepSeek-V2's ratios for this model (MLAConfig.scaled_to)"
            )
        return cls(**data)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"mla.{name} must be an integer >= {minimum}, got {value!r}")
