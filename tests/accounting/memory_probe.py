"""Measure a training step's GPU memory beside the memory model's prediction (CUDA only).

Used by ``test_accounting_gpu.py`` and runnable by hand on a GPU machine::

    PYTHONPATH=python python tests/accounting/memory_probe.py [--compiled] [--list-saved]

For each shape it runs the trainer's step (bf16 autocast, fp32 weights, lmforge's optimizer,
``return_logits=False``, ``zero_grad(set_to_none=True)``) and reads
``torch.cuda.memory_allocated`` / ``max_memory_allocated`` around each phase of a steady-state
step, then prints them beside :func:`lmforge.accounting.estimate_training_memory`.
``--list-saved`` also lists the tensors autograd saves in eager mode (grouped by dtype and
shape) and, with ``--compiled``, the tensors the compiled forward graph saves.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
from typing import Any

import torch

from lmforge.accounting.memory import estimate_training_memory
from lmforge.kernels import triton_enabled
from lmforge.model.config import ModelConfig

SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-124M": dict(vocab_size=50304, context_length=1024, d_model=768, n_layers=12, n_heads=12),
    "gqa-qknorm-tied": dict(
        vocab_size=32768,
        context_length=1024,
        d_model=1024,
        n_layers=4,
        n_heads=16,
        n_kv_heads=4,
        qk_norm=True,
        tie_embeddings=True,
    ),
    "1B": dict(vocab_size=50304, context_length=1024, d_model=2048, n_layers=16, n_heads=16),
    # MoE on GPT-2 small's shape: fine-grained DeepSeek-style (sigmoid, 64 experts, top-8, one
    # shared expert) and Mixtral-style (8 experts, top-2); bf16 runs torch._grouped_mm on Hopper
    "gpt2-moe64-sigmoid": dict(
        vocab_size=50304,
        context_length=1024,
        d_model=768,
        n_layers=12,
        n_heads=12,
        moe=dict(
            n_routed_experts=64, top_k=8, expert_d_ff=256, n_shared_experts=1, router="sigmoid"
        ),
    ),
    "gpt2-moe8-top2": dict(
        vocab_size=50304,
        context_length=1024,
        d_model=768,
        n_layers=12,
        n_heads=12,
        moe=dict(n_routed_experts=8, top_k=2, expert_d_ff=1024, router="token_choice"),
    ),
    "parallel-ckpt": dict(
        vocab_size=50304,
        context_length=512,
        d_model=512,
        n_layers=6,
        n_heads=8,
        parallel_block=True,
        activation_checkpointing=True,
    ),
}


def _step_parts(
    cfg: ModelConfig, batch: int, compiled: bool, optimizer: str, chunked: bool = True
) -> tuple[Any, ...]:
    from lmforge.model import Transformer
    from lmforge.optim import OptimConfig, build_optimizer

    torch.manual_seed(0)
    model = Transformer(cfg).cuda()
    kinds = model.param_kinds()
    opt = build_optimizer(
        [(p, kinds[n]) for n, p in model.named_parameters()], OptimConfig(name=optimizer)
    )
    step_model = torch.compile(model) if compiled else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device="cuda")
    y = torch.roll(x, -1, 1)

    def forward() -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16):
            return step_model(x, y, return_logits=not chunked).loss

    return model, opt, forward


def measure(
    cfg: ModelConfig, batch: int, *, compiled: bool, optimizer: str = "adamw", chunked: bool = True
) -> dict:
    """Bytes allocated around each phase of a steady-state training step.

    Args:
        cfg: the model's shape.
        batch: sequences per step (of ``cfg.context_length`` tokens).
        compiled: run the model under ``torch.compile``.
        optimizer: an ``lmforge.optim`` optimizer name.
        chunked: the chunked head loss (``return_logits=False``) rather than full logits.

    Returns:
        ``base`` (before the step), ``after_forward``, ``peak_forward``, ``peak_backward``,
        ``after_backward``, ``peak_optimizer`` and ``peak`` (the whole step), in bytes.
    """
    from lmforge.optim import clip_grad_norm_

    torch._dynamo.reset()
    model, opt, forward = _step_parts(cfg, batch, compiled, optimizer, chunked)
    for _ in range(2):  # compile, allocate the optimizer state
        forward().backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    out: dict[str, int] = {"base": torch.cuda.memory_allocated()}
    torch.cuda.reset_peak_memory_stats()
    loss = forward()
    torch.cuda.synchronize()
    out["after_forward"] = torch.cuda.memory_allocated()
    out["peak_forward"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    torch.cuda.synchronize()
    out["after_backward"] = torch.cuda.memory_allocated()
    out["peak_backward"] = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    out["peak_optimizer"] = torch.cuda.max_memory_allocated()
    out["peak"] = max(out["peak_forward"], out["peak_backward"], out["peak_optimizer"])
    del model, opt, forward, loss
    gc.collect()
    torch.cuda.empty_cache()
    return out


def list_saved_eager(cfg: ModelConfig, batch: int) -> list[tuple[str, int, int]]:
    """Tensors autograd saves in one eager forward: ``(description, count, bytes)`` rows."""
    model, _, forward = _step_parts(cfg, batch, False, "adamw")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in params:
            fn = type(t.grad_fn).__name__ if t.grad_fn is not None else "leaf/none"
            desc = f"{str(t.dtype)[6:]} {tuple(t.shape)} {fn}"
            seen[ptr] = (desc, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss, model, forward
    gc.collect()  # a pack hook that returns its tensor makes reference cycles
    torch.cuda.empty_cache()
    rows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for desc, nbytes in seen.values():
        rows[desc][0] += 1
        rows[desc][1] += nbytes
    return sorted(((d, c, b) for d, (c, b) in rows.items()), key=lambda r: -r[2])


def _install_partition_logger(log: list[str]) -> None:
    """Log the tensors each compiled forward graph saves for its backward."""
    import torch._inductor.compile_fx as cfx

    original = cfx.min_cut_rematerialization_partition

    def logged(joint: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        fw, bw = original(joint, inputs, *args, **kwargs)
        outs = next(iter(fw.graph.find_nodes(op="output"))).args[0]
        rows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for node in outs[kwargs["num_fwd_outputs"] :]:
            val = node.meta.get("val") if hasattr(node, "meta") else None
            if not isinstance(val, torch.Tensor):
                continue
            target = getattr(node.target, "__name__", str(node.target))
            kind = "input" if node.op == "placeholder" else target
            key = f"{str(val.dtype)[6:]} {tuple(val.shape)} {kind}"
            rows[key][0] += 1
            rows[key][1] += val.numel() * val.element_size()
        for key, (count, nbytes) in sorted(rows.items(), key=lambda r: -r[1][1]):
            log.append(f"  {count:3d} x {key}: {nbytes / 2**20:.1f} MiB")
        return fw, bw

    cfx.min_cut_rematerialization_partition = logged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="gpt2-124M,gqa-qknorm-tied,parallel-ckpt")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--list-saved", action="store_true")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--full-logits", action="store_true", help="return_logits=True")
    args = parser.parse_args()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}))
    log: list[str] = []
    if args.list_saved and args.compiled:
        _install_partition_logger(log)
    for name in args.shapes.split(","):
        cfg = ModelConfig(**SHAPES[name])
        if args.list_saved and not args.compiled:
            for desc, count, nbytes in list_saved_eager(cfg, args.batch):
                print(f"  {count:3d} x {desc}: {nbytes / 2**20:.1f} MiB")
        chunked = not args.full_logits
        got = measure(
            cfg, args.batch, compiled=args.compiled, optimizer=args.optimizer, chunked=chunked
        )
        est = estimate_training_memory(
            cfg,
            args.batch,
            compiled=args.compiled,
            optimizer=args.optimizer,
            chunked_loss=chunked,
            loss_kernel=triton_enabled(),
        )
        print("\n".join(log))
        log.clear()
        mib = {k: round(v / 2**20, 1) for k, v in got.items()}
        phases = {k: round(v / 2**20, 1) for k, v in est.phases.items()}
        print(json.dumps(dict(shape=name, batch=args.batch, compiled=args.compiled, chunked=chunked,
                              measured_mib=mib, predicted_mib=phases,
                              ratio=round(est.total / got["peak"], 3))))  # fmt: skip
        print(est.table())


if __name__ == "__main__":
    main()
