"""validation_batches: fixed consecutive windows, the same on every pass, and their token count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data import TokenFile, validation_batches


def as_lists(batches) -> list[tuple[list, list]]:
    return [(x.tolist(), y.tolist()) for x, y in batches]


def test_consecutive_non_overlapping_windows():
    batches = validation_batches(np.arange(23, dtype=np.uint16), 2, 5, "cpu")
    assert (batches.n_windows, batches.n_target_tokens, len(batches)) == (4, 20, 2)
    got = list(batches)
    assert len(got) == 2
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert x.dtype == torch.int64 and x.shape == (4, 5)
    assert x[:, 0].tolist() == [0, 5, 10, 15] and torch.equal(y, x + 1)


def test_same_windows_every_pass():
    tokens = np.random.default_rng(0).integers(0, 1000, size=500)
    batches = validation_batches(tokens, 3, 7, "cpu")
    assert as_lists(batches) == as_lists(batches)
    assert as_lists(batches) == as_lists(validation_batches(tokens, 3, 7, "cpu"))


def test_every_target_once_and_a_partial_last_batch():
    n, context_length = 6 * 5 + 1, 5  # exactly 6 windows, no tail
    batches = validation_batches(np.arange(n), 4, context_length, "cpu")
    got = list(batches)
    assert [len(x) for x, _ in got] == [4, 2]
    targets = torch.cat([y.flatten() for _, y in got]).tolist()
    assert targets == list(range(1, n)) and batches.n_target_tokens == len(targets)


def test_max_batches():
    tokens = np.arange(1000)
    batches = validation_batches(tokens, 4, 10, "cpu", max_batches=3)
    assert (len(batches), batches.n_windows, batches.n_target_tokens) == (3, 12, 120)
    assert sum(len(x) for x, _ in batches) == 12
    assert validation_batches(tokens, 4, 10, "cpu", max_batches=1000).n_windows == 99
    first = as_lists(validation_batches(tokens, 4, 10, "cpu"))[:3]
    assert as_lists(batches) == first  # the first batches of the full set


def test_real_token_file(encode_tiny):
    tf = TokenFile.open(encode_tiny())
    batches = validation_batches(tf.tokens, 8, 64, "cpu", max_batches=2)
    x, y = next(iter(batches))
    assert x[0].tolist() == tf.tokens[:64].tolist() and y[0].tolist() == tf.tokens[1:65].tolist()
    assert "n_target_tokens=1,024" in repr(batches)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(tokens=np.arange(5), context_length=5), "5 tokens are too few for context_length 5"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(max_batches=0), "max_batches must be a positive integer"),
        (dict(device="tpu"), "unknown device 'tpu'"),
    ],
)
def test_refuses_at_construction(kwargs, message):
    args = {**dict(tokens=np.arange(100), batch_size=2, context_length=4, device="cpu"), **kwargs}
    with pytest.raises(ValueError, match=message):
        validation_batches(**args)
