"""The memory model: hand-multiplied byte counts, and real tensors' bytes on the CPU."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from reference_gpt import ReferenceGPT
from torch import nn

from lmforge.accounting import count_params
from lmforge.accounting.activations import block_saved, total_bytes
from lmforge.accounting.memory import CUBLAS_WORKSPACES, estimate_training_memory
from lmforge.model.config import ModelConfig

# V=64, T=8, d=16, L=2, h=4 (hd=4), kv=4, f=32, untied.
TINY = ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=2, n_heads=4, d_ff=32)
B, T = 2, 8
N = B * T  # 16 tokens


def test_model_states_by_hand() -> None:
    params = 64 * 16 * 2 + 2 * (4 * 16 * 16 + 3 * 16 * 32) + 2 * 2 * 16 + 16  # = 7184
    assert count_params(TINY).total == params
    est = estimate_training_memory(TINY, B, T)
    assert est.parameters == 4 * params
    assert est.gradients == 4 * params
    assert est.optimizer_state == 8 * params  # AdamW's two fp32 moments
    assert est.by_dtype("parameters") == {"fp32": 4 * params}
    assert est.bytes("workspace") == CUBLAS_WORKSPACES


def test_eager_block_activations_by_hand() -> None:
    d, f, h = 16, 32, 4
    fp32 = 4 * (N * d + N + N * d + N + N * h)  # two residuals, two inverse RMS, logsumexp
    bf16 = 2 * (3 * N * d + 3 * N * d + 2 * N * d + 2 * N * d + 4 * N * f)
    # casts for wq/wk/wv; q, k, v; attention output twice; casts for w1/w3; gate, up, silu, product
    rows = block_saved(TINY, N, residual="fp32", compute="bf16", compiled=False)
    assert total_bytes(rows) == fp32 + bf16
    est = estimate_training_memory(TINY, B, T)
    assert est.bytes("activations") == 2 * (fp32 + bf16)
    copies = 2 * (4 * 16 * 16 + 3 * 16 * 32)  # bf16 copy of every block weight, both blocks
    assert est.bytes("weight_copies") == 2 * copies


def test_compiled_saves_less() -> None:
    d, f, h = 16, 32, 4
    rows = block_saved(TINY, N, residual="fp32", compute="bf16", compiled=True)
    fp32 = 4 * (2 * N * d + 2 * N + N * h)
    bf16 = 2 * (N * d + 3 * N * d + 2 * N * d + N * d + 3 * N * f)  # one cast each, g, u, product
    assert total_bytes(rows) == fp32 + bf16


def test_eager_chunked_loss_by_hand() -> None:
    v, d = 64, 16
    torch_path = dict(loss_kernel=False)
    est = estimate_training_memory(TINY, B, T, loss_chunk_size=8, **torch_path)  # 2 chunks of 8
    assert est.bytes("loss_saved") == 4 * (N * d + N) + 4 * (N * d + v * d)
    c = 8
    per_chunk = 2 * c * v + 4 * c * v + 3 * 4 * c * v + 2 * c * v  # incl. the previous chunk's
    assert est.bytes("loss_forward") == 4 * N * d + 2 * v * d + per_chunk
    one_chunk = estimate_training_memory(TINY, B, T, loss_chunk_size=4096, **torch_path)
    assert one_chunk.bytes("loss_forward") == 4 * N * d + 2 * v * d + 18 * N * v


def test_chunked_loss_with_the_kernel_by_hand() -> None:
    v, d, c = 64, 16, 8
    for compiled in (False, True):  # one opaque operator: the same either way
        est = estimate_training_memory(TINY, B, T, loss_chunk_size=c, compiled=compiled)
        assert est.bytes("loss_saved") == 4 * (N * d + N) + 4 * (N * d + v * d)
        # final hidden, head weight copy, row statistics, logits and gradient chunks (bf16),
        # the hidden states and their gradient in bf16
        work = 4 * N * d + 2 * v * d + 4 * 4 * N + 2 * 2 * c * v + 2 * 2 * N * d
        assert est.bytes("loss_forward") == work
        assert est.bytes("loss_backward") == 4 * (N * d + v * d)


def test_full_logits_by_hand() -> None:
    v, d = 64, 16
    est = estimate_training_memory(TINY, B, T, chunked_loss=False)
    assert est.bytes("loss_saved") == 4 * (N * d + N) + 4 * N * v + 2 * N * d + 2 * v * d
    assert est.bytes("loss_forward") == 4 * N * v
    assert est.bytes("loss_backward") == 16 * N * v


def test_peak_is_the_largest_phase_and_total() -> None:
    est = estimate_training_memory(TINY, 4, 8)
    assert est.total == est.peak == max(est.phases.values())
    assert est.phases[est.peak_phase] == est.total
    assert "<- peak" in est.table()


def test_monotone_in_batch_and_checkpointing_saves() -> None:
    cfg = ModelConfig(vocab_size=1024, context_length=256, d_model=128, n_layers=4, n_heads=4)
    small, big = (estimate_training_memory(cfg, b) for b in (4, 8))
    assert big.activations > small.activations and big.total > small.total
    ckpt = estimate_training_memory(cfg, 8, activation_checkpointing=True)
    assert ckpt.activations < big.activations
    assert ckpt.bytes("activations") == 4 * 8 * 256 * 128 * 4  # one fp32 input per block


def test_grad_accum_keeps_gradients_alive() -> None:
    one = estimate_training_memory(TINY, B, T)
    accum = estimate_training_memory(TINY, B, T, grad_accum=4)
    assert accum.phases["forward"] == one.phases["forward"] + one.gradients


def test_muon_keeps_one_state_per_matrix() -> None:
    pc = count_params(TINY)
    est = estimate_training_memory(TINY, B, T, optimizer="muon")
    assert est.optimizer_state == 4 * (2 * (pc.total - pc.blocks_matmul) + pc.blocks_matmul)


def test_pure_bf16_has_no_casts_or_copies() -> None:
    est = estimate_training_memory(TINY, B, T, param_dtype="bf16", compute_dtype="bf16")
    assert est.parameters == 2 * count_params(TINY).total
    assert est.bytes("weight_copies") == 0
    assert set(est.by_dtype("activations")) <= {"bf16", "fp32"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(seq_len=-1), "seq_len"),
        (dict(param_dtype="fp8"), "param_dtype"),
        (dict(compute_dtype="int8"), "compute_dtype"),
        (dict(param_dtype="bf16", compute_dtype="fp32"), "wider"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(loss_chunk_size=0), "loss_chunk_size"),
        (dict(grad_accum=0), "grad_accum"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        estimate_training_memory(TINY, **args)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.ndim > 0  # step counters are scalars
    )


def _trained_one_step(cfg: ModelConfig, optim_cfg: Any) -> tuple[nn.Module, torch.optim.Optimizer]:
    """An lmforge ``Transformer`` of ``cfg`` after one step of ``build_optimizer(optim_cfg)``."""
    from lmforge.model.transformer import Transformer
    from lmforge.optim import build_optimizer

    torch.manual_seed(0)
    model = Transformer(cfg)
    kinds = model.param_kinds()
    opt = build_optimizer([(p, kinds[n]) for n, p in model.named_parameters()], optim_cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    model(idx, torch.roll(idx, -1, 1)).loss.backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("tied", [False, True])
def test_model_states_match_real_tensors_after_one_step(tied: bool) -> None:
    cfg = ModelConfig(
        vocab_size=96, context_length=8, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
        qk_norm=True, tie_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ReferenceGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    model(idx, torch.roll(idx, -1, 1)).backward()
    opt.step()
    params = list(model.parameters())
    est = estimate_training_memory(cfg, 2, 8)
    assert est.parameters == sum(p.numel() * p.element_size() for p in params)
    assert est.gradients == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert est.optimizer_state == _state_bytes(opt)


def test_lmforge_optimizer_state_matches() -> None:
    transformer = pytest.importorskip("lmforge.model.transformer")
    optim = pytest.importorskip("lmforge.optim")
    cfg = ModelConfig(vocab_size=96, context_length=8, d_model=16, n_layers=2, n_heads=4)
    torch.manual_seed(0)
    model = transformer.Transformer(cfg)
    kinds = model.param_kinds()
    labelled = [(p, kinds[n]) for n, p in model.named_parameters()]
    for name in ("adamw", "muon"):
        opt = optim.build_optimizer(labelled, optim.OptimConfig(name=name))
        idx = torch.randint(0, cfg.vocab_size, (2, 8))
        model(idx, torch.roll(idx, -1, 1)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert estimate_training_memory(cfg, 2, 8, optimizer=name).optimizer_state == (
            _state_bytes(opt)
        )


@pytest.mark.parametrize("mtp_depth", [0, 1])
def test_bf16_experts_states_match_real_tensors_after_one_step(mtp_depth: int) -> None:
    """``moe.expert_dtype = "bfloat16"``: the routed experts' weights and gradients in bf16,
    AdamW's float32 masters and moments for them (the MTP modules' blocks included); the
    estimate counts the real tensors."""
    from lmforge.model.moe import MoEConfig
    from lmforge.optim import OptimConfig

    moe = MoEConfig(n_routed_experts=4, top_k=2, n_shared_experts=1, expert_dtype="bfloat16")
    cfg = ModelConfig(vocab_size=96, context_length=8, d_model=16, n_layers=2, n_heads=4,
                      moe=moe, mtp_depth=mtp_depth)  # fmt: skip
    model, opt = _trained_one_step(cfg, OptimConfig())
    low = [p for p in model.parameters() if p.dtype == torch.bfloat16]
    assert len(low) == 2 * (cfg.n_layers + mtp_depth)  # w13 and w2 of each block's experts
    params = list(model.parameters())
    est = estimate_training_memory(cfg, 2, 8)
    assert est.parameters == sum(p.numel() * p.element_size() for p in params)
    assert est.gradients == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert est.optimizer_state == _state_bytes(opt)
    assert est.by_dtype("parameters")["bf16"] == 2 * sum(p.numel() for p in low)


def test_pure_bf16_adamw_keeps_float32_masters_and_moments() -> None:
    n = count_params(TINY).total
    est = estimate_training_memory(TINY, B, T, param_dtype="bf16", compute_dtype="bf16")
    assert est.optimizer_state == 12 * n
    with pytest.raises(ValueError, match="master weights"):  # as lmforge.optim.SGD refuses
        estimate_training_memory(TINY, B, T, param_dtype="bf16", compute_dtype="bf16",
                                 optimizer="sgd")  # fmt: skip


def test_bf16_moments_state_matches_real_tensors() -> None:
    """``moment_dtype``: AdamW's moments in bf16 (2 bytes each), also beside bf16 experts'
    float32 masters."""
    from lmforge.model.moe import MoEConfig
    from lmforge.optim import OptimConfig

    moe = MoEConfig(n_routed_experts=4, top_k=2, expert_dtype="bfloat16")
    for cfg in (TINY, dataclasses.replace(TINY, moe=moe)):
        _, opt = _trained_one_step(cfg, OptimConfig(moment_dtype="bfloat16"))
        est = estimate_training_memory(cfg, 2, 8, moment_dtype="bf16")
        assert est.optimizer_state == _state_bytes(opt)
    with pytest.raises(ValueError, match="moment_dtype"):
        estimate_training_memory(TINY, 2, 8, optimizer="muon", moment_dtype="bf16")
