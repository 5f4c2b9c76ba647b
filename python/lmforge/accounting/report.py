"""The shape report printed at the start of every training run, and its dict form.

A few numbers say whether a shape is sensible before any GPU time is spent: the parameter
count with and without the embedding (Kaplan et al. 2020 fit loss to the latter), the aspect
ratio ``d_model / n_layers`` (Kaplan et al. find loss flat over a wide range of it; Llama-style
models sit near 100–200, GPT-2 small at 64), ``d_ff / d_model`` (8/3 for a SwiGLU that costs
what a 4·d GELU MLP does), the head dim (64 or 128 for fast attention kernels), and the
``12·L·d²`` rule of thumb beside the exact count of the blocks' matrices, so a reader sees at
once how far SwiGLU rounding or grouped-query attention moved the shape off the classic one. A
Mixture-of-Experts model adds a line with its layout and its active parameters (what a token
multiplies, what the FLOPs count) beside the stored ones.
"""

from __future__ import annotations

from typing import Any

from lmforge.accounting.flops import flops_per_token, forward_flops_per_token
from lmforge.accounting.params import count_params, estimate_12ld2
from lmforge.accounting.units import format_count, format_flops
from lmforge.model.config import ModelConfig

__all__ = ["shape_report", "shape_summary"]


def shape_summary(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, Any]:
    """The numbers of :func:`shape_report`, as a JSON-serialisable dict.

    Args:
        cfg: the model's shape.
        seq_len: the training sequence length for the FLOPs; ``None`` means
            ``cfg.context_length``.

    Returns:
        Parameter counts (``params``, ``non_embedding_params``, per part), the shape ratios,
        ``estimate_12ld2`` beside ``blocks_matmul_params``, and FLOPs per token.

    Raises:
        ValueError: ``seq_len`` is not a positive integer.
    """
    pc = count_params(cfg)
    assert cfg.d_ff is not None and cfg.n_kv_heads is not None  # set by __post_init__
    estimate = estimate_12ld2(cfg)
    t = cfg.context_length if seq_len is None else seq_len
    return {
        "params": pc.total,
        "non_embedding_params": pc.non_embedding,
        "embedding_params": pc.embedding,
        "attention_params": pc.attention,
        "mlp_params": pc.mlp,
        "norm_params": pc.norms,
        "head_params": pc.head,
        "tie_embeddings": pc.tied_head,
        "blocks_matmul_params": pc.blocks_matmul,
        "estimate_12ld2": estimate,
        "blocks_matmul_over_12ld2": pc.blocks_matmul / estimate,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "aspect_ratio": cfg.d_model / cfg.n_layers,
        "d_ff": cfg.d_ff,
        "d_ff_ratio": cfg.d_ff / cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "seq_len": t,
        "flops_per_token": flops_per_token(cfg, seq_len),
        "forward_flops_per_token": forward_flops_per_token(cfg, seq_len),
        "attention": cfg.attention,
        "mla": None if cfg.mla is None else cfg.mla.to_dict(),
        "mtp_depth": cfg.mtp_depth,
        "mtp_params": pc.mtp,
        **_moe_summary(cfg),
    }


def _moe_summary(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.moe is None:
        return {}
    assert cfg.d_ff is not None
    pc, moe = count_params(cfg), cfg.moe
    return {
        "moe_layers": len(moe.moe_layers(cfg.n_layers)),
        "n_routed_experts": moe.n_routed_experts,
        "top_k": moe.top_k,
        "n_shared_experts": moe.n_shared_experts,
        "expert_d_ff": moe.expert_width(cfg.d_ff),
        "router": moe.router,
        "router_params": pc.router,
        "active_params": pc.active,
        "active_mlp_params": pc.active_mlp,
    }


def shape_report(cfg: ModelConfig, seq_len: int | None = None) -> str:
    """A short multi-line description of the model's size, shape and cost.

    Example (the ``gpt2-124M`` preset)::

        params 162.2M total, 123.6M non-embedding (embedding 38.6M, LM head 38.6M)
        blocks 84.9M = attention 28.3M + mlp 56.6M (12·L·d² = 84.9M, ratio 1.000); norms 19.2K
        shape d_model 768 × n_layers 12 (d_model/n_layers 64.0), d_ff 2048 (2.67·d_model),
          heads 12 (kv 12) × head_dim 64, vocab 50304
        FLOPs/token 855 MFLOP train (6N + 12·L·T·d, T=1024), 285 MFLOP forward

    Args:
        cfg: the model's shape.
        seq_len: the training sequence length; ``None`` means ``cfg.context_length``.

    Returns:
        The report, lines joined by ``"\\n"`` (no trailing newline).

    Raises:
        ValueError: ``seq_len`` is not a positive integer.
    """
    s = shape_summary(cfg, seq_len)
    f = format_count
    head = "tied to the embedding" if s["tie_embeddings"] else f"LM head {f(s['head_params'])}"
    extra = []
    if cfg.mla is not None:
        m = cfg.mla
        extra.append(
            f"  MLA: q_lora_rank {m.q_lora_rank}, kv_lora_rank {m.kv_lora_rank}, head qk "
            f"{m.qk_nope_head_dim}+{m.qk_rope_head_dim} (RoPE), v {m.v_head_dim}; "
            f"cache {m.cache_width} per token per layer"
        )
    if cfg.mtp_depth:
        extra.append(
            f"  MTP: {cfg.mtp_depth} module(s), {f(s['mtp_params'])} params, loss weight "
            f"{cfg.mtp_weight} (training only; counted in the train FLOPs)"
        )
    moe = []
    if "moe_layers" in s:
        moe = [
            f"MoE {s['moe_layers']} layers x {s['n_routed_experts']} experts ({s['router']} "
            f"top-{s['top_k']}, {s['n_shared_experts']} shared, expert d_ff {s['expert_d_ff']}): "
            f"active {f(s['active_params'])} of {f(s['params'])} params (mlp "
            f"{f(s['active_mlp_params'])} of {f(s['mlp_params'])}), routers "
            f"{f(s['router_params'])}"
        ]
    return "\n".join(
        [
            f"params {f(s['params'])} total, {f(s['non_embedding_params'])} non-embedding "
            f"(embedding {f(s['embedding_params'])}, {head})",
            f"blocks {f(s['blocks_matmul_params'])} = attention {f(s['attention_params'])} + "
            f"mlp {f(s['mlp_params'])} (12·L·d² = {f(s['estimate_12ld2'])}, ratio "
            f"{s['blocks_matmul_over_12ld2']:.3f}); norms {f(s['norm_params'])}",
            f"shape d_model {s['d_model']} × n_layers {s['n_layers']} (d_model/n_layers "
            f"{s['aspect_ratio']:.1f}), d_ff {s['d_ff']} ({s['d_ff_ratio']:.2f}·d_model),",
            f"  heads {s['n_heads']} (kv {s['n_kv_heads']}) × head_dim {s['head_dim']}, "
            f"vocab {s['vocab_size']}",
            *extra,
            f"FLOPs/token {format_flops(s['flops_per_token'])} train (6N + 12·L·T·d, "
            f"T={s['seq_len']}), {format_flops(s['forward_flops_per_token'])} forward",
            *moe,
        ]
    )
