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

Mixture-of-Experts models (``cfg.moe``) separate **stored** from **active** parameters (Switch,
Fedus et al. 2022; DeepSeekMoE): ``mlp`` counts every expert (routed and shared) and the dense
MLPs, ``mlp_active`` what one token multiplies — the dense MLPs, the shared experts and
``top_k`` routed experts (expert-choice: ``top_k · capacity_factor`` on average) — and
``router`` the routers' ``E × d`` matrices, which every token multiplies. FLOPs
(``flops_params``) use the active count.
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
        mlp: all blocks' SwiGLU ``w1, w3, w2`` (``L · 3·d·d_ff``; MoE: every expert's).
        norms: every RMSNorm weight: two per block (one in a ``parallel_block``), the final
            one, and ``q_norm``/``k_norm`` (``head_dim`` each) per block when ``qk_norm``.
        head: the LM head, ``vocab_size · d_model``; 0 when tied to the embedding.
        tied_head: the LM head shares the embedding's matrix.
        mtp: every parameter of the ``mtp_depth`` MTP modules (they share the embedding and
            the head, counted above).
        mtp_active: of ``mtp``, what one token multiplies (less than ``mtp`` when the MTP
            blocks are MoE blocks).
        mtp_depth: the number of MTP modules.
        router: MoE routers' weights (``n_routed_experts · d_model`` per MoE layer; hash
            routing has none).
        mlp_active: the MLP weights one token multiplies (MoE: dense MLPs, shared experts and
            its routed experts); ``None`` means all of ``mlp`` (a dense model).
    """

    embedding: int
    attention: int
    mlp: int
    norms: int
    head: int
    tied_head: bool
    mtp: int = 0
    mtp_active: int = 0
    mtp_depth: int = 0
    router: int = 0
    mlp_active: int | None = None

    @property
    def total(self) -> int:
        """Every stored parameter, a tied matrix once (what ``sum(p.numel())`` reports)."""
        return self.embedding + self.non_embedding

    @property
    def non_embedding(self) -> int:
        """All but the token embedding: blocks, routers, norms, an untied head (Kaplan et al.
        2020) and the MTP modules."""
        return self.attention + self.mlp + self.router + self.norms + self.head + self.mtp

    @property
    def blocks_matmul(self) -> int:
        """The blocks' matrix weights (attention + MLP + routers): what ``12·L·d²`` estimates."""
        return self.attention + self.mlp + self.router

    @property
    def active_mlp(self) -> int:
        """The MLP weights one token multiplies (``mlp`` for a dense model)."""
        return self.mlp if self.mlp_active is None else self.mlp_active

    @property
    def active(self) -> int:
        """Parameters one token uses, embedding included (``total`` for a dense model)."""
        return self.total - self.mlp + self.active_mlp

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
        return self.attention + self.active_mlp + self.router + self.norms + self.head_matmul

    @property
    def mtp_flops_params(self) -> int:
        """What training adds to N for MTP: the modules, and the shared head once per depth."""
        return self.mtp_active + self.mtp_depth * self.head_matmul


def _mlp_counts(cfg: ModelConfig, layers: range) -> tuple[int, int, int]:
    """``(stored, active, router)`` MLP parameters of the blocks numbered ``layers``."""
    assert cfg.d_ff is not None
    dense = 3 * cfg.d_model * cfg.d_ff
    moe = cfg.moe
    if moe is None:
        return len(layers) * dense, len(layers) * dense, 0
    n_moe = sum(moe.is_moe_layer(i) for i in layers)
    expert = 3 * cfg.d_model * moe.expert_width(cfg.d_ff)
    shared = moe.n_shared_experts * expert
    routed_active = round(moe.experts_per_token() * expert)
    n_dense = len(layers) - n_moe
    stored = n_dense * dense + n_moe * (moe.n_routed_experts * expert + shared)
    active = n_dense * dense + n_moe * (routed_active + shared)
    router = 0 if moe.router == "hash" else n_moe * moe.n_routed_experts * cfg.d_model
    return stored, active, router


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
    mlp, mlp_active, router = _mlp_counts(cfg, range(n_layers))
    # A parallel block's attention and MLP share one norm (GPT-J, PaLM).
    per_block_norms = (1 if cfg.parallel_block else 2) * d + attention_norms
    norms = n_layers * per_block_norms + d
    embedding = cfg.vocab_size * d
    # An MTP module: hidden and embedding norms, the 2d -> d projection, a block (numbered on
    # from the main blocks, so MoE where the layout puts one), a final norm.
    depth = cfg.mtp_depth
    mtp_mlp, mtp_mlp_active, mtp_router = _mlp_counts(cfg, range(n_layers, n_layers + depth))
    mtp_rest = depth * (3 * d + 2 * d * d + block_attention + per_block_norms) + mtp_router
    mtp, mtp_active = mtp_rest + mtp_mlp, mtp_rest + mtp_mlp_active
    return ParamCount(
        embedding=embedding,
        attention=n_layers * block_attention,
        mlp=mlp,
        norms=norms,
        head=0 if cfg.tie_embeddings else embedding,
        tied_head=cfg.tie_embeddings,
        mtp=mtp,
        mtp_active=mtp_active,
        mtp_depth=cfg.mtp_depth,
        router=router,
        mlp_active=None if cfg.moe is None else mlp_active,
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
