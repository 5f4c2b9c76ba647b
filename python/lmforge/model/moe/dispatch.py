"""Dispatch: run each token through its experts and combine, without a Python loop over experts.

Token-choice (``k`` experts per token, ``A = N·k`` assignments):

1. **Sort** the assignments by expert (a stable sort, so within an expert they keep the router's
   priority order: all first choices, then all second choices — GShard's rule for who is dropped
   when an expert is full) and gather the tokens into that order. On CUDA the sort is a
   counting sort (:func:`lmforge.kernels.moe_counts.route_sort`), elsewhere ``argsort``.
2. **Grouped GEMM**: the experts' SwiGLUs on contiguous row groups. On CUDA with bf16 on
   Hopper or newer this is ``torch._grouped_mm`` (one CUTLASS kernel per matrix for all experts,
   group offsets read on the device: no host sync, one compiled graph; MegaBlocks, Gale et al.
   2023, and torchtitan take the same route). Elsewhere (CPU, float32/64, older GPUs or PyTorch)
   a **padded batched matmul**: each group is scattered into an ``(E, M, d)`` buffer padded to
   the largest group ``M`` (one host read of the counts; under ``torch.compile`` ``M`` is the
   static bound ``A`` instead, trading memory for a graph without a sync), three ``bmm``, and a
   gather back. Padding rows are zero and produce zero.
3. **Un-permute and combine** in one gather-and-sum per token (:mod:`.permute`):
   ``y_t = Σ_j g_{t,j} · expert_{e_{t,j}}(x_t)`` accumulated in float32, returned in the matmul
   dtype — bf16 under autocast, as a dense MLP's output is. Compiled, this is one kernel that
   never stores the ``(N, k, d)`` gathered rows; the gradients of the gather in step 1 and of
   this step are gathers too, never scatter-adds (for fine-grained experts this glue moves as
   many bytes as the GEMMs do FLOPs).

With a **capacity** ``C`` the padded layout has exactly ``C`` rows per expert (static shapes, no
sync): assignments ranked ``>= C`` within their expert go to a dummy row and contribute zero,
so a token whose experts are all full passes through the block's residual unchanged.

Expert-choice routing already has the ``(E, C)`` layout: gather, ``bmm``, scatter-add.

:func:`reference_moe` is the plain loop over experts the tests hold all of this to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.kernels import moe_counts, use_triton
from lmforge.kernels.swiglu import swiglu
from lmforge.model.moe.balance import expert_counts
from lmforge.model.moe.permute import combine_rows, gather_rows, sort_maps, sum_dtype
from lmforge.model.moe.routers import ExpertRouting, TokenRouting

__all__ = [
    "IMPLS",
    "compute_dtype",
    "device_has_grouped_mm",
    "dispatch_expert_choice",
    "dispatch_token_choice",
    "expert_swiglu",
    "grouped_mm_supported",
    "reference_moe",
]

IMPLS = ("auto", "grouped_mm", "padded")
"""Grouped-GEMM implementations: ``auto`` picks ``grouped_mm`` where supported."""

_SM90: dict[int, bool] = {}


def compute_dtype(x: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for ``x``'s device, else ``x``'s own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def device_has_grouped_mm(device: torch.device) -> bool:
    """Whether ``torch._grouped_mm`` has its fast (CUTLASS) kernel on ``device``: a CUDA GPU of
    compute capability >= 9.0 (Hopper or newer) and a PyTorch that has the op. Elsewhere it is
    missing or falls back to a loop that reads the group offsets on the host."""
    if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM90:
        _SM90[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return _SM90[index]


def grouped_mm_supported(x: Tensor, w: Tensor, device_ok: bool | None = None) -> bool:
    """Whether ``torch._grouped_mm`` runs its fast kernel on ``x @ w[e]ᵀ``: a capable device
    (:func:`device_has_grouped_mm`, or ``device_ok`` when the caller knows it), bf16, and every
    stride a multiple of 16 bytes (widths multiples of 8)."""
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16:
        return False
    if x.shape[-1] % 8 or w.shape[-2] % 8:
        return False
    return device_has_grouped_mm(x.device) if device_ok is None else device_ok


def _group_positions(counts: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """For rows sorted by expert: each row's expert and its rank within the expert's group."""
    experts = torch.arange(counts.numel(), device=counts.device)
    expert_of_row = torch.repeat_interleave(experts, counts, output_size=n_rows)
    starts = counts.cumsum(0) - counts
    pos = torch.arange(n_rows, device=counts.device) - starts[expert_of_row]
    return expert_of_row, pos


def _swiglu(h13: Tensor) -> Tensor:
    """``silu(gate) * up`` of ``[gate | up]`` rows (the output of the ``w13`` GEMM).

    On CUDA one Triton pass each way (:mod:`lmforge.kernels.swiglu`): Inductor's backward for
    this layout ran at half the memory bandwidth."""
    if h13.dtype != torch.float64 and use_triton(h13):
        return swiglu(h13)
    gate, up = h13.chunk(2, dim=-1)
    return F.silu(gate) * up


def _padded_swiglu(
    xs: Tensor, expert_of_row: Tensor, pos: Tensor, w13: Tensor, w2: Tensor, rows: int
) -> Tensor:
    """SwiGLU experts on an ``(E, rows, d)`` padded layout; rows ranked ``>= rows`` give 0."""
    n_experts, d = w13.shape[0], xs.shape[-1]
    slot = torch.where(pos < rows, expert_of_row * rows + pos, n_experts * rows)
    buf = xs.new_zeros(n_experts * rows + 1, d).index_add(0, slot, xs)  # the last row: dropped
    grouped = buf[:-1].view(n_experts, rows, d)
    h = _swiglu(torch.bmm(grouped, w13.mT))
    out = torch.bmm(h, w2.mT).reshape(n_experts * rows, -1)
    return torch.cat([out, out.new_zeros(1, out.shape[-1])])[slot]


def expert_swiglu(
    xs: Tensor, counts: Tensor, w13: Tensor, w2: Tensor, impl: str = "auto"
) -> Tensor:
    """Each expert's SwiGLU ``w2[e](silu(w1[e] x) * w3[e] x)`` on its contiguous rows.

    Args:
        xs: ``(A, d_model)`` rows sorted by expert.
        counts: int64 ``(E,)`` rows per expert (summing to ``A``).
        w13: ``(E, 2·d_ff, d_model)``: each expert's gate weights ``w1`` stacked on its up
            weights ``w3`` (one GEMM gives both halves of the SwiGLU's input, and the input's
            gradient is one GEMM over ``2·d_ff``).
        w2: ``(E, d_model, d_ff)`` down weights.
        impl: one of :data:`IMPLS`.

    Returns:
        ``(A, d_model)`` in ``xs``' dtype.

    Raises:
        ValueError: an unknown ``impl``, or ``grouped_mm`` where it is not supported.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    use_grouped = impl == "grouped_mm" or (impl == "auto" and grouped_mm_supported(xs, w13))
    if use_grouped:
        if not hasattr(torch, "_grouped_mm"):
            raise ValueError("impl='grouped_mm' needs a PyTorch with torch._grouped_mm (>= 2.8)")
        offs = counts.cumsum(0).to(torch.int32)
        h = _swiglu(torch._grouped_mm(xs, w13.mT, offs=offs))
        return torch._grouped_mm(h, w2.mT, offs=offs)
    n_rows = xs.shape[0]
    expert_of_row, pos = _group_positions(counts, n_rows)
    if torch.compiler.is_compiling():
        rows = n_rows  # a static bound: no host sync inside a compiled graph
    else:
        rows = max(int(counts.max()), 1)
    return _padded_swiglu(xs, expert_of_row, pos, w13, w2, rows)


