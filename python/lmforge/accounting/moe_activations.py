"""The tensors an MoE MLP (:mod:`lmforge.model.moe`) saves for backward, listed one by one.

The MoE counterpart of the MLP rows of :mod:`lmforge.accounting.activations`: for a block
whose MLP is an :class:`~lmforge.model.moe.layer.MoE`, :func:`moe_saved` replaces the dense
``w1/w3`` casts and SwiGLU hiddens. ``N`` tokens, ``d = d_model``, ``E`` routed experts of width
``f = expert_d_ff``, ``k = top_k``, ``A = N·k`` assignments, ``s = n_shared_experts · f`` the
shared experts' width, ``c`` the compute (autocast) dtype. Token-choice and sigmoid routers
(DeepSeek-V3 gating), eager mode:

| tensor                                        | elements   | dtype | saved by                 |
|-----------------------------------------------|------------|-------|--------------------------|
| router input (the normed input in float32)    | N·d        | fp32  | the router's linear      |
| probabilities (softmax or sigmoid output)     | N·E        | fp32  | softmax / sigmoid        |
| top-k indices                                 | N·k        | int64 | top-k, gather            |
| selected probabilities and their sum (note 6) | N·k + N    | fp32  | gate normalisation       |
| sigmoid only: the scores' sum                 | N          | fp32  | ``s / Σ s`` (balance)    |
| the sort's maps: token of each row, rows of   | A + A      | int64 | gather, combine          |
| each token (:mod:`lmforge.model.moe.permute`) |            |       |                          |
| xs, the gathered rows                         | A·d        | c     | the first GEMMs (note 1) |
| grouped_mm: group offsets                     | E          | int32 | each grouped GEMM        |
| w1 xs, w3 xs; silu(w1 xs); their product      | 4 · A·f    | c     | silu, product, w2 (n. 8) |
| the experts' outputs (sorted)                 | A·d        | c     | the combine              |
| the gates                                     | N·k        | fp32  | the combine              |
| shared experts: input casts                   | 2 · N·d    | c     | their w1, w3 (note 2)    |
| shared experts: gate, up, silu, product       | 4 · N·s    | c     | as a dense SwiGLU        |
| z-loss only: the logits, their logsumexp      | N·E + N    | fp32  | ``logsumexp``, square    |

Notes, each a property of PyTorch the count relies on:

1. ``index_add`` saves its source (measured with saved-tensor hooks; its gradient formula
   reads only its shape), so the padded layout's scatter keeps ``xs``.
2. Autocast casts the float32 normed input once per projection (:mod:`.activations` note 1);
   without autocast the shared experts read the router's float32 input itself (no new row).
3. The **padded** path (``impl="padded"``: CPU, float32, GPUs older than Hopper) scatters the
   sorted rows into an ``(E·M + 1) × d`` buffer (``M`` rows per expert; the last row collects
   dropped assignments), saved by the first ``bmm``, and its hiddens are ``4 · E·M·f``; it also
   saves the ``A`` scatter slots (int64) and has no group offsets. ``M`` is the largest group in
   eager mode (``max_load`` times the balanced ``A/E``), ``A`` under ``torch.compile`` (a static
   bound: the padded path's memory grows with ``E``), and the capacity ``C`` with a
   ``capacity_factor``.
4. Expert-choice (``C`` tokens per expert, ``E·C`` slots) saves the router input, the
   probabilities, the top-``C`` indices and the slots' tokens (int64, ``E·C`` each), the gathered
   rows (``E·C·d``, c), the four hiddens (``4·E·C·f``), the gates (``E·C``, fp32) and, for its
   float32 scatter-add, the experts' outputs in float32 and weighted (``2·E·C·d``, fp32).
5. Hash routing has no router rows (its gates need no gradient, but the combine keeps the same
   tensors).
6. Only with ``normalize_gates`` (the default for ``top_k > 1``); otherwise the gates are the
   selected probabilities times a constant, which saves nothing.
7. The routed experts' weights (``w1`` and ``w3`` stored stacked as one ``(E, 2f, d)``
   parameter) are cast to c in ``GroupedExperts`` at every call (autocast does not cover the
   grouped GEMM), ``3·E·d·f`` per layer, saved by the GEMMs — unless they are stored in c
   (``moe.expert_dtype``), when there is no copy at all; they count with the weight copies
   (:func:`moe_weight_copies`) but, not being autocast's cached casts, die with each block's
   forward under activation checkpointing.
8. With lmforge's Triton SwiGLU (:mod:`lmforge.kernels.swiglu`: CUDA with Triton, or Triton's
   interpreter on the CPU) the routed experts keep ``[w1 xs | w3 xs]`` only and recompute
   ``silu(w1 xs)`` in backward: ``3 · A·f`` (``kernel=True``); the shared experts are a plain
   SwiGLU either way.

Under ``torch.compile`` (Inductor's min-cut partition, as for the dense MLP in
:mod:`.activations`): the float32 router input is recomputed from the residual and the inverse
RMS, and one cast of the normed input (``N·d``, c) is kept for the router's recomputation, the
experts and the shared experts; ``silu(w1 xs)`` and the gate normalisation's sum are
recomputed; the source that ``index_add`` keeps only for its shape is not saved, and the
padded path regathers ``xs`` from the normed cast but keeps its buffer twice (the zeros the
scatter starts from and the filled buffer, both ``(E·M + 1)·d``). Expert-choice
keeps its experts' outputs in c (``E·C·d``) and recomputes the float32 copy and the weighting.

Balance losses keep ``O(E)`` tensors (not counted; a loss of weight 0 keeps nothing). Every
row was checked on the CPU against the storages autograd's saved-tensor hooks see, eager (in
float32 and under bf16 autocast, both grouped-GEMM paths, capacity, expert-choice, hash:
equal to the byte) and compiled (within 0.2%): ``tests/accounting/test_moe_memory_cpu.py``;
``test_moe_memory_gpu.py`` holds two GPT-2-sized MoEs to ``max_memory_allocated``.
"""

