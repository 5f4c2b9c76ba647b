"""Peak GPU memory of a training step, predicted by counting tensors.

``estimate_training_memory`` adds up the bytes of every tensor alive at each moment of a
training step and reports the largest sum, the number ``torch.cuda.max_memory_allocated``
measures. Nothing is fitted: parameters, gradients and optimizer state are counted from
:func:`~lmforge.accounting.params.count_params`; activations from the saved-tensor tables of
:mod:`lmforge.accounting.activations` and :mod:`lmforge.accounting.loss_memory`. The breakdown
follows ZeRO's (Rajbhandari et al. 2020: 4 bytes of fp32 weights, 4 of gradients, 8 of Adam
moments per parameter; "model states") and Korthikanti et al. 2022's per-layer activation count,
redone for this model's layers and PyTorch's kernels.

Mixture-of-Experts blocks (``cfg.moe``) are counted with their own rows
(:mod:`lmforge.accounting.moe_activations`): router, dispatch, the experts' grouped GEMM
(``moe_impl``: ``grouped_mm`` on Hopper in bf16, ``padded`` elsewhere, whose eager layout grows
with the busiest expert's load, ``moe_max_load``), shared experts, and the casts of every
expert's weights; parameters, gradients and optimizer state count every stored expert.

The step is ``forward → backward → optimizer.step() → zero_grad(set_to_none=True)``, repeated;
at steady state the optimizer state exists and gradients are freed between steps. Four
moments compete for the peak:

- ``forward``: model states + every block's saved tensors + autocast's bf16 weight copies +
  the loss's saved gradients and its largest forward transient (the last logits chunk);
- ``backward_start``: the same with the loss's backward transient instead;
- ``backward_block``: the top block's backward, with the head's gradient now allocated (with
  activation checkpointing, one block's recomputed activations and the gradients so far);
- ``optimizer``: weights + all gradients + state + the optimizer's temporaries (the foreach
  Adam step materialises ``sqrt(v)`` for its largest parameter group).

With ``grad_accum > 1`` the gradients of earlier micro-batches are alive through every forward
and backward. Always alive: the cuBLAS workspaces, which PyTorch allocates through its caching
allocator, one per thread that runs matmuls (the main thread and autograd's backward thread),
32 MiB each on Hopper (``CublasHandlePool.cpp``; about 8 MiB on older GPUs: pass
``workspace_bytes``). Not counted: the CUDA context (outside ``max_memory_allocated``), the
allocator's rounding and fragmentation (up to 1 MiB per large block), kernels' scratch
buffers, and the data batch (``16·N`` bytes).

Measured on one H200 with PyTorch 2.11 (``tests/accounting/memory_probe.py``; steady-state
step, lmforge's AdamW, predicted / ``max_memory_allocated``):

| shape (batch × 1024 tokens, 512 for the last)   | eager          | compiled             |
|-------------------------------------------------|----------------|----------------------|
| GPT-2 small, batch 8                            | 0.998          | 0.995, 1.019 (note)  |
| GPT-2 small, batch 32                           | 1.028          | 1.011                |
| 1B (d 2048, 16 layers), batch 16                | —              | 1.019                |
| GQA 16/4 + QK-norm, tied, batch 8               | 1.000          | 1.002, 1.054 (note)  |
| parallel blocks + checkpointing, batch 8        | 0.999          | 1.001                |
| full logits: GPT-2 small / GQA, batch 4         | 0.991 / 0.998  | — / 1.023            |

Note: Inductor sometimes writes RoPE's output token-major, which makes attention's output
token-major and drops the copy that feeds ``wo`` (see :mod:`.activations`); the model counts
the copy, so compiled runs that drop it come out a few percent high. Eager at batch 32 also
saved one ``N·d`` bf16 tensor per block fewer than counted, unexplained (batch 8 was listed
tensor by tensor and matches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.accounting.activations import (
    DTYPE_BYTES,
    TensorGroup,
    block_saved,
    block_weight_copies,
    total_bytes,
)
from lmforge.accounting.loss_memory import loss_tensors
from lmforge.accounting.moe_activations import (
    MOE_IMPLS,
    moe_backward,
    moe_saved,
    moe_weight_copies,
)
from lmforge.accounting.params import ParamCount, _mlp_counts, count_params
from lmforge.accounting.units import format_bytes
from lmforge.model.config import ModelConfig

__all__ = ["CUBLAS_WORKSPACES", "OPTIMIZER_STATES", "MemoryEstimate", "estimate_training_memory"]

#: Two cuBLAS workspaces of 32 MiB (forward thread, autograd thread): PyTorch's Hopper default.
CUBLAS_WORKSPACES = 2 * 32 * 2**20

#: Optimizer → (states per non-Muon parameter, states per Muon matrix).
OPTIMIZER_STATES = {"adamw": (2, 2), "adam": (2, 2), "adagrad": (1, 1), "sgd": (1, 1),
                    "muon": (2, 1)}  # fmt: skip

_PARAM_DTYPES = ("fp32", "bf16", "fp16")
_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted memory of a training step, by part and by moment.

    Attributes:
        parts: the rows of each part. Always alive: ``parameters``, ``optimizer_state``,
            ``workspace``, ``grad_sums`` (float32 sums of low-precision weights' gradients
            over micro-batches, with ``grad_accum > 1``). Saved for backward at the end of the
            forward pass: ``activations`` (all blocks), ``loss_saved`` (final norm and loss),
            ``weight_copies`` (autocast's bf16 weights). Transients: ``autocast_cache`` (eager
            checkpointing only), ``loss_forward``, ``loss_backward``, ``block_backward``,
            ``optimizer_transient``. And ``gradients``.
        phases: total bytes alive at each moment (``forward``, ``backward_start``,
            ``backward_block``, ``optimizer``).
        peak_phase: the moment of the peak.
        inputs: the arguments the estimate was made for.
    """

    parts: dict[str, list[TensorGroup]]
    phases: dict[str, int]
    peak_phase: str
    inputs: dict[str, object] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The predicted peak in bytes (compare with ``torch.cuda.max_memory_allocated``)."""
        return self.phases[self.peak_phase]

    @property
    def peak(self) -> int:
        """Alias of :attr:`total`."""
        return self.total

    def bytes(self, part: str) -> int:
        """Bytes of one part (a key of :attr:`parts`)."""
        return total_bytes(self.parts[part])

    @property
    def parameters(self) -> int:
        """Bytes of the parameters."""
        return self.bytes("parameters")

    @property
    def gradients(self) -> int:
        """Bytes of all gradients."""
        return self.bytes("gradients")

    @property
    def optimizer_state(self) -> int:
        """Bytes of the optimizer's state."""
        return self.bytes("optimizer_state")

    @property
    def activations(self) -> int:
        """Bytes saved for backward at the end of the forward pass (weight copies included)."""
        return self.bytes("activations") + self.bytes("loss_saved") + self.bytes("weight_copies")

    def by_dtype(self, part: str) -> dict[str, int]:
        """Bytes of one part by dtype, e.g. ``{"fp32": ..., "bf16": ...}``."""
        out: dict[str, int] = {}
        for row in self.parts[part]:
            out[row.dtype] = out.get(row.dtype, 0) + row.bytes
        return out

    def table(self) -> str:
        """A readable breakdown: every part by dtype, then each moment's total."""
        lines = []
        for part in self.parts:
            dtypes = ", ".join(f"{k} {format_bytes(b)}" for k, b in self.by_dtype(part).items())
            lines.append(f"{part:<20} {format_bytes(self.bytes(part)):>11}  ({dtypes or '-'})")
        for phase, b in self.phases.items():
            mark = "  <- peak" if phase == self.peak_phase else ""
            lines.append(f"at {phase:<17} {format_bytes(b):>11}{mark}")
        return "\n".join(lines)


