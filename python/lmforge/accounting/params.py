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
    router: int = 0
    mlp_active: int | None = None

    @property
    def total(self) -> int:
        """Every stored parameter, a tied matrix once (what ``sum(p.numel())`` reports)."""
        return self.embedding + self.non_embedding

    @property
    def non_embedding(self) -> int:
        """All but the token embedding: blocks, norms and an untied head (Kaplan et al. 2020)."""
        return self.attention + self.mlp + self.router + self.norms + self.head

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


def _mlp_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """``(stored, active, router)`` MLP parameters over all blocks."""
    assert cfg.d_ff is not None
    dense = 3 * cfg.d_model * cfg.d_ff
    moe = cfg.moe
    if moe is None:
        return cfg.n_layers * dense, cfg.n_layers * dense, 0
    n_moe = len(moe.moe_layers(cfg.n_layers))
    expert = 3 * cfg.d_model * moe.expert_width(cfg.d_ff)
    shared = moe.n_shared_experts * expert
    routed_active = round(moe.experts_per_token() * expert)
    stored = (cfg.n_layers - n_moe) * dense + n_moe * (moe.n_routed_experts * expert + shared)
    active = (cfg.n_layers - n_moe) * dense + n_moe * (routed_active + shared)
    router = 0 if moe.router == "hash" else n_moe * moe.n_routed_experts * cfg.d_model
    return stored, active, router


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count the model's parameters, part by part, from its config.

    Args:
        cfg: the model's shape.

    Returns:
        The :class:`ParamCount`; ``.total`` equals ``sum(p.numel())`` over the real model.
    """
    d, n_layers = cfg.d_model, cfg.n_layers
    assert cfg.n_kv_heads is not None and cfg.d_ff is not None  # set by __post_init__
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    attention = n_layers * (2 * d * d + 2 * kv_dim * d)
    mlp, mlp_active, router = _mlp_counts(cfg)
    # A parallel block's attention and MLP share one norm (GPT-J, PaLM).
    per_block_norms = (1 if cfg.parallel_block else 2) * d + (
        2 * cfg.head_dim if cfg.qk_norm else 0
    )
    norms = n_layers * per_block_norms + d
    embedding = cfg.vocab_size * d
    return ParamCount(
        embedding=embedding,
        attention=attention,
        mlp=mlp,
        norms=norms,
        head=0 if cfg.tie_embeddings else embedding,
        tied_head=cfg.tie_embeddings,
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
