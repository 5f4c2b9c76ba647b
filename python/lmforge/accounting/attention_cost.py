"""Attention at inference: KV-cache bytes, and the FLOPs and memory traffic of one decoding step.

Decoding is memory-bound: each step reads all weights and the whole KV cache to make one token
per sequence (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need",
§2.4.1, §3.1.1). Counted for MHA, GQA (Ainslie et al. 2023), MQA (Shazeer 2019) and MLA
(DeepSeek-AI 2024, "DeepSeek-V2", §2.1), with the cache and without, so the intensity (FLOPs
per byte) can be set against a GPU's FLOP/s over bandwidth (~295 FLOP/B: H100, bf16).

Notation: b batch, n positions the new token attends to (the cache, itself included),
d = d_model, h query heads of width k, g KV heads (h: MHA, 1: MQA, between: GQA), d_kv = g·k,
L layers, s bytes per element (one dtype for weights, cache and activations). Exact integer
counts per layer and step, times L:

- **Weights** ``W = 2·d·h·k + 2·d·d_kv`` (wq, wo; wk, wv: ``4·d²`` for MHA, as
  :func:`~lmforge.accounting.params.count_params` counts them).
- **KV cache** ``2·d_kv`` elements per token (keys and values of g heads; Pope et al. 2022,
  "Efficiently Scaling Transformer Inference"), ``b·n·2·d_kv`` in all: MQA's is h times
  smaller than MHA's.
- **With the cache**: FLOPs ``2·b·W + 4·b·n·h·k`` (a multiply-add per weight per token;
  ``Q·Kᵀ`` and ``P·V`` are ``b·n·h·k`` each, whatever g). Elements moved
  ``W + 2·b·n·d_kv + b·(2·d + 2·h·k + 2·d_kv)``: weights once (shared by the batch), the cache
  once (scores stay on chip, as in flash-decoding), activations x, q, k, v, o, y once each
  (Shazeer's ``x, q, o, y`` plus the new token's k, v).
- **Without the cache** the keys and values of all n positions are recomputed; their layer
  inputs are not kept either (that would be a cache of d per token), so every layer runs on the
  whole prefix, as ``use_cache=False`` generation does: FLOPs ``2·b·n·W + 4·b·n²·h·k`` (causal
  half not credited, as in :mod:`.flops`), elements ``W + b·n·(2·d + 2·h·k + 2·d_kv)`` (the
  n² scores stay on chip in a flash kernel).

Bytes per FLOP with the cache is, for MHA, ``(4·d² + 2·b·n·d + 6·b·d) / (8·b·d² + 4·b·n·d)``
= Θ(n/d + 1/b), and for MQA Θ(1/d + n/(d·h) + 1/b): Shazeer's ratios, whose inverses are the
intensities here. Once n ≳ d, MHA stays near 2/s FLOP/B at any batch (each cached element
serves one head); GQA approaches h/g times that, MQA h times.

**MLA** (DeepSeek-V2 §2.1.2–2.1.3; :class:`MLAShape`: d_c = ``kv_lora_rank``, d_cq =
``q_lora_rank``, 0 for no query compression as in DeepSeek-V2-Lite, d_n, d_r, d_v = the nope,
RoPE and value head widths) caches the latent c_KV and the decoupled RoPE key shared by the
heads: ``d_c + d_r`` per token. ``W = W_q + d·(d_c + d_r) + d_c·h·(d_n + d_v) + h·d_v·d`` with
``W_q = d_cq·(d + h·(d_n + d_r))`` (or ``d·h·(d_n + d_r)``). Decoding is counted in the
**absorbed** form (§2.1.2: W_UK absorbed into the query, W_UV into the output;
``attn_impl="absorb"`` in DeepSeek-V3's inference code): each head's query becomes a latent of
d_c and attends the cache like MQA with key width ``d_c + d_r`` and value width d_c. FLOPs
``2·b·W + 2·b·n·h·(2·d_c + d_r)``, elements ``W + b·n·(d_c + d_r) + b·(2·d + d_cq + h·(d_n +
d_r) + (d_c + d_r) + h·d_v + 2·h·d_c)`` (x, y, c_Q, q, the new entry, o, the absorbed query and
latent output). Unabsorbed, a step would up-project all n latents, ``2·b·n·d_c·h·(d_n + d_v)``
FLOPs. Without the cache MLA runs its training form on the prefix: FLOPs ``2·b·n·W +
2·b·n²·h·(d_n + d_r + d_v)``, elements ``W + b·n·(2·d + d_cq + h·(d_n + d_r) + (d_c + d_r) +
h·d_n + 2·h·d_v)``.

Left out: softmax, RoPE, norms (elementwise), and the MLP and head (the same for every kind).

A ``ModelConfig`` with ``attention = "mla"`` is costed with its own MLA widths (its
``kv_bytes_per_token`` is what :class:`~lmforge.model.mla.cache.LatentKVCache` allocates, tested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from lmforge.accounting.units import format_bytes, format_flops
from lmforge.model.config import ModelConfig

__all__ = [
    "ATTENTION_KINDS",
    "AttentionCost",
    "AttentionShape",
    "MLAShape",
    "attention_cost",
    "attention_cost_table",
    "default_mla_shape",
]

#: The attention variants :func:`attention_cost` counts.
ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")

_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def _check_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class AttentionShape:
    """The attention dimensions of a model, for costing shapes without a full ``ModelConfig``.

    Attributes:
        d_model: residual stream width.
        n_heads: query heads.
        n_kv_heads: key/value heads; ``None`` means ``n_heads``.
        n_layers: attention layers (default 1: per-layer costs).
        head_dim: width of a head; ``None`` means ``d_model // n_heads``.

    Raises:
        ValueError: a size is not a positive integer, or the heads do not divide.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    n_layers: int = 1
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_layers"):
            _check_int(name, getattr(self, name))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        _check_int("n_kv_heads", self.n_kv_heads)
        assert self.n_kv_heads is not None
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), "
                    "or pass head_dim"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        _check_int("head_dim", self.head_dim)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> AttentionShape:
        """The attention dimensions of ``cfg``."""
        return cls(
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            n_layers=cfg.n_layers,
            head_dim=cfg.head_dim,
        )