def _model_states(
    pc: ParamCount, optimizer: str, param: str, low: tuple[int, str], moments: str | None = None
) -> dict[str, list[TensorGroup]]:
    """Parameters, gradients, optimizer state and the optimizer step's temporaries.

    ``low``: how many parameters are stored in a low-precision dtype, and which; Adam(W) keeps
    a float32 master weight for each and all its moments in float32
    (:mod:`lmforge.optim._common`; the other optimizers refuse such parameters). ``moments``:
    ``"bf16"`` when Adam(W) stores its moments in bf16.
    """
    per_other, per_muon = OPTIMIZER_STATES[optimizer]
    n_low, low_dtype = low
    masters = n_low  # only Adam(W) gets here with low-precision parameters
    state = "fp32" if masters else param
    # Muon takes the blocks' matrices and experts; MoE routers ("other") stay with AdamW.
    muon = pc.blocks_matmul - pc.router if optimizer == "muon" else 0
    rest = pc.total - muon
    states = [
        TensorGroup(
            f"{optimizer} state ({per_other} per parameter)", per_other * rest, moments or state
        )
    ]
    if muon:
        states.append(TensorGroup("Muon momentum (matrices)", per_muon * muon, param))
    if masters:
        states.append(TensorGroup("float32 master weights", masters, "fp32"))
    # The groups of lmforge.optim.param_groups: decayed (matrices, head) and not (embedding,
    # norms). Adam/AdaGrad's foreach step builds one sqrt buffer per group, SGD a direction;
    # Muon holds the Nesterov updates and their orthogonalisation for all matrices at once.
    decayed = pc.blocks_matmul + pc.head
    largest_group = max(decayed - muon, pc.embedding + pc.norms)
    transient = [TensorGroup("foreach step buffer (largest group)", largest_group, state)]
    if muon:
        transient = [TensorGroup("Muon updates and orthogonalised updates", 2 * muon, param)]
    wide = pc.total - n_low  # float32 beside the low-precision ones: the rest, or the routers
    if n_low and wide:
        stored = [(wide, "fp32", ""), (n_low, low_dtype, f" stored in {low_dtype}")]
    else:
        stored = [(pc.total, param, "")]
    return {
        "parameters": [TensorGroup(f"parameters{what}", n, dt) for n, dt, what in stored],
        "gradients": [TensorGroup(f"gradients{what}", n, dt) for n, dt, what in stored],
        "optimizer_state": states,
        "optimizer_transient": transient,
    }


