"""The tensors a training step of ``lmforge.model.Transformer`` holds, listed one by one.

The memory model (:mod:`lmforge.accounting.memory`) predicts peak memory by *counting tensors*,
not by fitting constants: this module lists every tensor that autograd saves for the backward
pass, and the large transients, as :class:`TensorGroup` rows (name, element count, dtype), so a
reader can check each row against the model's code. ``N = batch · seq`` tokens; ``d, f, h,
h_kv, hd, V`` are ``d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab_size``. Under bf16
autocast with fp32 parameters (the trainer's setting) one block of the eager model saves:

| tensor                                   | elements   | dtype | saved by                 |
|------------------------------------------|------------|-------|--------------------------|
| block input (the residual stream)        | N·d        | fp32  | attention norm (note 3)  |
| its inverse RMS                          | N          | fp32  | attention norm           |
| normed input, cast for wq / wk / wv      | 3 · N·d    | bf16  | each matmul (see note 1) |
| q, k after RoPE                          | 2 · N·d    | bf16  | attention (note 2)       |
| v                                        | N·d        | bf16  | attention (note 2)       |
| attention output                         | N·d        | bf16  | attention                |
| the same, token-major (a copy; note 2)   | N·d        | bf16  | wo                       |
| attention logsumexp                      | N·h        | fp32  | attention (note 2)       |
| residual after attention                 | N·d        | fp32  | MLP norm                 |
| its inverse RMS                          | N          | fp32  | MLP norm                 |
| normed input, cast for w1 / w3           | 2 · N·d    | bf16  | each matmul (note 1)     |
| w1 x (gate), w3 x (up)                   | 2 · N·f    | bf16  | silu, the product        |
| silu(w1 x)                               | N·f        | bf16  | the product              |
| silu(w1 x) · w3 x                        | N·f        | bf16  | w2                       |
| qk_norm only: q, k in fp32               | N·(d + h_kv·hd) | fp32 | q_norm, k_norm      |
| qk_norm only: their inverse RMS          | N·(h + h_kv)    | fp32 | q_norm, k_norm      |
| bf16 copy of every block weight          | (note 4)        | bf16 | each matmul         |

Notes, each a property of PyTorch the count relies on:

1. Autocast casts a matmul's fp32 input afresh at every call (it caches casts of leaf
   parameters only), and RMSNorm returns fp32 here (it normalises in fp32 and casts back to the
   fp32 residual's dtype). So the normed input is cast once per projection: three bf16 copies
   for ``wq, wk, wv`` and two for ``w1, w3`` (one shared copy in a parallel block feeds five).
2. Fused attention (cuDNN, PyTorch's choice on Hopper, or FlashAttention) saves q, k, v, the
   output and the logsumexp — never the T×T score matrix (Dao 2022). For GQA on CUDA the model
   expands k and v to ``n_heads`` before the call, so the expanded ``N·d`` copies are saved.
   cuDNN lays its output out like q, which RoPE leaves head-major (``(batch, heads, seq,
   head_dim)`` in memory), so the ``transpose(1, 2).reshape`` that feeds ``wo`` copies it and
   ``wo`` saves a second ``N·d``. (With a token-major q — FlashAttention, or some Inductor
   layouts — the reshape is a view and this row is an overcount.)
3. RMSNorm saves its input and the inverse RMS (``F.rms_norm``'s fused CUDA kernel); RoPE
   saves only its cos/sin tables (buffers, no new memory); the residual additions save nothing.
4. Autocast caches one bf16 copy of each fp32 weight per forward (``2·d² + 2·d·h_kv·hd +
   3·d·f`` elements a block); the matmul saves it, so it lives until that matmul's backward
   (Micikevicius et al. 2018 count the same fp16 copy).

``torch.compile`` (``compiled=True``) partitions forward and backward with a min-cut
(Inductor's ``min_cut_rematerialization_partition``) that recomputes cheap pointwise work
unless its result is a matmul's input in the backward anyway. Against the eager table: the
duplicate casts collapse into one (common-subexpression elimination: one ``N·d`` copy for the
attention input, one for the MLP's); ``silu(gate)`` is recomputed but ``silu(gate)·up`` (w2's
input) stays; with qk_norm, q and k are saved as the bf16 projections (recomputing the float32
copies). The bf16 weight copies, the attention tensors, the residual stream and the inverse RMS
are saved as in eager mode.

These rows were checked on an H200 with PyTorch 2.11 (cuDNN attention), eager and compiled,
against autograd's saved-tensor hooks and the compiled forward graph's saved outputs
(``tests/accounting/memory_probe.py``).

A block whose MLP is a Mixture of Experts replaces the MLP rows (the ``w1/w3`` casts and the
four hiddens) by those of :mod:`lmforge.accounting.moe_activations`.

With activation checkpointing each block saves only its input (the non-reentrant
``torch.utils.checkpoint`` keeps inputs and recomputes the rest); one block's full set is
rebuilt at a time in the backward pass (Chen et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.model.config import ModelConfig

__all__ = ["DTYPE_BYTES", "TensorGroup", "block_saved", "block_weight_copies", "total_bytes"]

#: Bytes per element of the dtypes the memory model uses.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int64": 8, "int32": 4, "uint8": 1}


@dataclass(frozen=True)
class TensorGroup:
    """One row of the count: ``numel`` elements of ``dtype``, for a reason named by ``name``.

    Attributes:
        name: what the tensor is (e.g. ``"attention output"``).
        numel: number of elements (all copies together).
        dtype: a key of :data:`DTYPE_BYTES`.
    """

    name: str
    numel: int
    dtype: str

    @property
    def bytes(self) -> int:
        """``numel`` times the dtype's size."""
        return self.numel * DTYPE_BYTES[self.dtype]

    def times(self, k: int) -> TensorGroup:
        """The same row ``k`` times over (e.g. for ``n_layers`` blocks)."""
        return TensorGroup(self.name, self.numel * k, self.dtype)


