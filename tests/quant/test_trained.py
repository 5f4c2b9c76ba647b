"""On a model trained on the stories: held-out perplexity barely moves after quantizing.

``trained_stories`` (``tests/quant/conftest.py``) is a ``TrainedStories``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch

from lmforge.model.generate import generate
from lmforge.quant import load_quantized, quantization_report, quantize, save_quantized
from lmforge.train.evaluate import EvalResult, evaluate

log = logging.getLogger(__name__)

MAX_BATCHES = 16  # 16 x 16 windows of 64 tokens = 16k held-out tokens


def _perplexity(model: torch.nn.Module, trained: Any) -> EvalResult:
    return evaluate(
        model,  # type: ignore[arg-type]
        trained.held_out,
        batch_size=16,
        context_length=64,
        device="cpu",
        max_batches=MAX_BATCHES,
    )


@pytest.fixture(scope="module")
def float_result(trained_stories: Any) -> EvalResult:
    return _perplexity(trained_stories.model, trained_stories)


@pytest.mark.parametrize(
    ("fmt", "head", "max_rise"),
    [("int8", False, 0.02), ("int8", True, 0.02), ("fp8", False, 0.05), ("fp8", True, 0.05)],
)
def test_perplexity_rises_little(
    trained_stories: Any, float_result: EvalResult, fmt: str, head: bool, max_rise: float
) -> None:
    quantized = quantize(copy.deepcopy(trained_stories.model), fmt, include_head=head)
    result = _perplexity(quantized, trained_stories)
    report = quantization_report(trained_stories.model, quantized)
    rise = result.perplexity / float_result.perplexity - 1
    log.warning(
        "%s: perplexity %.4f -> %.4f (%+.3f%%); %s",
        fmt,
        float_result.perplexity,
        result.perplexity,
        100 * rise,
        report.summary().replace("\n", "; "),
    )
    assert float_result.perplexity < 100  # the model did learn something
    assert rise <= max_rise
    assert report.linear_ratio >= 3.5


def test_quantized_model_tells_a_story_after_a_round_trip(trained_stories: Any, tmp_path) -> None:
    model = quantize(copy.deepcopy(trained_stories.model), "int8")
    loaded = load_quantized(save_quantized(model, tmp_path))
    tok = trained_stories.tokenizer
    idx = torch.tensor([tok.encode("Once upon a time")])
    out = generate(loaded, idx, 20, temperature=0)
    assert torch.equal(out, generate(model, idx, 20, temperature=0))
    assert int(out.max()) < loaded.config.vocab_size
    assert tok.decode(out[0].tolist()).startswith("Once upon a time")