def _low_precision(cfg: ModelConfig, param: str) -> tuple[int, str]:
    """How many parameters are stored narrower than float32, and in which dtype: all of them
    but the MoE routers' (``keeps_float32``) with ``param_dtype`` bf16/fp16, else the routed
    experts' with ``moe.expert_dtype``."""
    if param != "fp32":  # the MTP modules' blocks number on after the model's
        routers = _mlp_counts(cfg, range(cfg.n_layers + cfg.mtp_depth))[2]
        return count_params(cfg).total - routers, param
    if cfg.moe is None or cfg.moe.expert_dtype == "float32":
        return 0, param
    assert cfg.d_ff is not None
    blocks = range(cfg.n_layers + cfg.mtp_depth)  # the MTP modules' blocks number on
    moe_layers = sum(cfg.moe.is_moe_layer(i) for i in blocks)
    per_layer = 3 * cfg.d_model * cfg.moe.expert_width(cfg.d_ff) * cfg.moe.n_routed_experts
    return moe_layers * per_layer, "bf16"


def _block_backward(
    cfg: ModelConfig, n: int, *, residual: str, compute: str, block_params: int
) -> list[TensorGroup]:
    """The top block's backward through its MLP: the largest moment of a block's backward.

    The residual's gradient (arriving, and the one being summed), the gradient of the MLP's
    output in the compute dtype, the gradients of ``silu(gate)·up``, ``silu(gate)`` and ``up``,
    and the block's weight gradients.
    """
    assert cfg.d_ff is not None
    d, f = cfg.d_model, cfg.d_ff
    return [
        TensorGroup("residual-stream gradients", 2 * n * d, residual),
        TensorGroup("MLP output gradient", n * d, compute),
        TensorGroup("MLP hidden gradients", 3 * n * f, compute),
        TensorGroup("the block's weight gradients", block_params, residual),
    ]


def _moe_impl(cfg: ModelConfig, impl: str, compute: str) -> str:
    """``"auto"`` → what ``GroupedExperts`` picks on Hopper: ``grouped_mm`` for bf16 with
    widths that are multiples of 8, else ``padded``."""
    if impl != "auto":
        return impl
    assert cfg.moe is not None and cfg.d_ff is not None
    widths = (cfg.d_model, cfg.moe.expert_width(cfg.d_ff))
    return "grouped_mm" if compute == "bf16" and not any(w % 8 for w in widths) else "padded"


