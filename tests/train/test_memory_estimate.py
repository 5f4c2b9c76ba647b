"""The memory model as a run uses it: ``run_memory_estimate`` for a run config, and the warning a
CUDA run logs at its start when the predicted peak exceeds what its GPU has."""

from __future__ import annotations

from lmforge.accounting import format_bytes
from lmforge.train.config import load_run_config
from lmforge.train.runtime import oom_message, over_memory_message, run_memory_estimate


def test_a_run_that_cannot_fit_is_warned_about_before_it_starts():
    config = load_run_config("gpt2-124M", ["train.train_data=unused"])
    est = run_memory_estimate(config)
    assert over_memory_message(est, est.total) is None
    message = over_memory_message(est, est.total - 1)
    assert message is not None and "Lower train.batch_size" in message
    assert f"peak of {format_bytes(est.total)}" in message
    assert f"estimated peak {format_bytes(est.total)}" in oom_message(config)


def test_the_estimate_follows_the_run_config():
    def peak(*sets: str) -> int:
        config = load_run_config("gpt2-124M", ["train.train_data=unused", *sets])
        return run_memory_estimate(config).total

    base = peak()  # train.param_dtype = "auto": bf16 weights, as one CUDA process stores them
    assert peak('train.param_dtype="bfloat16"') == base
    assert peak('train.param_dtype="float32"') > base
    assert peak("train.batch_size=8") < base
    assert peak('optim.moment_dtype="bfloat16"') < base
    assert peak("model.activation_checkpointing=true") < base
    # "auto" keeps float32 weights for SGD (no masters), which holds one state a weight, not two
    assert peak('optim.name="sgd"') < peak('train.param_dtype="float32"')
