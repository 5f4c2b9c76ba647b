"""``ModelConfig``: the shape and options of a Transformer language model (or encoder).

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.model.mla.config import MLAConfig

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
        attention: ``"mha"`` (multi-head, grouped-query or multi-query attention, by
            ``n_kv_heads``) or ``"mla"`` (multi-head latent attention, DeepSeek-V2;
            :mod:`lmforge.model.mla`).
        mla: MLA's widths (an :class:`~lmforge.model.mla.MLAConfig` or its dict, the
            ``[model.mla]`` table); ``None`` with ``attention = "mla"`` means
            :meth:`MLAConfig.scaled_to` this model.
        mtp_depth: multi-token prediction modules after the main model (DeepSeek-V3 §2.2;
            :mod:`lmforge.model.mtp`); 0 disables MTP.
        mtp_weight: λ, the weight of the MTP loss (the mean over depths of their
            cross-entropies) added to the main loss; DeepSeek-V3 uses 0.3, then 0.1.
        causal: ``True`` (default) for the decoder-only LM (:class:`~lmforge.model.Transformer`);
            ``False`` for the bidirectional encoder of masked language modelling
            (:class:`~lmforge.model.encoder.Encoder`, the same blocks without the causal mask;
            ``train.objective = "mlm"`` sets it).
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
    attention: str = "mha"
    mla: MLAConfig | None = None
    mtp_depth: int = 0
    mtp_weight: float = 0.3
    causal: bool = True
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
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")
        if self.eot_id is not None and not (
            isinstance(self.eot_id, int) and 0 <= self.eot_id < self.vocab_size
        ):
            raise ValueError(
                f"eot_id must be an id in [0, vocab_size={self.vocab_size}), got {self.eot_id!r}"
            )
        self._check_mla()
        self._check_mtp()
        self._check_moe()

    def _check_mla(self) -> None:
        from lmforge.model.mla.config import MLAConfig  # lazily: lmforge.model.mla imports us

        if self.attention not in ("mha", "mla"):
            raise ValueError(f"attention must be 'mha' or 'mla', got {self.attention!r}")
        if isinstance(self.mla, dict):
            object.__setattr__(self, "mla", MLAConfig.from_dict(self.mla))
        if self.mla is not None and not isinstance(self.mla, MLAConfig):
            raise ValueError(f"mla must be an MLAConfig or a [model.mla] table, got {self.mla!r}")
        if self.attention == "mha":
            if self.mla is not None:
                raise ValueError("an [model.mla] table was given: set attention = 'mla' to use it")
            return
        if self.mla is None:
            object.__setattr__(self, "mla", MLAConfig.scaled_to(self.d_model, self.head_dim))
        if self.qk_norm:
            raise ValueError("qk_norm does not apply to MLA (its latents are normalised already)")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(
                f"n_kv_heads ({self.n_kv_heads}) does not apply to MLA: every head reads the "
                "shared latent; leave n_kv_heads unset"
            )

    def _check_mtp(self) -> None:
        if isinstance(self.mtp_depth, bool) or not isinstance(self.mtp_depth, int):
            raise ValueError(f"mtp_depth must be an integer >= 0, got {self.mtp_depth!r}")
        if not 0 <= self.mtp_depth < self.context_length:
            raise ValueError(
                f"mtp_depth must be in [0, context_length={self.context_length}), "
                f"got {self.mtp_depth}"
            )
        w = self.mtp_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w < math.inf):
            raise ValueError(f"mtp_weight must be a finite number >= 0, got {w!r}")

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

    @property
    def rope_dim(self) -> int:
        """The width RoPE rotates: ``head_dim``, or MLA's ``qk_rope_head_dim``."""
        return self.head_dim if self.mla is None else self.mla.qk_rope_head_dim

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
