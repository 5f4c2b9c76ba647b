"""Data-parallel training under ``torchrun``: the process group, the model wrapper, collectives.

``torchrun --nproc-per-node=N -m lmforge train ...`` starts ``N`` copies of the ordinary
command; :func:`setup` reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``) and joins the process group. Without that environment (or with
``WORLD_SIZE=1``) it is a no-op and the trainer runs exactly as before. Design choices:

- **One seeded stream, sliced.** Every rank draws the whole global batch of a step and keeps
  its contiguous slice (:class:`~lmforge.data.mixture.MixtureSampler`'s ``rank``/``world_size``),
  so ``N`` ranks with ``grad_accum = G`` see exactly the windows of one process with
  ``grad_accum = G * N``, and the sampler position (the step) resumes in any world size.
- **Two strategies.** ``ddp``: ``DistributedDataParallel`` (Li et al. 2020, "PyTorch
  Distributed"), every rank holds the whole model and the gradients are averaged in buckets that
  overlap the backward pass; ``no_sync()`` skips that all-reduce on all but the last
  micro-batch of an accumulation. ``fsdp``: FSDP2's ``fully_shard`` (per-parameter ``DTensor``
  sharding, Zhao et al. 2023, "PyTorch FSDP"; torchtitan's recipe) on every block and then the
  root, so a block's parameters are gathered just in time and freed after; on CUDA with bf16
  parameters in compute and fp32 gradient reduction (``MixedPrecisionPolicy``), on the CPU plain
  fp32 (gloo).
- **Decisions are collective.** The loss is averaged over ranks only at log time (one
  all-reduce per log line, no per-step sync) together with the non-finite flags, so every rank
  stops, logs and checkpoints on the same step. Rank 0 alone writes files; a failure there is
  broadcast (:func:`on_main`) so the other ranks raise too instead of waiting forever.
- **World-size-free checkpoints.** Under FSDP each rank writes its own shards with
  ``torch.distributed.checkpoint`` (:mod:`lmforge.train.dcp_checkpoint`; ``train.
  checkpoint_format = "auto"``), so no rank ever holds the whole model. Otherwise (and with
  ``checkpoint_format = "torch"``) rank 0 writes the ordinary ``checkpoint.pt``: DDP's
  ``.module`` is unwrapped; FSDP's shards are gathered into full CPU tensors first
  (:func:`full_state`), the optimizer state re-keyed from names to the plain integer ids. Both
  formats load in one process or in ``N`` of either strategy.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from lmforge.optim._common import LOW_PRECISION
from lmforge.train.runtime import resolve_device

__all__ = [
    "STRATEGIES",
    "DistContext",
    "StateView",
    "all_reduce_mean",
    "barrier",
    "clip_grad_norm",
    "full_state",
    "gradient_sync",
    "load_full_state",
    "on_main",
    "on_main_shared",
    "setup",
    "teardown",
    "wrap_model",
]

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: the global rank, ``0 <= rank < world_size``.
        world_size: the number of processes (1: not distributed).
        local_rank: the rank on this host, which picks the GPU.
        device: this process's device (``cuda:LOCAL_RANK`` on GPUs).
        is_main: rank 0, the one that logs and writes files.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU), or run alone.

    Args:
        device: the config's ``train.device``; with several processes a CUDA device becomes
            ``cuda:LOCAL_RANK``.

    Returns:
        This process's :class:`DistContext`.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 but torchrun's other variables are missing or invalid.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device), True)
    missing = [k for k in _ENV if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with "
            "torchrun --nproc-per-node=N -m lmforge train ..."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
        log.info("rank %d of %d on %s (%s)", rank, world, dev, backend)
    return DistContext(rank, world, local_rank, dev, rank == 0)


def teardown(*, wait: bool = False) -> None:
    """Leave the process group, if this process joined one.

    Args:
        wait: first wait for every rank to arrive here (after a run that ended normally), so no
            rank tears down its connections while a peer still uses them — gloo aborted a rank
            at exit now and then without it. Not after an error: a dead peer never arrives.
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, ctx: DistContext, strategy: str, amp_dtype: torch.dtype | None
) -> nn.Module:
    """The model to step: ``model`` itself alone, DDP around it, or ``model`` sharded in place.

    With ``fsdp`` the parameters of ``model`` become ``DTensor`` shards, so build the
    optimizer after this call.

    Raises:
        ValueError: an unknown strategy, or ``fsdp`` with bf16 or fp16 parameters.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not ctx.distributed:
        return model
    if strategy == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes & set(LOW_PRECISION):
        raise ValueError(
            "fsdp shards float32 weights and casts them for compute, and this model stores "
            f"{sorted(map(str, dtypes))} weights (train.param_dtype or moe.expert_dtype); use "
            'train.strategy = "ddp", or train.param_dtype and moe.expert_dtype = "float32"'
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if amp_dtype is not None:  # CUDA only: bf16 compute, fp32 master weights and reductions
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=amp_dtype, reduce_dtype=torch.float32
        )
    for block in getattr(model, "layers", []):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Reduce gradients across ranks in this backward only when ``sync`` (the last micro-step)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # an FSDP2 module
    if set_sync is not None:
        set_sync(sync)
    yield


def clip_grad_norm(
    params: list[nn.Parameter], max_norm: float, clip: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """The global gradient norm, clipping to ``max_norm``; FSDP's sharded grads are reduced.

    DDP's gradients are already averaged (identical on every rank), so ``clip`` (lmforge's
    ``clip_grad_norm_``) sees the global norm. FSDP's are ``DTensor`` shards: torch's
    ``get_total_norm`` gives a partial norm that ``full_tensor()`` all-reduces (torchtitan).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not _is_dtensor(grads[0]):
        return clip(params, max_norm)
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if _is_dtensor(total):
        total = total.full_tensor()  # type: ignore[attr-defined]
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def clip_coefficient(
    params: list[nn.Parameter],
    max_norm: float,
    coefficient: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The global gradient norm and clipping factor (``coefficient``: lmforge's
    ``clip_coefficient``), for an optimizer that applies the factor itself; ``None`` for FSDP's
    sharded grads, which :func:`clip_grad_norm` clips in place instead."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads and _is_dtensor(grads[0]):
        return None
    return coefficient(params, max_norm)


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``values`` over ranks (a copy; ``values`` itself alone)."""
    if not ctx.distributed:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (nothing alone)."""
    if ctx.distributed:
        dist.barrier()


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; an exception there is raised on every rank.

    Returns:
        ``fn()`` on rank 0, ``None`` elsewhere.
    """
    if not ctx.distributed:
        return fn()
    result, error = None, cast(list[str | None], [None])
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:
            error = [f"{type(err).__name__}: {err}"]
            dist.broadcast_object_list(error, src=0)
            raise
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise RuntimeError(f"rank 0 failed: {error[0]}")
    return result


def on_main_shared(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and send its (picklable) result to every rank; an exception
    there is raised on every rank (:func:`on_main`)."""
    result = on_main(ctx, fn)
    if not ctx.distributed:
        return cast(T, result)
    box = [result]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """FSDP: the whole model and optimizer state as CPU tensors on rank 0 (collective; empty
    dicts on the other ranks, ``None`` for an unsharded model).

    The optimizer state comes back in ``optimizer.state_dict()``'s own form (integer ids in
    ``param_groups`` order), so the checkpoint matches a single process's.
    """
    if not any(_is_dtensor(p) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=opts))
    if not osd:  # with cpu_offload, ranks other than 0 get empty dicts: only rank 0 writes
        return msd, osd
    ids = {name: i for i, name in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    groups = [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]
    return msd, {"state": {ids[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, msd: dict[str, Any], osd: dict[str, Any]
) -> None:
    """FSDP: shard a full model and optimizer state (from a ``checkpoint.pt``) onto the ranks."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = [n for n, _ in model.named_parameters()]
    order = {id(p): n for n, p in model.named_parameters()}
    flat = [order[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert len(flat) == len(names)
    groups = [dict(g) for g in osd["param_groups"]]
    for g in groups:
        g["params"] = [flat[i] for i in g["params"]]
    named = {"state": {flat[i]: s for i, s in osd["state"].items()}, "param_groups": groups}
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, msd, options=opts)
    set_optimizer_state_dict(model, optimizer, cast(Any, named), options=opts)


class StateView:
    """Stands in for a model or optimizer whose state was gathered already (``state_dict()``)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state