def _block_kinds(cfg: ModelConfig) -> dict[bool, list[int]]:
    """The blocks' indices by whether their MLP is an MoE (``True``) or a dense SwiGLU."""
    kinds: dict[bool, list[int]] = {}
    for i in range(cfg.n_layers):
        kinds.setdefault(cfg.moe is not None and cfg.moe.is_moe_layer(i), []).append(i)
    return kinds


def _check_args(
    sizes: dict[str, int], param: str, compute: str, optimizer: str, moe: tuple[str, float]
) -> None:
    for name, value in sizes.items():
        low = 0 if name == "workspace_bytes" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if param not in _PARAM_DTYPES:
        raise ValueError(f"param_dtype must be one of {_PARAM_DTYPES}, got {param!r}")
    if compute not in _COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {_COMPUTE_DTYPES}, got {compute!r}")
    if DTYPE_BYTES[compute] > DTYPE_BYTES[param]:
        raise ValueError(f"compute_dtype {compute!r} is wider than param_dtype {param!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    impl, max_load = moe
    if impl not in ("auto", *MOE_IMPLS):
        raise ValueError(f"moe_impl must be one of {('auto', *MOE_IMPLS)}, got {impl!r}")
    if isinstance(max_load, bool) or not isinstance(max_load, (int, float)) or not max_load >= 1:
        raise ValueError(f"moe_max_load must be a number >= 1, got {max_load!r}")


def estimate_training_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int | None = None,
    *,
    param_dtype: str = "fp32",
    compute_dtype: str = "bf16",
    optimizer: str = "adamw",
    activation_checkpointing: bool | None = None,
    chunked_loss: bool = True,
    loss_chunk_size: int = 4096,
    compiled: bool = False,
    loss_kernel: bool = True,
    grad_accum: int = 1,
    workspace_bytes: int = CUBLAS_WORKSPACES,
    moe_impl: str = "auto",
    moe_max_load: float = 1.0,
    moment_dtype: str | None = None,
) -> MemoryEstimate:
    """Predict the peak memory of one training step of ``lmforge.model.Transformer``.

    Args:
        cfg: the model's shape.
        batch_size: sequences per micro-batch.
        seq_len: tokens per sequence; ``None`` means ``cfg.context_length``.
        param_dtype: the parameters' (and gradients', optimizer state's) dtype: ``"fp32"``
            (mixed precision, the trainer's default), ``"bf16"`` or ``"fp16"``.
        compute_dtype: the matmuls' dtype: the autocast dtype (``"bf16"``, ``"fp16"``), or
            ``"fp32"`` without autocast (equal to ``param_dtype`` means no autocast).
        optimizer: ``"adamw"``/``"adam"`` (2 states), ``"sgd"``/``"adagrad"`` (1), ``"muon"``
            (1 for the blocks' matrices, AdamW's 2 for the rest).
        activation_checkpointing: recompute each block in backward; ``None`` reads the config.
        chunked_loss: the fused chunked head loss (``return_logits=False``, what the trainer
            runs) rather than full float32 logits.
        loss_chunk_size: rows per loss chunk (``Transformer.loss_chunk_size``).
        compiled: the model runs under ``torch.compile`` (fewer saved tensors, fused loss).
        loss_kernel: lmforge's Triton kernels run (what a GPU with Triton runs): the chunked
            loss's cross-entropy and the MoE experts' SwiGLU, which saves less in eager mode;
            ``False`` for the PyTorch paths (``LMFORGE_TRITON=0``, no Triton).
        grad_accum: micro-batches per optimizer step; above 1, gradients stay allocated
            through the forward and backward passes.
        workspace_bytes: memory the matmul libraries hold (default: two 32 MiB cuBLAS
            workspaces, PyTorch's default on Hopper).
        moe_impl: the MoE layers' dropless grouped GEMM: ``"grouped_mm"`` (Hopper, bf16),
            ``"padded"`` (CPU, float32, older GPUs), or ``"auto"``: what a Hopper GPU runs
            (:mod:`lmforge.accounting.moe_activations`).
        moe_max_load: the busiest expert's assignments over the mean (the ``max_load_ratio``
            metric), which sizes the eager padded layout; 1 is perfect balance.
        moment_dtype: ``None`` or ``"bf16"``: Adam(W)'s moments stored in bf16
            (``OptimConfig.moment_dtype``).

    Returns:
        A :class:`MemoryEstimate`; ``.total`` is the predicted peak in bytes.

    Raises:
        ValueError: a non-positive size, an unknown dtype, optimizer or ``moe_impl``, a
            ``moe_max_load`` below 1, or ``compute_dtype`` wider than ``param_dtype``.
    """
    seq = cfg.context_length if seq_len is None else seq_len
    sizes = dict(batch_size=batch_size, seq_len=seq, grad_accum=grad_accum,
                 loss_chunk_size=loss_chunk_size, workspace_bytes=workspace_bytes)  # fmt: skip
    _check_args(sizes, param_dtype, compute_dtype, optimizer, (moe_impl, moe_max_load))
    ckpt = cfg.activation_checkpointing if activation_checkpointing is None else (
        activation_checkpointing
    )  # fmt: skip
    pc = count_params(cfg)
    low = _low_precision(cfg, param_dtype)
    if moment_dtype not in (None, "bf16"):
        raise ValueError(f'moment_dtype must be None or "bf16", got {moment_dtype!r}')
    if moment_dtype is not None and optimizer not in ("adam", "adamw"):
        raise ValueError(f"moment_dtype applies to adam and adamw, not {optimizer!r}")
    if low[0] and optimizer not in ("adam", "adamw"):
        raise ValueError(
            f"optimizer {optimizer!r} does not keep float32 master weights, so lmforge refuses "
            f"the {low[1]} parameters of this setup (param_dtype or moe.expert_dtype)"
        )
    parts = _model_states(pc, optimizer, param_dtype, low, moment_dtype)
    # the trainer sums low-precision weights' micro-batch gradients in float32
    # (lmforge.train.grad_sums): kept for the whole run once grad_accum > 1
    sums = low[0] if grad_accum > 1 else 0
    parts["grad_sums"] = [TensorGroup("float32 gradient sums", sums, "fp32")] if sums else []
    parts["workspace"] = [TensorGroup("cuBLAS workspaces", workspace_bytes, "uint8")]
    parts.update(
        _activation_parts(
            cfg,
            batch_size * seq,
            pc,
            param=param_dtype,
            compute=compute_dtype,
            ckpt=ckpt,
            compiled=compiled,
            chunked=chunked_loss,
            chunk_size=loss_chunk_size,
            kernel=loss_kernel,
            moe=(moe_impl, moe_max_load),
        )  # fmt: skip
    )
    phases = _phases(parts, pc, grads_live=grad_accum > 1, ckpt=ckpt)
    inputs: dict[str, object] = dict(sizes, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  optimizer=optimizer, activation_checkpointing=ckpt, chunked_loss=chunked_loss,
                  compiled=compiled, loss_kernel=loss_kernel, moe_impl=moe_impl,
                  moe_max_load=moe_max_load, moment_dtype=moment_dtype)  # fmt: skip
    return MemoryEstimate(parts, phases, max(phases, key=phases.__getitem__), inputs)


