"""``ModelConfig``: the shape and options of a Transformer language model.

One frozen dataclass, validated on construction and saved as JSON beside every checkpoint, so a
checkpoint always says how to rebuild its model. Field names are the field's own
(``d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab_size, context_length, rope_theta``).

Defaults follow what the field converged on after the original Transformer: SwiGLU with
``d_ff ≈ 8/3 · d_model`` (rounded up to a multiple of 64, so the MLP costs what a 4·d_model GELU
MLP would; Shazeer 2020), RoPE with ``theta = 10,000`` (Su et al. 2021), RMSNorm with ``eps = 1e-5``
(Zhang & Sennrich 2019), untied embeddings, no biases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.model.moe.config import MoEConfig

__all__ = ["ModelConfig", "default_d_ff", "pad_vocab_size"]


def default_d_ff(d_model: int, multiple_of: int = 64) -> int:
    """SwiGLU's hidden width: 8/3 · ``d_model`` rounded up to a multiple of ``multiple_of``."""
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


def pad_vocab_size(n_vocab: int, multiple_of: int = 64) -> int:
    """``n_vocab`` rounded up to a multiple of ``multiple_of`` (tensor-core friendly shapes)."""
    if n_vocab < 1:
        raise ValueError(f"n_vocab must be >= 1, got {n_vocab}")
    return multiple_of * math.ceil(n_vocab / multiple_of)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The architecture of a decoder-only Transformer LM.

    Attributes:
        vocab_size: rows of the embedding and the LM head; must be >= the tokenizer's
            ``n_vocab`` (pad it up to a multiple of 64: :func:`pad_vocab_size`).
        context_length: the longest sequence the model is trained on (RoPE tables are built for
            it; generation may not exceed it).
        d_model: residual stream width.
        n_layers: number of Transformer blocks.
        n_heads: query heads; ``d_model`` must be divisible by it and the head dim even (RoPE).
        n_kv_heads: key/value heads (grouped-query attention); ``n_heads`` must be divisible
            by it. ``None`` (default) means ``n_heads`` (multi-head attention); 1 is multi-query.
        d_ff: SwiGLU hidden width; ``None`` (default) means :func:`default_d_ff`.
        rope_theta: RoPE base frequency.
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share the token embedding with the LM head.
        qk_norm: RMSNorm on queries and keys per head before RoPE (Dehghani et al. 2023).
        z_loss: weight of the z-loss ``(log Z)²`` on the output softmax (PaLM); 0 disables it.
        logit_softcap: if set, logits become ``c · tanh(logits / c)`` (Gemma 2); ``None`` disables.
        parallel_block: attention and MLP read the same normalised input and are summed into
            the residual (GPT-J, PaLM) instead of running one after the other.
        init_std: standard deviation of the embedding initialisation; linear layers use a
            truncated normal with std ``1 / sqrt(fan_in)``.
        document_mask: attention never crosses an end-of-text token inside a training window
            (needs ``eot_id`` when the model is built; the trainer takes it from the token
            file's header).
        eot_id: the end-of-text token id (document separator; generation stops on it).
        activation_checkpointing: recompute each block's activations in the backward pass
            (less memory, about a third more compute).
        moe: a :class:`~lmforge.model.moe.MoEConfig` to replace MLPs by Mixture-of-Experts
            layers (a ``[model.moe]`` TOML table); ``None`` (default) keeps every MLP dense.
    """

    vocab_size: int
    context_length: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    d_ff: int | None = None
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False
    z_loss: float = 0.0
    logit_softcap: float | None = None
    parallel_block: bool = False
    init_std: float = 0.02
    document_mask: bool = False
    eot_id: int | None = None
    activation_checkpointing: bool = False
    moe: MoEConfig | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", default_d_ff(self.d_model))
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            _positive_int(name, getattr(self, name))
        _positive_int("n_kv_heads", self.n_kv_heads)
        _positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"the head dim d_model / n_heads = {self.head_dim} must be even for RoPE"
            )
        assert self.n_kv_heads is not None
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        for name in ("rope_theta", "norm_eps", "init_std"):
            _positive_float(name, getattr(self, name))
        if not (isinstance(self.z_loss, (int, float)) and self.z_loss >= 0):
            raise ValueError(f"z_loss must be a number >= 0, got {self.z_loss!r}")
        if self.logit_softcap is not None:
            _positive_float("logit_softcap", self.logit_softcap)
        if self.eot_id is not None and not (
            isinstance(self.eot_id, int) and 0 <= self.eot_id < self.vocab_size
        ):
            raise ValueError(
                f"eot_id must be an id in [0, vocab_size={self.vocab_size}), got {self.eot_id!r}"
            )
        self._check_moe()

    def _check_moe(self) -> None:
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoEConfig.from_dict(self.moe))
        if self.moe is None:
            return
        if not isinstance(self.moe, MoEConfig):
            raise ValueError(
                f"moe must be an MoEConfig, a table of its fields or None, got {self.moe!r}"
            )
        if not self.moe.moe_layers(self.n_layers):
            raise ValueError(
                f"moe.first_dense_layers ({self.moe.first_dense_layers}) leaves no MoE layer "
                f"among n_layers ({self.n_layers})"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict`'s output; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON (``config.json`` beside a checkpoint)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelConfig:
        """Read a config written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a valid model config JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a model config must be a JSON object")
        return cls.from_dict(data)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