from __future__ import annotations

import math

from lmforge.accounting.activations import TensorGroup
from lmforge.model.config import ModelConfig, MoEConfig

__all__ = ["MOE_IMPLS", "moe_backward", "moe_rows_per_expert", "moe_saved", "moe_weight_copies"]

#: The grouped-GEMM implementations the count knows (:data:`lmforge.model.moe.dispatch.IMPLS`).
MOE_IMPLS = ("grouped_mm", "padded")


def moe_rows_per_expert(
    moe: MoEConfig, n: int, *, impl: str, compiled: bool, max_load: float = 1.0
) -> int | None:
    """Rows per expert of the padded ``(E, M, d)`` layout, ``None`` on the grouped_mm path.

    Args:
        moe: the MoE config.
        n: tokens.
        impl: ``"grouped_mm"`` or ``"padded"``.
        compiled: under ``torch.compile`` (``M = A``, a static bound).
        max_load: the busiest expert's assignments over the mean (the ``max_load_ratio``
            metric; 1 is perfect balance), for the eager padded layout.

    Returns:
        ``M``: the capacity, ``A`` compiled, else ``ceil(max_load · A / E)`` (in ``[1, A]``).
    """
    cap = moe.capacity(n)
    if moe.router == "expert_choice":
        return cap
    if cap is not None:
        return cap
    if impl == "grouped_mm":
        return None
    a = n * moe.top_k
    if compiled:
        return a
    return min(a, max(1, math.ceil(max_load * a / moe.n_routed_experts)))


def _router_rows(
    moe: MoEConfig, n: int, d: int, *, compute: str, compiled: bool
) -> list[TensorGroup]:
    """The router's saved tensors, and the normed input (compiled: one copy for everyone)."""
    e, k = moe.n_routed_experts, moe.top_k
    if compiled:  # the float32 router input is recomputed from the residual and inverse RMS
        rows = [TensorGroup("normed input, one cast (router, experts, shared)", n * d, compute)]
    elif moe.router == "hash":
        return []
    else:
        rows = [TensorGroup("router input (normed, float32)", n * d, "fp32")]
    if moe.router == "hash":
        return rows
    rows.append(TensorGroup("router probabilities (softmax/sigmoid output)", n * e, "fp32"))
    if moe.router == "expert_choice":
        return rows
    rows.append(TensorGroup("router top-k indices", n * k, "int64"))
    if moe.normalize_gates:  # compile keeps the selected probabilities, recomputes their sum
        rows.append(TensorGroup("selected probabilities", n * k, "fp32"))
        if not compiled:
            rows.append(TensorGroup("their sum (gate normalisation)", n, "fp32"))
    if moe.router == "sigmoid":
        rows.append(TensorGroup("sigmoid scores' sum (balance probabilities)", n, "fp32"))
    return rows


def _z_loss_rows(moe: MoEConfig, n: int) -> list[TensorGroup]:
    if moe.router == "hash" or moe.z_loss_weight <= 0:
        return []
    return [TensorGroup("router logits and logsumexp (z-loss)", n * moe.n_routed_experts + n,
                        "fp32")]  # fmt: skip


