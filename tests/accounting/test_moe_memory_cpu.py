"""The MoE rows of the memory model against what autograd really saves, on the CPU.

Every tensor saved for backward passes through ``torch.autograd.graph.saved_tensors_hooks``;
summing the bytes of their distinct storages (parameters excluded) gives the number the
memory model's rows must equal. Eager runs hook one MoE layer; compiled runs hook the
compiled MLP half of a block (its RMSNorm and the MoE; the compiled graph's saved outputs
also reach the hooks); the model-level test compares a whole MoE model with its dense twin.
The eager layer test runs again in a child process under Triton's interpreter, where the
CUDA path's kernels (router top-k, row gathers, SwiGLU) run on the CPU and save what they save
on a GPU.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lmforge.accounting.activations import TensorGroup, block_saved, total_bytes
from lmforge.accounting.memory import estimate_training_memory
from lmforge.accounting.moe_activations import moe_rows_per_expert, moe_saved, moe_weight_copies
from lmforge.model import Transformer
from lmforge.model.config import ModelConfig
from lmforge.model.layers import RMSNorm, cast_parameters_
from lmforge.model.moe import MoEConfig
from lmforge.model.moe.layer import MoE

N_TOKENS, D, D_FF = 96, 32, 64

SHAPES = {
    "top1": MoEConfig(n_routed_experts=4, top_k=1),
    "top2_shared": MoEConfig(n_routed_experts=4, top_k=2, n_shared_experts=1),
    "sigmoid_top8_fine": MoEConfig(
        n_routed_experts=16, top_k=8, expert_d_ff=16, n_shared_experts=2, router="sigmoid"
    ),
    "top2_capacity": MoEConfig(n_routed_experts=4, top_k=2, capacity_factor=1.25),
    "expert_choice": MoEConfig(n_routed_experts=4, top_k=2, router="expert_choice"),
    "hash_shared": MoEConfig(n_routed_experts=4, top_k=2, router="hash", n_shared_experts=1),
}
HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""This process runs lmforge's Triton kernels in the interpreter (the child of
``test_eager_rows_hold_with_the_triton_kernels``)."""


def _config(moe: MoEConfig | None, **kw: Any) -> ModelConfig:
    base = dict(vocab_size=64, context_length=N_TOKENS, d_model=D, n_layers=1, n_heads=2,
                d_ff=D_FF)  # fmt: skip
    return ModelConfig(**{**base, **kw}, moe=moe)  # type: ignore[arg-type]


def saved_bytes(module: nn.Module, run: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd holds for backward once ``run()`` returns.

    Storages saved by parts of the graph that were dropped during the forward (a balance loss
    with weight 0) are not counted: only those some saved tensor still references.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, tuple[int, list[weakref.ref[Tensor]]]] = {}

    def pack(t: Tensor) -> Tensor:
        # A detached alias: the graph node alone keeps it (returning ``t`` would make a cycle
        # through the C++ graph for an output saved by its own node, which gc cannot see).
        alias = t.detach()
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            refs = seen.setdefault(ptr, (t.untyped_storage().nbytes(), []))[1]
            refs.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    gc.collect()
    alive = sum(nbytes for nbytes, refs in seen.values() if any(r() is not None for r in refs))
    out.float().sum().backward()  # the graph is sound (and freed)
    del out
    gc.collect()
    return alive


def _autocast(on: bool) -> Any:
    return torch.autocast("cpu", torch.bfloat16, enabled=on)


# (impl, bf16): the padded path in float32 and bf16 autocast; grouped_mm runs in bf16 only
IMPLS = [("padded", False), ("padded", True), ("grouped_mm", True)]


