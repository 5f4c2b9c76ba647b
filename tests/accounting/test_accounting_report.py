"""The shape report, its dict form, and the number formatters."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import lmforge.accounting
from lmforge.accounting import (
    count_params,
    flops_per_token,
    format_bytes,
    format_count,
    format_flops,
    shape_report,
    shape_summary,
)
from lmforge.model.config import ModelConfig

GPT2 = ModelConfig(vocab_size=50304, context_length=1024, d_model=768, n_layers=12, n_heads=12)


def test_summary_numbers() -> None:
    s = shape_summary(GPT2)
    pc = count_params(GPT2)
    assert s["params"] == pc.total and s["non_embedding_params"] == pc.non_embedding
    assert s["aspect_ratio"] == 64.0
    assert s["d_ff_ratio"] == pytest.approx(8 / 3)
    assert s["head_dim"] == 64
    assert s["estimate_12ld2"] == s["blocks_matmul_params"] == 12 * 12 * 768**2
    assert s["flops_per_token"] == flops_per_token(GPT2)
    json.dumps(s)  # serialisable as is


def test_report_mentions_the_key_numbers() -> None:
    text = shape_report(GPT2)
    assert "162.2M total" in text and "123.6M non-embedding" in text
    assert "12·L·d² = 84.9M" in text and "ratio 1.000" in text
    assert "d_model/n_layers 64.0" in text and "head_dim 64" in text
    assert "855 MFLOP train" in text and "T=1024" in text


def test_report_for_tied_gqa() -> None:
    cfg = ModelConfig(
        vocab_size=1000,
        context_length=64,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        tie_embeddings=True,
    )
    text = shape_report(cfg, seq_len=32)
    assert "tied to the embedding" in text and "(kv 2)" in text and "T=32" in text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (124_000_000, "124.0M"),
        (950, "950"),
        (1_500, "1.5K"),
        (7_000_000_000, "7.0B"),
        (1.2e12, "1.2T"),
        (0, "0"),
    ],
)
def test_format_count(n: float, text: str) -> None:
    assert format_count(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(512, "512 B"), (1536, "1.50 KiB"), (3 * 2**30, "3.00 GiB"), (5 * 2**20, "5.00 MiB")],
)
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


def test_format_flops() -> None:
    assert format_flops(7.3e8) == "730 MFLOP"
    assert format_flops(1.234e15) == "1.23 PFLOP"
    assert format_flops(12) == "12 FLOP"


@pytest.mark.parametrize("fmt", [format_count, format_bytes, format_flops])
def test_formatters_reject_non_numbers(fmt: object) -> None:
    with pytest.raises(ValueError, match="number"):
        fmt("12")  # type: ignore[operator]


def test_accounting_imports_only_the_config() -> None:
    # Pure arithmetic on a ModelConfig: no torch, no model modules, no trainer. (Importing
    # lmforge.model.config still runs lmforge/model/__init__.py, which is that package's call.)
    package = Path(lmforge.accounting.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("torch", "lmforge.train", "numpy")), (source, name)
                if name.startswith("lmforge.model"):
                    assert name == "lmforge.model.config", (source, name)