def _shared_rows(
    moe: MoEConfig, n: int, d: int, f: int, *, residual: str, compute: str, compiled: bool
) -> list[TensorGroup]:
    """The shared experts: one SwiGLU of width ``n_shared · f`` on the normed input."""
    if not moe.n_shared_experts:
        return []
    s = moe.n_shared_experts * f
    if compiled:  # they read the normed input's one cast (a router row)
        casts = 0
    elif compute != residual:
        casts = 2
    else:  # no autocast: the normed input itself (float32: the router's saved input)
        casts = 0 if residual == "fp32" and moe.router != "hash" else 1
    rows = [TensorGroup("shared experts: input casts", casts * n * d, compute)] if casts else []
    rows.append(TensorGroup("shared experts: w1 x, w3 x", 2 * n * s, compute))
    if not compiled:
        rows.append(TensorGroup("shared experts: silu(gate)", n * s, compute))
    rows.append(TensorGroup("shared experts: silu(gate)·up", n * s, compute))
    return rows


def _expert_choice_rows(
    moe: MoEConfig, n: int, d: int, f: int, *, compute: str, compiled: bool, kernel: bool = False
) -> list[TensorGroup]:
    c = moe.capacity(n)
    assert c is not None  # expert-choice always has a capacity
    slots = moe.n_routed_experts * c
    rows = [
        TensorGroup("expert-choice top-C indices and slot tokens", 2 * slots, "int64"),
        TensorGroup("expert-choice gates", slots, "fp32"),
        TensorGroup("gathered rows (E·C)", slots * d, compute),
        TensorGroup("w1 x, w3 x (E·C rows)", 2 * slots * f, compute),
    ]
    if not compiled and not kernel:
        rows.append(TensorGroup("silu(w1 x)", slots * f, compute))
    rows.append(TensorGroup("silu(w1 x)·w3 x (w2 input)", slots * f, compute))
    if compiled:  # the float32 copy and the weighting are recomputed from the bf16 output
        rows.append(TensorGroup("expert outputs", slots * d, compute))
    else:
        rows.append(TensorGroup("expert outputs in float32, weighted", 2 * slots * d, "fp32"))
    return rows


def _token_choice_rows(
    moe: MoEConfig,
    n: int,
    d: int,
    f: int,
    *,
    compute: str,
    compiled: bool,
    rows: int | None,
    kernel: bool = False,
) -> list[TensorGroup]:
    e, k = moe.n_routed_experts, moe.top_k
    a = n * k
    # the gather and the combine (lmforge.model.moe.permute) save the two maps of the sort
    out = [
        TensorGroup("token of each sorted row", a, "int64"),
        TensorGroup("sorted row of each token's choices", a, "int64"),
    ]
    if rows is None:  # grouped_mm: contiguous groups of the A sorted rows
        hidden_rows = a
        out += [
            TensorGroup("xs, the gathered rows", a * d, compute),
            TensorGroup("group offsets", e, "int32"),
        ]
    else:  # padded: scattered into an (E·M + 1) × d buffer
        hidden_rows = e * rows
        # compile regathers xs from the normed input's cast, but keeps the buffer twice (the
        # zeros the scatter starts from, and the filled buffer transposed for w1/w3's grads)
        buffers = 2 if compiled else 1
        out.append(TensorGroup("padded buffer (E·M + 1 rows)", buffers * (hidden_rows + 1) * d,
                               compute))  # fmt: skip
        if not compiled:
            out.append(TensorGroup("xs, the gathered rows (scatter source)", a * d, compute))
        out.append(TensorGroup("scatter slots", a, "int64"))
    out.append(TensorGroup("expert w1 x, w3 x", 2 * hidden_rows * f, compute))
    if not compiled and not kernel:  # lmforge::swiglu saves only [gate | up]
        out.append(TensorGroup("expert silu(w1 x)", hidden_rows * f, compute))
    out.append(TensorGroup("expert silu(w1 x)·w3 x (w2 input)", hidden_rows * f, compute))
    out.append(TensorGroup("experts' sorted outputs (combine input)", a * d, compute))
    out.append(TensorGroup("gates (combine)", n * k, "fp32"))
    return out