def total_bytes(rows: list[TensorGroup]) -> int:
    """Sum of the rows' bytes."""
    return sum(r.bytes for r in rows)


def _qk_norm_rows(cfg: ModelConfig, n: int, dtype: str) -> list[TensorGroup]:
    """q_norm/k_norm's inputs (float32 copies in eager mode, bf16 projections compiled)."""
    assert cfg.n_kv_heads is not None
    if not cfg.qk_norm:
        return []
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    return [
        TensorGroup("q, k before their norms", n * (cfg.d_model + kv_dim), dtype),
        TensorGroup("q, k inverse RMS", n * (cfg.n_heads + cfg.n_kv_heads), "fp32"),
    ]


def block_saved(
    cfg: ModelConfig, n: int, *, residual: str, compute: str, compiled: bool, mlp: bool = True
) -> list[TensorGroup]:
    """What one block saves for backward on ``n`` tokens (the table of the module docstring).

    Args:
        cfg: the model's shape (``parallel_block`` and ``qk_norm`` change the rows).
        n: tokens in the micro-batch, ``batch · seq``.
        residual: dtype of the residual stream (the parameters' dtype).
        compute: dtype of the matmuls (the autocast dtype, or ``residual`` without autocast).
        compiled: ``torch.compile``'s partition instead of eager autograd.
        mlp: include the dense SwiGLU's rows (its input casts and hiddens); ``False`` for a
            block whose MLP is an MoE, whose rows :func:`~.moe_activations.moe_saved` lists.

    Returns:
        The rows for ONE block, weight copies excluded (:func:`block_weight_copies`).
    """
    assert cfg.d_ff is not None
    d, f = cfg.d_model, cfg.d_ff
    # Eager casts the fp32 normed input once per projection; compile shares one cast.
    shared = cfg.parallel_block and mlp  # a parallel block's MLP casts the attention's input
    attn_casts = 1 if compiled or compute == residual else (5 if shared else 3)
    mlp_casts = 1 if compiled or compute == residual else 2
    rows = [
        TensorGroup("block input (residual stream)", n * d, residual),
        TensorGroup("attention-norm inverse RMS", n, "fp32"),
        TensorGroup("normed input for wq/wk/wv", attn_casts * n * d, compute),
        *_qk_norm_rows(cfg, n, compute if compiled else "fp32"),
        TensorGroup("q, k after RoPE; v (kv heads expanded)", 3 * n * d, compute),
        TensorGroup("attention output", n * d, compute),
        TensorGroup("attention output laid out for wo", n * d, compute),
        TensorGroup("attention logsumexp", n * cfg.n_heads, "fp32"),
    ]
    if not cfg.parallel_block:
        rows += [
            TensorGroup("residual after attention", n * d, residual),
            TensorGroup("MLP-norm inverse RMS", n, "fp32"),
        ]
        if mlp:
            rows.append(TensorGroup("normed input for w1/w3", mlp_casts * n * d, compute))
    if not mlp:
        return rows
    rows.append(TensorGroup("w1 x (gate), w3 x (up)", 2 * n * f, compute))
    if not compiled:  # compile recomputes silu(gate) from the gate
        rows.append(TensorGroup("silu(gate)", n * f, compute))
    rows.append(TensorGroup("silu(gate)·up (w2 input)", n * f, compute))
    return rows


def block_weight_copies(
    cfg: ModelConfig, *, param: str, compute: str, mlp: bool = True
) -> list[TensorGroup]:
    """The autocast copies of one block's weights in ``compute`` dtype (none without autocast).

    Args:
        cfg: the model's shape.
        param: the parameters' dtype.
        compute: the matmuls' dtype.
        mlp: include the dense SwiGLU's weights (``False`` for an MoE block:
            :func:`~.moe_activations.moe_weight_copies`).

    Returns:
        One row (or none when ``param == compute``).
    """
    assert cfg.n_kv_heads is not None and cfg.d_ff is not None
    if param == compute:
        return []
    d = cfg.d_model
    numel = 2 * d * d + 2 * d * cfg.n_kv_heads * cfg.head_dim + (3 * d * cfg.d_ff if mlp else 0)
    return [TensorGroup("autocast copies of the block's weights", numel, compute)]
