"""FLOPs per token, MFU and the peak-FLOP/s table."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lmforge.accounting import flops_per_token, forward_flops_per_token, mfu, peak_flops
from lmforge.model.config import ModelConfig

GPT2 = ModelConfig(
    vocab_size=50304, context_length=1024, d_model=768, n_layers=12, n_heads=12, d_ff=2048
)


class _BaselineBlock(nn.Module):
    """The block of the anchor ``gpt_baseline.py``: fused qkv and w13, same parameter count."""

    def __init__(self, d: int) -> None:
        super().__init__()
        hid = int(8 * d / 3 / 64 + 0.999) * 64
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.w13, self.w2 = nn.Linear(d, 2 * hid, bias=False), nn.Linear(hid, d, bias=False)


def _baseline_flops_per_token(vocab: int, d: int, layers: int, seq: int) -> int:
    """``gpt_baseline.py``'s formula, on its own model: 6·(params - embedding) + 12·L·T·d."""
    with torch.device("meta"):
        emb = nn.Embedding(vocab, d)
        rest = nn.ModuleList([*(_BaselineBlock(d) for _ in range(layers)), nn.RMSNorm(d)])
        head = nn.Linear(d, vocab, bias=False)
    n_params = sum(p.numel() for m in (emb, rest, head) for p in m.parameters())
    n_nonemb = n_params - emb.weight.numel()
    return 6 * n_nonemb + 12 * layers * seq * d


def test_gpt2_124m_equals_the_baseline_formula() -> None:
    expected = _baseline_flops_per_token(50304, 768, 12, 1024)
    assert flops_per_token(GPT2, seq_len=1024) == expected
    assert flops_per_token(GPT2) == expected  # seq_len defaults to context_length


def test_hand_computed_small_config() -> None:
    # V=10, d=4, L=1, h=2, f=8, untied: blocks 4·16 + 3·32 = 160, norms 3·4 = 12, head 40.
    cfg = ModelConfig(vocab_size=10, context_length=6, d_model=4, n_layers=1, n_heads=2, d_ff=8)
    n = 160 + 12 + 40
    assert flops_per_token(cfg) == 6 * n + 12 * 1 * 6 * 4
    assert flops_per_token(cfg, seq_len=3) == 6 * n + 12 * 1 * 3 * 4
    assert forward_flops_per_token(cfg) == 2 * n + 4 * 1 * 6 * 4


def test_tied_head_is_still_multiplied() -> None:
    kw = dict(vocab_size=10, context_length=6, d_model=4, n_layers=1, n_heads=2, d_ff=8)
    untied = ModelConfig(**kw)  # type: ignore[arg-type]
    tied = ModelConfig(**kw, tie_embeddings=True)  # type: ignore[arg-type]
    assert flops_per_token(tied) == flops_per_token(untied)


def test_forward_is_a_third_of_training() -> None:
    assert 3 * forward_flops_per_token(GPT2) == flops_per_token(GPT2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_seq_len(bad: object) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(GPT2, seq_len=bad)  # type: ignore[arg-type]


def test_mfu() -> None:
    f = flops_per_token(GPT2, 1024)
    assert mfu(1e5, GPT2, 1024, 989e12) == pytest.approx(1e5 * f / 989e12)
    assert mfu(8e5, GPT2, 1024, 989e12, n_devices=8) == pytest.approx(1e5 * f / 989e12)
    assert mfu(1e5, GPT2, 1024, None) is None  # unknown device: the caller prints "MFU n/a"
    with pytest.raises(ValueError, match="peak"):
        mfu(1e5, GPT2, 1024, 0.0)
    with pytest.raises(ValueError, match="n_devices"):
        mfu(1e5, GPT2, 1024, 989e12, n_devices=0)
    with pytest.raises(ValueError, match="tokens_per_s"):
        mfu(-1.0, GPT2, 1024, 989e12)


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 80GB HBM3", "fp32", 67e12),
        ("NVIDIA H100 80GB HBM3", "tf32", 494e12),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "bf16", 835e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA H200 NVL", "bf16", 835e12),
        ("NVIDIA GH200 480GB", "bf16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5e12),
        ("NVIDIA A100-PCIE-40GB", "tf32", 156e12),
        ("NVIDIA A100 80GB PCIe", "fp16", 312e12),
        ("nvidia h100 80gb hbm3", "bf16", 989e12),
    ],
)
def test_peak_table(name: str, dtype: str, expected: float) -> None:
    assert peak_flops(name, dtype) == expected


@pytest.mark.parametrize("name", ["cpu", "", "NVIDIA GeForce RTX 4090", "Apple M2", "Tesla T4"])
def test_unknown_device_has_no_peak(name: str) -> None:
    assert peak_flops(name) is None


def test_fp8_on_a100_is_none_and_unknown_dtype_raises() -> None:
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp8") is None
    with pytest.raises(ValueError, match="unknown dtype"):
        peak_flops("NVIDIA H100 80GB HBM3", "int4")