@dataclass(frozen=True, kw_only=True)
class MLAShape:
    """Multi-head latent attention's dimensions (DeepSeek-V2 §2.1; the names of its config).

    Attributes:
        kv_lora_rank: d_c, the cached latent c_KV per token.
        q_lora_rank: d_cq, the query's latent; 0 projects queries directly from ``d_model``.
        qk_nope_head_dim: d_n, a head's query/key width without RoPE.
        qk_rope_head_dim: d_r, the decoupled RoPE query/key width (the key shared by heads).
        v_head_dim: d_v, a head's value width.

    Raises:
        ValueError: a width below 1 (below 0 for ``q_lora_rank``, ``qk_rope_head_dim``).
    """

    kv_lora_rank: int
    q_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            _check_int(name, getattr(self, name))
        for name in ("q_lora_rank", "qk_rope_head_dim"):
            _check_int(name, getattr(self, name), minimum=0)

    @property
    def cache_width(self) -> int:
        """Elements cached per token per layer: ``kv_lora_rank + qk_rope_head_dim``."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def default_mla_shape(cfg: ModelConfig | AttentionShape) -> MLAShape:
    """An MLA shape scaled to ``cfg`` with DeepSeek-V2's ratios (§2.1.4, §3.1.2).

    With k = ``head_dim``: ``kv_lora_rank = 4·k`` (d_c = 4·d_h), ``qk_rope_head_dim = k/2``
    (d_h^R = d_h/2), ``qk_nope_head_dim = v_head_dim = k``, ``q_lora_rank = 3·d_model/10``
    (1536 of 5120), rounded down. Its cache is ``4.5·k`` per token per layer, that of GQA with
    2.25 KV heads (DeepSeek-V2, Table 1).

    Args:
        cfg: the model (or attention) shape.

    Returns:
        The :class:`MLAShape`.
    """
    a = _shape(cfg)
    assert a.head_dim is not None
    k = a.head_dim
    return MLAShape(
        kv_lora_rank=4 * k,
        q_lora_rank=3 * a.d_model // 10,
        qk_nope_head_dim=k,
        qk_rope_head_dim=max(1, k // 2),
        v_head_dim=k,
    )


@dataclass(frozen=True)
class AttentionCost:
    """KV-cache size and one decoding step's cost, all layers, attention only.

    Attributes:
        kind: ``"mha"``, ``"gqa"``, ``"mqa"`` or ``"mla"``.
        n_kv_heads: the KV heads counted (``None`` for MLA).
        batch, seq, dtype: the arguments (seq = positions the new token attends to).
        kv_bytes_per_token: cache bytes per token, all layers; ``kv_bytes_total`` times
            ``batch · seq``, also what one step reads of the cache.
        weight_bytes: attention weights, all layers (read once per step).
        decode_flops, decode_bytes: one step with the cache (absorbed form for MLA).
        decode_flops_no_cache, decode_bytes_no_cache: one step recomputing the whole prefix.
    """

    kind: str
    n_kv_heads: int | None
    batch: int
    seq: int
    dtype: str
    kv_bytes_per_token: int
    kv_bytes_total: int
    weight_bytes: int
    decode_flops: int
    decode_bytes: int
    decode_flops_no_cache: int
    decode_bytes_no_cache: int

    @property
    def intensity_with_cache(self) -> float:
        """FLOPs per byte of a step with the cache."""
        return self.decode_flops / self.decode_bytes

    @property
    def intensity_no_cache(self) -> float:
        """FLOPs per byte of a step without the cache."""
        return self.decode_flops_no_cache / self.decode_bytes_no_cache


class _LayerCounts(NamedTuple):
    """One layer, one step, in elements (bytes = elements · s)."""

    cache_width: int
    weights: int
    flops: int
    elems: int
    flops_no_cache: int
    elems_no_cache: int


def _kv_layer(a: AttentionShape, g: int, b: int, n: int) -> _LayerCounts:
    """MHA, GQA and MQA (g KV heads): the counts of the module docstring."""
    assert a.head_dim is not None
    d, hk, d_kv = a.d_model, a.n_heads * a.head_dim, g * a.head_dim
    weights = 2 * d * hk + 2 * d * d_kv  # wq, wo; wk, wv
    acts = 2 * d + 2 * hk + 2 * d_kv  # x, y; q, o; the new k, v
    return _LayerCounts(
        cache_width=2 * d_kv,
        weights=weights,
        flops=2 * b * weights + 4 * b * n * hk,
        elems=weights + 2 * b * n * d_kv + b * acts,
        flops_no_cache=2 * b * n * weights + 4 * b * n * n * hk,
        elems_no_cache=weights + b * n * acts,
    )


def _mla_layer(a: AttentionShape, m: MLAShape, b: int, n: int) -> _LayerCounts:
    """MLA, absorbed with the cache and in its training form without (module docstring)."""
    d, h, d_c, c = a.d_model, a.n_heads, m.kv_lora_rank, m.cache_width
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    w_q = m.q_lora_rank * (d + h * qk) if m.q_lora_rank else d * h * qk
    weights = w_q + d * c + d_c * h * (m.qk_nope_head_dim + m.v_head_dim) + h * m.v_head_dim * d
    acts = 2 * d + m.q_lora_rank + h * qk + c + h * m.v_head_dim  # x, y, c_Q, q, c_KV+k_R, o
    absorbed = 2 * h * d_c  # the query moved into the latent, the latent output
    expanded = h * (m.qk_nope_head_dim + m.v_head_dim)  # k_nope and v of every head
    return _LayerCounts(
        cache_width=c,
        weights=weights,
        flops=2 * b * weights + 2 * b * n * h * (c + d_c),
        elems=weights + b * n * c + b * (acts + absorbed),
        flops_no_cache=2 * b * n * weights + 2 * b * n * n * h * (qk + m.v_head_dim),
        elems_no_cache=weights + b * n * (acts + expanded),
    )


def _config_mla(cfg: ModelConfig | AttentionShape) -> MLAShape | None:
    """The MLA widths of an MLA ``ModelConfig``; ``None`` otherwise."""
    m = cfg.mla if isinstance(cfg, ModelConfig) else None
    if m is None:
        return None
    return MLAShape(
        kv_lora_rank=m.kv_lora_rank,
        q_lora_rank=m.q_lora_rank,
        qk_nope_head_dim=m.qk_nope_head_dim,
        qk_rope_head_dim=m.qk_rope_head_dim,
        v_head_dim=m.v_head_dim,
    )


def _shape(cfg: ModelConfig | AttentionShape) -> AttentionShape:
    if isinstance(cfg, ModelConfig):
        return AttentionShape.from_config(cfg)
    if isinstance(cfg, AttentionShape):
        return cfg
    raise ValueError(f"cfg must be a ModelConfig or an AttentionShape, got {type(cfg).__name__}")


def _resolve_kind(a: AttentionShape, kind: str | None, mla: MLAShape | None) -> str:
    if kind is None:
        if mla is not None:
            return "mla"
        return {a.n_heads: "mha", 1: "mqa"}.get(a.n_kv_heads or 0, "gqa")
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS} or None, got {kind!r}")
    if mla is not None and kind != "mla":
        raise ValueError(f"an MLAShape was given with kind={kind!r}; use kind='mla' (or None)")
    return kind


def attention_cost(
    cfg: ModelConfig | AttentionShape,
    *,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    kind: str | None = None,
    mla: MLAShape | None = None,
) -> AttentionCost:
    """KV-cache bytes and one decoding step's FLOPs, bytes and intensity, all layers.

    Args:
        cfg: the model's shape (``n_layers``, ``d_model``, heads).
        batch: sequences decoded together (b).
        seq: positions the new token attends to (n), the cache's length; may exceed
            ``context_length`` for what-if questions.
        dtype: of weights, cache and activations: ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"fp8"``.
        kind: ``"mha"`` (n_kv = n_heads), ``"gqa"`` (the config's ``n_kv_heads``), ``"mqa"``
            (n_kv = 1), ``"mla"``; ``None`` infers it from ``mla``, an MLA config and
            ``n_kv_heads``.
        mla: MLA's dimensions; ``None`` with ``kind="mla"`` (or ``None``) means those of an
            MLA config, else :func:`default_mla_shape`.

    Returns:
        The :class:`AttentionCost`.

    Raises:
        ValueError: a non-positive ``batch`` or ``seq``, an unknown ``dtype`` or ``kind``, or
            ``mla`` given with another kind.
    """
    a = _shape(cfg)
    if mla is None and kind in (None, "mla"):
        mla = _config_mla(cfg)
    _check_int("batch", batch)
    _check_int("seq", seq)
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_BYTES)}, got {dtype!r}")
    k = _resolve_kind(a, kind, mla)
    n_kv = {"mha": a.n_heads, "mqa": 1, "gqa": a.n_kv_heads, "mla": None}[k]
    if n_kv is None:
        layer = _mla_layer(a, mla or default_mla_shape(a), batch, seq)
    else:
        layer = _kv_layer(a, n_kv, batch, seq)
    scale = a.n_layers * _DTYPE_BYTES[dtype]  # elements of one layer -> bytes of all
    return AttentionCost(
        kind=k,
        n_kv_heads=n_kv,
        batch=batch,
        seq=seq,
        dtype=dtype,
        kv_bytes_per_token=layer.cache_width * scale,
        kv_bytes_total=layer.cache_width * scale * batch * seq,
        weight_bytes=layer.weights * scale,
        decode_flops=layer.flops * a.n_layers,
        decode_bytes=layer.elems * scale,
        decode_flops_no_cache=layer.flops_no_cache * a.n_layers,
        decode_bytes_no_cache=layer.elems_no_cache * scale,
    )


def _gqa_heads(n_heads: int, n_kv_heads: int) -> list[int]:
    # The config's GQA head count, or n_heads/2, /4, /8 where they divide it.
    if 1 < n_kv_heads < n_heads:
        return [n_kv_heads]
    return [n_heads // r for r in (2, 4, 8) if n_heads % r == 0 and 1 < n_heads // r]


def attention_cost_table(
    cfg: ModelConfig | AttentionShape,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    *,
    mla: MLAShape | None = None,
) -> str:
    """MHA, GQA, MQA and MLA side by side for one shape, batch and length.

    GQA rows use the config's ``n_kv_heads`` when it is strictly between 1 and ``n_heads``,
    else ``n_heads/2``, ``/4`` and ``/8`` where they divide ``n_heads``. The MLA row uses
    ``mla``, else an MLA config's own widths, else :func:`default_mla_shape`.

    Args:
        cfg: the model's shape.
        batch: sequences decoded together.
        seq: positions attended (cache length).
        dtype: weights, cache and activations (see :func:`attention_cost`).
        mla: MLA's dimensions for its row.

    Returns:
        A header line and one row per variant, joined by ``"\\n"``.

    Raises:
        ValueError: as :func:`attention_cost`.
    """
    a = _shape(cfg)
    assert a.n_kv_heads is not None
    m = mla or _config_mla(cfg) or default_mla_shape(a)
    costs = [attention_cost(a, batch=batch, seq=seq, dtype=dtype, kind="mha")]
    for g in _gqa_heads(a.n_heads, a.n_kv_heads):
        gqa = dataclasses.replace(a, n_kv_heads=g)
        costs.append(attention_cost(gqa, batch=batch, seq=seq, dtype=dtype, kind="gqa"))
    costs.append(attention_cost(a, batch=batch, seq=seq, dtype=dtype, kind="mqa"))
    costs.append(attention_cost(a, batch=batch, seq=seq, dtype=dtype, mla=m))
    lines = [
        f"attention, one decoding step (MLP and head not counted): batch {batch}, seq {seq}, "
        f"{dtype}, {a.n_layers} layers",
        f"{'kind':<4} {'kv heads':>13} {'KV/token':>11} {'KV total':>11} {'step FLOPs':>11} "
        f"{'step bytes':>11} {'FLOP/B':>7} {'FLOP/B no cache':>15}",
    ]
    for c in costs:
        heads = f"latent {m.cache_width}" if c.kind == "mla" else str(c.n_kv_heads)
        lines.append(
            f"{c.kind.upper():<4} {heads:>13} {format_bytes(c.kv_bytes_per_token):>11} "
            f"{format_bytes(c.kv_bytes_total):>11} {format_flops(c.decode_flops):>11} "
            f"{format_bytes(c.decode_bytes):>11} {c.intensity_with_cache:>7.1f} "
            f"{c.intensity_no_cache:>15.1f}"
        )
    return "\n".join(lines)