@pytest.mark.parametrize(
    ("impl", "bf16"), IMPLS, ids=["padded-fp32", "padded-bf16", "grouped-bf16"]
)
@pytest.mark.parametrize("name", list(SHAPES))
def test_eager_moe_layer_saves_what_the_rows_say(name: str, impl: str, bf16: bool) -> None:
    moe = SHAPES[name]
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("torch._grouped_mm needs PyTorch >= 2.8")
    cfg = _config(moe)
    torch.manual_seed(0)
    layer = MoE(cfg, 0)
    layer.experts.impl = impl
    x = torch.randn(2, N_TOKENS // 2, D, requires_grad=True)
    h = RMSNorm(D)(x)  # the block's normed input: what the MoE layer receives
    ids = torch.randint(0, cfg.vocab_size, (2, N_TOKENS // 2))
    with _autocast(bf16):
        got = saved_bytes(layer, lambda: layer(h, ids))
    assert layer.stats is not None
    rows = None  # eager padded: the run's largest group
    if impl == "padded" and moe.capacity_factor is None:
        rows = max(int(layer.stats.counts.max()), 1)
    compute = "bf16" if bf16 else "fp32"
    kw = dict(residual="fp32", compute=compute, compiled=False, impl=impl, rows=rows)
    kw["kernel"] = INTERPRETED  # the Triton SwiGLU keeps [gate | up] only
    want = moe_saved(cfg, N_TOKENS, **kw) + moe_weight_copies(cfg, param="fp32", compute=compute)  # type: ignore[arg-type]
    print(f"{name} {impl} {compute} eager: predicted/saved = {total_bytes(want) / got:.4f}")
    assert total_bytes(want) == got  # exact: every saved storage is a row


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason="the child, or a GPU")
def test_eager_rows_hold_with_the_triton_kernels() -> None:
    """The eager rows again, with the kernels the CUDA path runs (in Triton's interpreter, which
    must be switched on before Triton is imported: a child process)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", "test_eager_moe_layer_saves_what_the_rows_say"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout, out.stdout[-2000:]


def test_padded_rows_per_expert() -> None:
    tc = SHAPES["top2_shared"]  # A = 2N over 4 experts
    assert moe_rows_per_expert(tc, 96, impl="padded", compiled=False) == 48
    assert moe_rows_per_expert(tc, 96, impl="padded", compiled=False, max_load=1.5) == 72
    assert moe_rows_per_expert(tc, 96, impl="padded", compiled=False, max_load=9.0) == 192
    assert moe_rows_per_expert(tc, 96, impl="padded", compiled=True) == 192  # A: static bound
    assert moe_rows_per_expert(tc, 96, impl="grouped_mm", compiled=False) is None
    cap = SHAPES["top2_capacity"]
    assert moe_rows_per_expert(cap, 96, impl="grouped_mm", compiled=True) == 60  # ceil(1.25·48)


def test_moe_rows_by_hand() -> None:
    """Top-2 of 4 experts, one shared expert of width 64, grouped_mm, bf16 autocast, eager."""
    n, d, f, e, k = N_TOKENS, D, D_FF, 4, 2
    a = n * k
    rows = moe_saved(_config(SHAPES["top2_shared"]), n, residual="fp32", compute="bf16",
                     compiled=False, impl="grouped_mm")  # fmt: skip
    fp32 = 4 * (n * d + n * e + n * k + n + n * k)  # router input, probabilities, selected and
    # their sum; the gates
    int64 = 8 * (a + a + n * k)  # the sort's two maps, top-k indices
    bf16 = 2 * (a * d + 4 * a * f + a * d + 2 * n * d + 4 * n * f)
    # xs, four hiddens, sorted outputs; shared: two casts and four hiddens
    assert total_bytes(rows) == fp32 + int64 + bf16 + 4 * e  # + int32 group offsets


class _MLPHalf(nn.Module):
    """The MLP half of a sequential block: ``x + MoE(RMSNorm(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model)
        self.moe = MoE(cfg, 0)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.moe(self.norm(x))


COMPILED = [
    ("sigmoid_top8_fine", "grouped_mm", True),
    ("top2_shared", "padded", False),
    ("expert_choice", "padded", True),
]


@pytest.mark.parametrize(("name", "impl", "bf16"), COMPILED)
def test_compiled_moe_saves_what_the_rows_say(name: str, impl: str, bf16: bool) -> None:
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("needs torch._grouped_mm")
    cfg = _config(SHAPES[name])
    torch.manual_seed(0)
    half = _MLPHalf(cfg)
    half.moe.experts.impl = impl
    torch._dynamo.reset()
    compiled = torch.compile(half)
    x = torch.randn(2, N_TOKENS // 2, D, requires_grad=True)
    with _autocast(bf16):
        got = saved_bytes(half, lambda: compiled(x))
    compute = "bf16" if bf16 else "fp32"
    # the residual and the MLP norm's inverse RMS: the block's rows
    norm_rows = [
        TensorGroup("residual", N_TOKENS * D, "fp32"),
        TensorGroup("rms", N_TOKENS, "fp32"),
    ]
    kw = dict(residual="fp32", compute=compute, compiled=True, impl=impl)
    want = norm_rows + moe_saved(cfg, N_TOKENS, **kw)  # type: ignore[arg-type]
    want += moe_weight_copies(cfg, param="fp32", compute=compute)
    print(f"{name} {impl} {compute} compiled: predicted/saved = {total_bytes(want) / got:.4f}")
    assert total_bytes(want) == pytest.approx(got, rel=0.01)


def _model_saved(cfg: ModelConfig, bf16: bool, impl: str) -> int:
    torch.manual_seed(0)
    model = Transformer(cfg)
    for m in model.modules():
        if hasattr(m, "impl") and m.__class__.__name__ == "GroupedExperts":
            m.impl = impl
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.context_length))
    with _autocast(bf16):
        return saved_bytes(model, lambda: model(idx, torch.roll(idx, -1, 1)).loss)


@pytest.mark.parametrize(("bf16", "impl"), [(True, "grouped_mm"), (False, "padded")])
def test_moe_model_minus_dense_twin(bf16: bool, impl: str) -> None:
    """Dense and MoE blocks placed by the config: the estimate's difference to the dense twin
    is the measured one (attention and the loss, CPU-specific, cancel)."""
    if impl == "grouped_mm" and not HAS_GROUPED_MM:
        pytest.skip("needs torch._grouped_mm")
    moe = MoEConfig(n_routed_experts=8, top_k=2, expert_d_ff=32, n_shared_experts=1,
                    first_dense_layers=1, moe_every=2, capacity_factor=1.5,
                    router="sigmoid")  # fmt: skip
    if impl == "grouped_mm":  # dropless: grouped_mm's memory does not depend on the routing
        moe = MoEConfig(**{**moe.to_dict(), "capacity_factor": None})
    kw = dict(n_layers=4, context_length=32)
    cfg, dense = _config(moe, **kw), _config(None, **kw)
    got = _model_saved(cfg, bf16, impl) - _model_saved(dense, bf16, impl)
    compute = "bf16" if bf16 else "fp32"

    def est(c: ModelConfig) -> int:
        e = estimate_training_memory(c, 2, compute_dtype=compute, moe_impl=impl, loss_kernel=False)
        return e.bytes("activations") + e.bytes("weight_copies")

    want = est(cfg) - est(dense)
    print(f"model {impl} {compute}: predicted/measured difference = {want / got:.4f}")
    assert want == pytest.approx(got, rel=0.01)
    assert cfg.moe is not None and cfg.moe.moe_layers(4) == [1, 3]
    n = 2 * 32  # two of four blocks are MoE: the activations are the dense rows and MoE rows
    dense_block = block_saved(dense, n, residual="fp32", compute=compute, compiled=False)
    est_moe = estimate_training_memory(cfg, 2, compute_dtype=compute, moe_impl=impl)
    moe_block = block_saved(cfg, n, residual="fp32", compute=compute, compiled=False, mlp=False)
    moe_rows = moe_saved(cfg, n, residual="fp32", compute=compute, compiled=False, impl=impl,
                         kernel=True)  # fmt: skip  # loss_kernel=True: the Triton SwiGLU too
    assert est_moe.bytes("activations") == 2 * total_bytes(dense_block) + 2 * total_bytes(
        moe_block + moe_rows
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(moe_impl="loop"), "moe_impl"), (dict(moe_max_load=0.5), "moe_max_load")],
)
def test_bad_moe_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_training_memory(_config(SHAPES["top1"]), 2, **kwargs)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.ndim > 0  # step counters are scalars
    )


