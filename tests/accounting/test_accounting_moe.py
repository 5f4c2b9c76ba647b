"""MoE parameter counts: stored equals the real model, active is what a token multiplies, and
FLOPs per token use the active count."""

from __future__ import annotations

import pytest

from lmforge.accounting import count_params, flops_per_token, shape_report, shape_summary
from lmforge.model import Transformer
from lmforge.model.config import ModelConfig
from lmforge.model.moe import MoEConfig
from lmforge.train.config import load_model_config

BASE = dict(vocab_size=100, context_length=16, d_model=16, n_layers=3, n_heads=2, d_ff=48)
MOES = {
    "token_choice": MoEConfig(n_routed_experts=4, top_k=2),
    "fine_shared_dense_first": MoEConfig(
        n_routed_experts=8, top_k=3, n_shared_experts=1, expert_d_ff=12, first_dense_layers=1
    ),
    "interleaved": MoEConfig(n_routed_experts=4, top_k=1, moe_every=2),
    "expert_choice": MoEConfig(n_routed_experts=4, router="expert_choice", capacity_factor=1.5),
    "hash": MoEConfig(n_routed_experts=4, router="hash", top_k=2),
}


@pytest.mark.parametrize("name", list(MOES))
def test_stored_count_equals_the_model(name: str) -> None:
    cfg = ModelConfig(**BASE, moe=MOES[name])  # type: ignore[arg-type]
    model = Transformer(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())
    router = sum(p.numel() for n, p in model.named_parameters() if ".router." in n)
    assert count_params(cfg).router == router


def test_active_params_by_hand() -> None:
    cfg = ModelConfig(**BASE, moe=MOES["fine_shared_dense_first"])  # type: ignore[arg-type]
    pc = count_params(cfg)
    dense_mlp, expert = 3 * 16 * 48, 3 * 16 * 12
    assert pc.mlp == dense_mlp + 2 * (8 * expert + expert)  # 1 dense layer, 2 MoE layers
    assert pc.mlp_active == dense_mlp + 2 * (3 * expert + expert)
    assert pc.router == 2 * 8 * 16
    assert pc.active == pc.total - 2 * 5 * expert  # five idle routed experts per MoE layer
    ec = count_params(ModelConfig(**BASE, moe=MOES["expert_choice"]))  # type: ignore[arg-type]
    assert ec.mlp_active == 3 * round(1.5 * 2 * 3 * 16 * 48)  # top_k · capacity per token


def test_flops_use_active_params() -> None:
    """stories-moe has stories-17M's active MLP: its FLOPs differ only by the routers."""
    dense, moe = load_model_config("stories-17M"), load_model_config("stories-moe")
    assert count_params(moe).active_mlp == count_params(dense).mlp
    assert count_params(moe).mlp > 3 * count_params(dense).mlp
    assert flops_per_token(moe) - flops_per_token(dense) == 6 * count_params(moe).router
    s = shape_summary(moe)
    assert (s["moe_layers"], s["n_routed_experts"], s["top_k"]) == (3, 16, 3)
    assert "MoE 3 layers x 16 experts (sigmoid top-3, 1 shared" in shape_report(moe)
    assert "MoE" not in shape_report(dense) and "active_params" not in shape_summary(dense)