def _block_rows(
    cfg: ModelConfig,
    n: int,
    layer: int,
    *,
    param: str,
    compute: str,
    compiled: bool,
    pc: ParamCount,
    moe: tuple[str, float],
    kernel: bool = False,
) -> tuple[list[TensorGroup], list[TensorGroup], list[TensorGroup], list[TensorGroup]]:
    """One block's saved rows, weight copies, the copies autocast caches (a subset: not the
    routed experts', which ``GroupedExperts`` casts itself) and backward transient."""
    dt = {"residual": param, "compute": compute}
    is_moe = cfg.moe is not None and cfg.moe.is_moe_layer(layer)
    block = block_saved(cfg, n, compiled=compiled, mlp=not is_moe, **dt)
    copies = block_weight_copies(cfg, param=param, compute=compute, mlp=not is_moe)
    cached = list(copies)
    mlp, _, router = _mlp_counts(cfg, range(layer, layer + 1))
    params = pc.attention // cfg.n_layers + mlp + router + (pc.norms - cfg.d_model) // cfg.n_layers
    backward = _block_backward(cfg, n, block_params=params, **dt)
    if is_moe:
        impl = _moe_impl(cfg, moe[0], compute)
        kw = dict(compute=compute, compiled=compiled, impl=impl, max_load=moe[1])
        block += moe_saved(cfg, n, residual=param, kernel=kernel, **kw)  # type: ignore[arg-type]
        copies += moe_weight_copies(cfg, param=param, compute=compute)
        cached += moe_weight_copies(cfg, param=param, compute=compute, autocast_only=True)
        backward = backward[:1] + moe_backward(cfg, n, **kw) + backward[-1:]  # type: ignore[arg-type]
    return block, copies, cached, backward


