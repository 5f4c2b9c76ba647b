"""Parameter counts of a :class:`~lmforge.model.config.ModelConfig`, from the config alone.

The count mirrors the model part by part (token embedding → ``n_layers`` blocks of RMSNorm,
attention, RMSNorm, SwiGLU → final RMSNorm → LM head; no biases), so it equals
``sum(p.numel() for p in Transformer(cfg).parameters())`` without building the model: the trainer
prints it before any weight exists, and the memory model and the FLOP count read it.

Two views of "how big" are kept apart, as the scaling-law papers do:

- ``non_embedding`` = everything but the token embedding (Kaplan et al. 2020, §2.1: the loss
  scales with the non-embedding count). It holds the LM head when untied and the norm weights,
  exactly as ``n_params - emb.weight.numel()`` in the plain-PyTorch anchor ``gpt_baseline.py``.
- ``flops_params`` = the weights a token multiplies through: ``non_embedding`` plus the LM head
  when it is tied to the embedding (a tied matrix is stored once but still multiplied). The
  6·N FLOP rule (:mod:`lmforge.accounting.flops`) uses this one.

Beside the exact count sits the classic ``12·L·d²`` estimate (Kaplan et al. 2020, Table 1): 4·d²
for attention plus 8·d² for a GELU MLP of width 4·d. A SwiGLU MLP has three matrices, so its
width 8/3·d (Shazeer 2020) keeps the same 8·d²: with ``d_ff = 8·d/3`` exactly (d = 768,
d_ff = 2048) the blocks' matmul weights are exactly ``12·L·d²``; rounding ``d_ff`` up to a
multiple of 64, or grouped-query attention, moves the exact count off the estimate.

Multi-head latent attention (``attention = "mla"``; DeepSeek-V2 §2.1) replaces ``wq, wk, wv, wo``
by ``wq`` (or ``wq_a``, ``wq_b`` with a query latent), ``wkv_a``, ``wkv_b``, ``wo``, plus the
latents' RMSNorm gains (counted with the norms). Multi-token prediction (``mtp_depth``;
DeepSeek-V3 §2.2) adds per depth a ``2·d × d`` projection, three RMSNorms and one block, kept
apart as ``mtp``: inference does not run them, training multiplies them and the shared head
once more per depth (:attr:`ParamCount.mtp_flops_params`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.model.config import ModelConfig

__all__ = ["ParamCount", "count_params", "estimate_12ld2"]


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model, by part.

    Attributes:
        embedding: the token embedding, ``vocab_size · d_model``.
        attention: all blocks' ``wq, wk, wv, wo`` (``L · (2·d² + 2·d·n_kv_heads·head_dim)``).
        mlp: all blocks' SwiGLU ``w1, w3, w2`` (``L · 3·d·d_ff``).
        norms: every RMSNorm weight: two per block (one in a ``parallel_block``), the final
            one, and ``q_norm``/``k_norm`` (``head_dim`` each) per block when ``qk_norm``.
        head: the LM head, ``vocab_size · d_model``; 0 when tied to the embedding.
        tied_head: the LM head shares the embedding's matrix.
        mtp: every parameter of the ``mtp_depth`` MTP modules (they share the embedding and
            the head, counted above).
        mtp_depth: the number of MTP modules.
    """

    embedding: int
    attention: int
    mlp: int
    norms: int
    head: int
    tied_head: bool
    mtp: int = 0
    mtp_depth: int = 0

    @property
    def total(self) -> int:
        """Every stored parameter, a tied matrix once (what ``sum(p.numel())`` reports)."""
        return self.embedding + self.non_embedding

    @property
    def non_embedding(self) -> int:
        """All but the token embedding: blocks, norms, an untied head (Kaplan et al. 2020) and
        the MTP modules."""
        return self.attention + self.mlp + self.norms + self.head + self.mtp

    @property
    def blocks_matmul(self) -> int:
        """The blocks' matrix weights (attention + MLP): what ``12·L·d²`` estimates."""
        return self.attention + self.mlp

    @property
    def head_matmul(self) -> int:
        """The LM head's matrix as multiplied, stored separately or tied (``vocab_size·d``)."""
        return self.embedding if self.tied_head else self.head

    @property
    def flops_params(self) -> int:
        """The N of 6·N: ``non_embedding`` plus the LM head when it is tied.

        Norm weights are included, as the anchor ``gpt_baseline.py`` includes them; they are
        ``O(L·d)`` against ``O(L·d²)`` and change the count by well under 0.1%.
        """
        return self.blocks_matmul + self.norms + self.head_matmul

    @property
    def mtp_flops_params(self) -> int:
        """What training adds to N for MTP: the modules, and the shared head once per depth."""
        return self.mtp + self.mtp_depth * self.head_matmul


def _attention_params(cfg: ModelConfig) -> tuple[int, int]:
    """One block's attention: ``(matrix weights, norm gains)``."""
    d = cfg.d_model
    assert cfg.n_kv_heads is not None
    if cfg.mla is None:
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        return 2 * d * d + 2 * kv_dim * d, 2 * cfg.head_dim if cfg.qk_norm else 0
    m, h = cfg.mla, cfg.n_heads
    if m.q_lora_rank:
        q, q_norm = m.q_lora_rank * (d + h * m.qk_head_dim), m.q_lora_rank
    else:
        q, q_norm = d * h * m.qk_head_dim, 0
    kv = d * m.cache_width + m.kv_lora_rank * h * (m.qk_nope_head_dim + m.v_head_dim)
    return q + kv + h * m.v_head_dim * d, q_norm + m.kv_lora_rank


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count the model's parameters, part by part, from its config.

    Args:
        cfg: the model's shape.

    Returns:
        The :class:`ParamCount`; ``.total`` equals ``sum(p.numel())`` over the real model.
    """
    d, n_layers = cfg.d_model, cfg.n_layers
    assert cfg.n_kv_heads is not None and cfg.d_ff is not None  # set by __post_init__
    block_attention, attention_norms = _attention_params(cfg)
    block_mlp = 3 * d * cfg.d_ff
    # A parallel block's attention and MLP share one norm (GPT-J, PaLM).
    per_block_norms = (1 if cfg.parallel_block else 2) * d + attention_norms
    norms = n_layers * per_block_norms + d
    embedding = cfg.vocab_size * d
    # An MTP module: hidden and embedding norms, the 2d -> d projection, a block, a final norm.
    mtp_module = 3 * d + 2 * d * d + block_attention + block_mlp + per_block_norms
    return ParamCount(
        embedding=embedding,
        attention=n_layers * block_attention,
        mlp=n_layers * block_mlp,
        norms=norms,
        head=0 if cfg.tie_embeddings else embedding,
        tied_head=cfg.tie_embeddings,
        mtp=cfg.mtp_depth * mtp_module,
        mtp_depth=cfg.mtp_depth,
    )


def estimate_12ld2(cfg: ModelConfig) -> int:
    """The classic estimate of the blocks' matrix weights, ``12 · n_layers · d_model²``.

    Exact for multi-head attention with a GELU MLP of width ``4·d`` or a SwiGLU MLP of width
    ``8·d/3``; compare it with :attr:`ParamCount.blocks_matmul`.

    Args:
        cfg: the model's shape.

    Returns:
        ``12 · n_layers · d_model²``.
    """
    return 12 * cfg.n_layers * cfg.d_model**2
