"""``moe.expert_dtype = "bfloat16"``: experts stored in bfloat16 train to the same numbers as
float32 experts under bfloat16 autocast (AdamW's masters standing in for the float32 weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.model import Transformer
from lmforge.model.config import ModelConfig
from lmforge.model.moe import MoEConfig
from lmforge.optim import OptimConfig, build_optimizer

MOE = MoEConfig(n_routed_experts=4, top_k=2, n_shared_experts=1, expert_d_ff=24)
CFG = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, moe=MOE)


def _model(expert_dtype: str) -> Transformer:
    moe = dataclasses.replace(MOE, expert_dtype=expert_dtype)
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(CFG, moe=moe))


def test_bf16_experts_start_as_the_rounded_float32_init() -> None:
    wide, narrow = _model("float32"), _model("bfloat16")
    for (name, a), (_, b) in zip(wide.named_parameters(), narrow.named_parameters(), strict=True):
        if ".experts." in name:
            assert b.dtype == torch.bfloat16
            assert torch.equal(b, a.to(torch.bfloat16)), name
        else:
            assert b.dtype == torch.float32 and torch.equal(a, b), name


def test_bf16_experts_train_like_float32_experts_under_autocast() -> None:
    """Same losses, and masters equal to the float32 run's weights, step after step, once
    the float32 run starts from the same (rounded) expert weights."""
    runs = []
    for expert_dtype in ("float32", "bfloat16"):
        model = _model(expert_dtype)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 3:  # the stacked experts
                    p.copy_(p.to(torch.bfloat16))
        kinds = model.param_kinds()
        labelled = [(p, kinds[n]) for n, p in model.named_parameters()]
        opt = build_optimizer(labelled, OptimConfig(name="adamw", lr=1e-2))
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(4):
            idx = torch.randint(0, CFG.vocab_size, (2, CFG.context_length), generator=gen)
            with torch.autocast("cpu", torch.bfloat16):
                out = model(idx, torch.roll(idx, -1, 1))
            out.loss.backward()
            opt.step()  # (no clipping: its norm sums the two runs' buckets in other orders)
            opt.zero_grad(set_to_none=True)
            model.after_optimizer_step()
            losses.append(out.loss.item())
        runs.append((model, opt, losses))
    (wide, _, wide_losses), (narrow, opt, narrow_losses) = runs
    assert narrow_losses == wide_losses
    for (name, a), b in zip(wide.named_parameters(), narrow.parameters(), strict=True):
        weight = opt.state[b]["master"] if b.dtype == torch.bfloat16 else b
        assert torch.equal(weight, a), name


def test_expert_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="expert_dtype"):
        MoEConfig(n_routed_experts=4, expert_dtype="float16")