def dispatch_token_choice(
    x: Tensor,
    routing: TokenRouting,
    w13: Tensor,
    w2: Tensor,
    capacity: int | None = None,
    impl: str = "auto",
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The routed experts' combined output for token-choice routing.

    Args:
        x: ``(N, d_model)`` tokens, already in the matmul dtype.
        routing: each token's experts and gates.
        w13: ``(E, 2·d_ff, d_model)``, gate and up weights (see :func:`expert_swiglu`).
        w2: ``(E, d_model, d_ff)``.
        capacity: assignments per expert (``None``: dropless).
        impl: the dropless grouped GEMM (:data:`IMPLS`).
        counts: int64 ``(E,)`` assignments per expert, when the caller has them already.

    Returns:
        ``(y, dropped)``: ``y`` is ``(N, d_model)`` in ``x``'s dtype; ``dropped`` the fraction
        of assignments over capacity (a 0-d tensor, 0 when dropless).
    """
    n, k = routing.experts.shape
    n_experts = w13.shape[0]
    experts = routing.experts.t().reshape(-1)  # choice-major: all first choices, then second
    if n_experts <= moe_counts.SORT_MAX_EXPERTS and use_triton(experts):  # a counting sort
        token_of_row, rows, sorted_counts = moe_counts.route_sort(experts, n_experts, n)
        rows_of_token = rows.view(k, n).t().contiguous()
        counts = sorted_counts if counts is None else counts
    else:
        order = torch.argsort(experts, stable=True)
        if counts is None:
            counts = expert_counts(experts, n_experts)
        token_of_row, rows_of_token = sort_maps(order, n, k)
    xs = gather_rows(x, token_of_row, rows_of_token)
    if capacity is None:
        hs = expert_swiglu(xs, counts, w13, w2, impl)
        dropped = torch.zeros((), device=x.device)
    else:
        expert_of_row, pos = _group_positions(counts, xs.shape[0])
        hs = _padded_swiglu(xs, expert_of_row, pos, w13, w2, capacity)
        dropped = (pos >= capacity).float().mean()
    y = combine_rows(hs, routing.gates, token_of_row, rows_of_token)  # Σ_j g_tj · h_tj
    return y, dropped


def dispatch_expert_choice(
    x: Tensor, routing: ExpertRouting, w13: Tensor, w2: Tensor
) -> tuple[Tensor, Tensor]:
    """The routed experts' combined output for expert-choice routing.

    Args:
        x: ``(N, d_model)`` tokens, already in the matmul dtype.
        routing: each expert's tokens and gates, ``(E, C)``.
        w13: ``(E, 2·d_ff, d_model)``, gate and up weights (see :func:`expert_swiglu`).
        w2: ``(E, d_model, d_ff)``.

    Returns:
        ``(y, dropped)``: ``y`` is ``(N, d_model)`` in float32 (or wider); ``dropped`` the
        fraction of tokens no expert took.
    """
    n_experts, capacity = routing.tokens.shape
    flat = routing.tokens.reshape(-1)
    grouped = x[flat].view(n_experts, capacity, -1)
    h = _swiglu(torch.bmm(grouped, w13.mT))
    out = torch.bmm(h, w2.mT)
    out_dtype = sum_dtype(out.dtype, routing.gates.dtype)
    weighted = out.to(out_dtype) * routing.gates.to(out_dtype).unsqueeze(-1)
    y = weighted.new_zeros(x.shape[0], out.shape[-1])
    y = y.index_add(0, flat, weighted.reshape(-1, out.shape[-1]))
    dropped = (expert_counts(flat, x.shape[0]) == 0).float().mean()
    return y, dropped


def reference_moe(
    x: Tensor,
    tokens: Tensor,
    experts: Tensor,
    gates: Tensor,
    w1: Tensor,
    w3: Tensor,
    w2: Tensor,
    capacity: int | None = None,
) -> Tensor:
    """The plain loop over experts: the reference for the tests.

    Args:
        x: ``(N, d_model)``.
        tokens: int64 ``(A,)`` each assignment's token, in priority order.
        experts: int64 ``(A,)`` each assignment's expert.
        gates: ``(A,)`` each assignment's gate.
        w1: ``(E, d_ff, d_model)``.
        w3: ``(E, d_ff, d_model)``.
        w2: ``(E, d_model, d_ff)``.
        capacity: keep only each expert's first ``capacity`` assignments.

    Returns:
        ``(N, d_model)``, ``Σ gate · expert(x)`` per token, in ``x``'s dtype.
    """
    y = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        idx = (experts == e).nonzero().squeeze(1)
        if capacity is not None:
            idx = idx[:capacity]
        t = tokens[idx]
        h = F.silu(x[t] @ w1[e].T) * (x[t] @ w3[e].T)
        y = y.index_add(0, t, (h @ w2[e].T) * gates[idx].unsqueeze(-1).to(x.dtype))
    return y
