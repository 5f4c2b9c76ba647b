"""ModelConfig: defaults, validation errors, serialisation.

(Named ``test_model_config.py``: ``tests/train/test_config.py`` exists and pytest's default
import mode needs unique test-module basenames.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from model_testing import TINY

from lmforge.model.config import ModelConfig, default_d_ff, pad_vocab_size


def test_defaults() -> None:
    cfg = ModelConfig(**TINY)
    assert cfg.n_kv_heads == cfg.n_heads and cfg.d_ff == default_d_ff(32) == 128
    assert cfg.head_dim == 8
    assert default_d_ff(768) == 2048 and pad_vocab_size(50257) == 50304


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(context_length=-1), "context_length"),
        (dict(d_model=32.0), "d_model"),
        (dict(n_layers=True), "n_layers"),
        (dict(n_heads=0), "n_heads"),
        (dict(n_kv_heads=0), "n_kv_heads"),
        (dict(d_ff=0), "d_ff"),
        (dict(n_heads=5), "divisible by n_heads"),
        (dict(d_model=36, n_heads=4), "even for RoPE"),
        (dict(n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(norm_eps=-1e-5), "norm_eps"),
        (dict(init_std=0), "init_std"),
        (dict(z_loss=-1e-4), "z_loss"),
        (dict(logit_softcap=0.0), "logit_softcap"),
        (dict(eot_id=67), "eot_id"),
        (dict(eot_id=-1), "eot_id"),
    ],
)
def test_validation_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY, **overrides})


def test_pad_vocab_size_rejects_empty() -> None:
    with pytest.raises(ValueError, match="n_vocab"):
        pad_vocab_size(0)


def test_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(**TINY, n_kv_heads=2, qk_norm=True, eot_id=0, document_mask=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not a valid"):
        ModelConfig.load(tmp_path / "broken.json")
