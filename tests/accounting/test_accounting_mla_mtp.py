"""Accounting for MLA and MTP: parameter counts against the real model, FLOPs by hand and
against a FLOP counter run on the real model, the report, the attention-cost table."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmforge.accounting import (
    attention_cost,
    attention_cost_table,
    count_params,
    flops_per_token,
    forward_flops_per_token,
    shape_report,
    shape_summary,
)
from lmforge.model import MLAConfig, ModelConfig, Transformer

SMALL = dict(vocab_size=10, context_length=6, d_model=4, n_layers=1, n_heads=2, d_ff=8)
SMALL_MLA = MLAConfig(kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2)


def test_hand_computed_mla_mtp_config() -> None:
    cfg = ModelConfig(**SMALL, attention="mla", mla=SMALL_MLA, mtp_depth=1)  # type: ignore[arg-type]
    # MLA: wq 4·2·4 = 32, wkv_a 4·6 = 24, wkv_b 4·2·4 = 32, wo 2·2·4 = 16 → 104; kv_norm 4.
    # Block: 104 + SwiGLU 3·4·8 = 96 + norms 2·4 + 4 = 12. Main: + final norm 4, head 40.
    pc = count_params(cfg)
    assert (pc.attention, pc.mlp, pc.norms, pc.head) == (104, 96, 16, 40)
    # MTP: three norms 12, proj 2·4·4 = 32, a block 104 + 96 + 12.
    assert pc.mtp == 12 + 32 + 212
    assert pc.flops_params == 104 + 96 + 16 + 40
    assert pc.mtp_flops_params == pc.mtp + 40  # the shared head, once more
    # Attention width h·(d_qk + d_v) = 2·(4 + 2) = 12 over L + D = 2 layers, T = 6.
    assert flops_per_token(cfg) == 6 * (256 + 296) + 6 * 2 * 6 * 12
    assert forward_flops_per_token(cfg) == 2 * 256 + 2 * 1 * 6 * 12  # MTP is off at inference


def test_mha_counts_are_unchanged_by_the_generalisation() -> None:
    cfg = ModelConfig(**SMALL)  # type: ignore[arg-type]
    assert flops_per_token(cfg) == 6 * (160 + 12 + 40) + 12 * 1 * 6 * 4
    assert count_params(cfg).mtp == 0 and count_params(cfg).mtp_flops_params == 0


VARIANTS: dict[str, dict[str, Any]] = {
    "mla_q_latent": dict(attention="mla"),
    "mla_no_q_latent": dict(
        attention="mla",
        mla=dict(
            q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=12
        ),
    ),  # fmt: skip
    "mtp2": dict(mtp_depth=2),
    "mtp1_tied_parallel": dict(mtp_depth=1, tie_embeddings=True, parallel_block=True),
    "mla_mtp3_gqa_off": dict(attention="mla", mtp_depth=3),
}


def _config(name: str) -> ModelConfig:
    base = dict(vocab_size=67, context_length=128, d_model=32, n_layers=2, n_heads=4)
    return ModelConfig(**base, **VARIANTS[name])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_equals_the_model(name: str) -> None:
    cfg = _config(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    pc = count_params(cfg)
    assert pc.total == sum(p.numel() for p in model.parameters())
    mtp = 0 if model.mtp is None else sum(p.numel() for p in model.mtp.parameters())
    assert pc.mtp == mtp


@pytest.mark.parametrize("name", VARIANTS)
def test_flops_match_a_flop_counter_on_the_real_model(name: str) -> None:
    """The training count / 3 against the matmul FLOPs ``FlopCounterMode`` sees in one forward
    with targets (MTP on). They differ by what the count approximates: norm gains (in N, not
    matmuls) and depth k running on T − k positions instead of T — under 2% here (0.4% without
    MTP)."""
    cfg, seq = _config(name), 128
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, seq + 1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:, :-1], x[:, 1:], return_logits=False)
    measured = counter.get_total_flops() / (2 * seq)
    expected = flops_per_token(cfg, seq) / 3
    assert measured < expected  # both approximations count a little more than runs
    assert measured / expected > (0.98 if cfg.mtp_depth else 0.995), (measured, expected)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:, :-1])  # inference: MTP does not run
    inference = counter.get_total_flops() / (2 * seq)
    assert 0.99 < inference / forward_flops_per_token(cfg, seq) <= 1.0


def test_attention_cost_uses_the_config_mla() -> None:
    cfg = _config("mla_no_q_latent")
    c = attention_cost(cfg, batch=1, seq=1, dtype="bf16")
    assert c.kind == "mla" and c.kv_bytes_per_token == 2 * 2 * (16 + 6)
    assert attention_cost(cfg, batch=1, seq=1, kind="mha").kv_bytes_per_token == 2 * 2 * 2 * 32
    table = attention_cost_table(cfg, 1, 64)
    assert "latent 22" in table  # the config's 16 + 6, not DeepSeek-V2's default ratios


def test_report_shows_mla_and_mtp() -> None:
    cfg = _config("mla_mtp3_gqa_off")
    text = shape_report(cfg)
    assert "MLA: q_lora_rank 9, kv_lora_rank 32" in text and "cache 36 per token" in text
    assert "MTP: 3 module(s)" in text
    s = shape_summary(cfg)
    assert s["attention"] == "mla" and s["mtp_depth"] == 3
    assert s["mtp_params"] == count_params(cfg).mtp > 0
    assert "MLA" not in shape_report(_config("mtp2"))