def moe_saved(
    cfg: ModelConfig,
    n: int,
    *,
    residual: str,
    compute: str,
    compiled: bool,
    impl: str = "grouped_mm",
    max_load: float = 1.0,
    rows: int | None = None,
    kernel: bool = False,
) -> list[TensorGroup]:
    """What one MoE MLP saves for backward on ``n`` tokens (the module docstring's table).

    Args:
        cfg: the model's shape (``cfg.moe`` must be set).
        n: tokens.
        residual: dtype of the residual stream (the parameters' dtype).
        compute: the matmuls' dtype.
        compiled: ``torch.compile``'s partition instead of eager autograd.
        impl: the dropless grouped GEMM, ``"grouped_mm"`` or ``"padded"``.
        max_load: the busiest expert's load over the mean (eager padded layout only).
        rows: override the padded layout's rows per expert (e.g. a run's measured largest
            group); ``None`` computes them (:func:`moe_rows_per_expert`).
        kernel: the routed experts' SwiGLU is lmforge's Triton kernel (module note 8).

    Returns:
        The rows of ONE MoE MLP, weight copies excluded (:func:`moe_weight_copies`).

    Raises:
        ValueError: ``cfg.moe`` is ``None`` or ``impl`` unknown.
    """
    moe = cfg.moe
    if moe is None:
        raise ValueError("moe_saved needs cfg.moe (an MoEConfig)")
    if impl not in MOE_IMPLS:
        raise ValueError(f"moe_impl must be one of {MOE_IMPLS}, got {impl!r}")
    assert cfg.d_ff is not None
    d, f = cfg.d_model, moe.expert_width(cfg.d_ff)
    out = _router_rows(moe, n, d, compute=compute, compiled=compiled) + _z_loss_rows(moe, n)
    if moe.router == "expert_choice":
        out += _expert_choice_rows(moe, n, d, f, compute=compute, compiled=compiled, kernel=kernel)
    else:
        if rows is None:
            rows = moe_rows_per_expert(moe, n, impl=impl, compiled=compiled, max_load=max_load)
        out += _token_choice_rows(
            moe, n, d, f, compute=compute, compiled=compiled, rows=rows, kernel=kernel
        )
    dt = dict(residual=residual, compute=compute, compiled=compiled)
    return out + _shared_rows(moe, n, d, f, **dt)  # type: ignore[arg-type]


def moe_weight_copies(
    cfg: ModelConfig, *, param: str, compute: str, autocast_only: bool = False
) -> list[TensorGroup]:
    """The casts of one MoE MLP's weights that its matmuls save.

    The routed experts' weights in ``compute`` (cast by ``GroupedExperts`` at every call unless
    stored in that dtype, ``moe.expert_dtype``), the
    shared experts' (autocast's cached copies); the router computes in float32, so its weight
    is copied only when the parameters are narrower.

    Args:
        cfg: the model's shape (``cfg.moe`` set).
        param: the parameters' dtype.
        compute: the matmuls' dtype.
        autocast_only: only the copies autocast caches until the forward pass ends (the
            shared experts'), which outlive a checkpointed block's forward.
    """
    moe = cfg.moe
    assert moe is not None and cfg.d_ff is not None
    d, f = cfg.d_model, moe.expert_width(cfg.d_ff)
    rows = []
    if param != compute and moe.n_shared_experts:
        shared = 3 * d * f * moe.n_shared_experts
        rows.append(TensorGroup("autocast copies of the shared experts' weights", shared, compute))
    if autocast_only:
        return rows
    stored = "bf16" if moe.expert_dtype == "bfloat16" else param
    if stored != compute:  # stored in the compute dtype, they are used as they are
        routed = 3 * d * f * moe.n_routed_experts
        rows.append(TensorGroup("casts of the routed experts' weights", routed, compute))
    if param != "fp32" and moe.router != "hash":
        router = moe.n_routed_experts * d
        rows.append(TensorGroup("float32 copy of the router weight", router, "fp32"))
    return rows


def moe_backward(
    cfg: ModelConfig, n: int, *, compute: str, impl: str, compiled: bool, max_load: float = 1.0
) -> list[TensorGroup]:
    """The gradients alive in an MoE MLP's backward, at its experts' SwiGLU.

    The gradient of the combined output and of the experts' sorted outputs (``A·d``), and of
    the experts' three
    hiddens on their ``A`` (or padded ``E·M``) rows; the shared experts' three hiddens.
    """
    moe = cfg.moe
    assert moe is not None and cfg.d_ff is not None
    d, f = cfg.d_model, moe.expert_width(cfg.d_ff)
    if moe.router == "expert_choice":
        c = moe.capacity(n)
        assert c is not None
        slots = moe.n_routed_experts * c
        rows_a, hidden = slots, slots
    else:
        m = moe_rows_per_expert(moe, n, impl=impl, compiled=compiled, max_load=max_load)
        rows_a = n * moe.top_k
        hidden = rows_a if m is None else moe.n_routed_experts * m
    s = moe.n_shared_experts * f
    return [
        TensorGroup("MoE output and un-permuted gradients", n * d + rows_a * d, compute),
        TensorGroup("expert hidden gradients", 3 * hidden * f, compute),
        TensorGroup("shared-expert hidden gradients", 3 * n * s, compute),
    ]