def _activation_parts(
    cfg: ModelConfig,
    n: int,
    pc: ParamCount,
    *,
    param: str,
    compute: str,
    ckpt: bool,
    compiled: bool,
    chunked: bool,
    chunk_size: int,
    kernel: bool,
    moe: tuple[str, float],
) -> dict[str, list[TensorGroup]]:
    """Saved activations, weight copies and the transients, for ``n`` tokens.

    Blocks are counted by kind (dense MLP or MoE; ``MoEConfig`` places them), each kind's rows
    times its number of blocks.
    """
    dt = {"residual": param, "compute": compute}
    loss = loss_tensors(
        cfg, n, chunked=chunked, chunk_size=chunk_size, compiled=compiled, kernel=kernel, **dt
    )
    activations: list[TensorGroup] = []
    saved_copies: list[TensorGroup] = []
    cache: list[TensorGroup] = []
    recomputed: list[list[TensorGroup]] = []  # per kind: one block rebuilt in backward
    for layers in _block_kinds(cfg).values():
        block, copies, cached, backward = _block_rows(
            cfg,
            n,
            layers[0],
            param=param,
            compute=compute,
            compiled=compiled,
            pc=pc,
            moe=moe,
            kernel=kernel,
        )
        activations += [row.times(len(layers)) for row in block]
        saved_copies += [row.times(len(layers)) for row in copies]
        cache += [row.times(len(layers)) for row in cached]
        recomputed.append(block + copies + backward)
        if cfg.n_layers - 1 in layers:
            top_block = backward
    autocast_cache = cache if ckpt and not compiled else []
    if ckpt:  # each block keeps its input; one is recomputed at a time in backward
        inputs = TensorGroup("block inputs (checkpointed)", n * cfg.d_model, param)
        activations, saved_copies = [inputs.times(cfg.n_layers)], []
        top_block = max(recomputed, key=total_bytes)
    return {
        "activations": activations,
        "loss_saved": loss.saved,
        "weight_copies": saved_copies,
        "autocast_cache": autocast_cache,
        "loss_forward": loss.forward_transient,
        "loss_backward": loss.backward_transient,
        "block_backward": top_block,
    }


def _phases(
    parts: dict[str, list[TensorGroup]],
    pc: ParamCount,
    *,
    grads_live: bool,
    ckpt: bool,
) -> dict[str, int]:
    """Bytes alive at the four candidate moments of the peak (module docstring)."""
    b = {name: total_bytes(rows) for name, rows in parts.items()}
    grads = b["gradients"]
    states = b["parameters"] + b["optimizer_state"] + b["workspace"] + b["grad_sums"]
    states += grads if grads_live else 0
    saved = b["activations"] + b["weight_copies"] + b["loss_saved"]
    # In the top block's backward the loss's saved tensors are gone and the head's gradient
    # exists (all gradients but one block's, with checkpointing).
    head_grad = pc.head_matmul * grads // max(pc.total, 1)
    grads_so_far = 0 if grads_live else (grads if ckpt else head_grad)
    return {
        # Eager autocast caches each weight's copy until the forward ends (saved or not).
        "forward": states + saved + b["autocast_cache"] + b["loss_forward"],
        "backward_start": states + saved + b["loss_backward"],
        "backward_block": states + saved - b["loss_saved"] + grads_so_far + b["block_backward"],
        "optimizer": states + (0 if grads_live else grads) + b["optimizer_transient"],
    }