@pytest.mark.parametrize(
    ("optimizer", "bf16"), [("adamw", False), ("muon", False), ("adamw", True)]
)
def test_moe_model_states_match_real_tensors(optimizer: str, bf16: bool) -> None:
    """Parameters, gradients and optimizer state count every stored expert (Muon: routers
    keep AdamW's two moments; bf16 weights: float32 masters, the routers' weights float32)."""
    optim = pytest.importorskip("lmforge.optim")
    moe = MoEConfig(n_routed_experts=8, top_k=2, expert_d_ff=16, n_shared_experts=1,
                    first_dense_layers=1)  # fmt: skip
    cfg = _config(moe, n_layers=3, context_length=8)
    torch.manual_seed(0)
    model = Transformer(cfg)
    if bf16:
        cast_parameters_(model, torch.bfloat16)
        assert sum(p.dtype == torch.float32 for p in model.parameters()) == 2  # the routers
    kinds = model.param_kinds()
    labelled = [(p, kinds[n]) for n, p in model.named_parameters()]
    opt = optim.build_optimizer(labelled, optim.OptimConfig(name=optimizer))
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    model(idx, torch.roll(idx, -1, 1)).loss.backward()
    opt.step()
    dt = dict(param_dtype="bf16", compute_dtype="bf16") if bf16 else {}
    est = estimate_training_memory(cfg, 2, 8, optimizer=optimizer, **dt)
    params = list(model.parameters())
    assert est.parameters == sum(p.numel() * p.element_size() for p in params)
    assert est.gradients == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert est.optimizer_state == _state_bytes(opt)


def test_checkpointed_moe_keeps_only_autocast_cached_copies() -> None:
    """With checkpointing, eager autocast still caches the attention's and shared experts'
    bf16 weights for the whole forward; the routed experts' casts die with each block."""
    moe = MoEConfig(n_routed_experts=8, top_k=2, expert_d_ff=16, n_shared_experts=1,
                    first_dense_layers=1)  # fmt: skip
    cfg = _config(moe, n_layers=3)
    est = estimate_training_memory(cfg, 2, N_TOKENS // 2, activation_checkpointing=True)
    attention, dense_mlp, shared, routed = 4 * D * D, 3 * D * D_FF, 3 * D * 16, 8 * 3 * D * 16
    assert est.bytes("autocast_cache") == 2 * (3 * attention + dense_mlp + 2 * shared)
    assert est.bytes("weight_copies") == 0  # nothing saved across blocks but their inputs
    assert est.bytes("activations") == 4 * 3 * N_TOKENS * D
    top = estimate_training_memory(cfg, 2, N_TOKENS // 2)
    assert top.bytes("weight_copies") == 2 * (3 * attention + dense_mlp + 2 * (shared + routed))
