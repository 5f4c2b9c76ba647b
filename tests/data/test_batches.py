"""get_batch and batch_from_starts: window contents, uniform starts, devices, and refusals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data import (
    TokenFile,
    WindowSampler,
    batch_from_starts,
    get_batch,
    open_training_file,
    resolve_device,
)
from lmforge.data.batches import count_starts


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_shapes_dtype_and_shift():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 8, 16, "cpu", generator=rng())
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)  # tokens are arange: the next token is id + 1
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))  # consecutive windows


def test_seeded_generator_is_deterministic():
    tokens = np.arange(500, dtype=np.uint32)
    a = get_batch(tokens, 4, 8, "cpu", generator=rng(1))
    b = get_batch(tokens, 4, 8, "cpu", generator=rng(1))
    c = get_batch(tokens, 4, 8, "cpu", generator=rng(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_valid_start_is_drawn_uniformly():
    n, context_length, draws = 12, 4, 8000  # valid starts 0..7: the last leaves one target
    x, y = get_batch(np.arange(n), draws, context_length, "cpu", generator=rng())
    counts = Counter(x[:, 0].tolist())
    assert sorted(counts) == list(range(n - context_length))
    assert all(800 <= c <= 1200 for c in counts.values())  # 1000 expected; ~6.8 sigma band
    assert int(y.max()) == n - 1  # the last token is a target


def test_exactly_one_window():
    x, y = get_batch(np.array([5, 6, 7]), 3, 2, "cpu")
    assert x.tolist() == [[5, 6]] * 3 and y.tolist() == [[6, 7]] * 3


def test_memmap_of_a_real_token_file(encode_tiny, tiny_tokenizer):
    tf = TokenFile.open(encode_tiny())
    assert isinstance(tf.tokens, np.memmap) and tf.tokens.dtype == np.uint16
    starts = np.array([0, 17, len(tf) - 33])
    x, y = batch_from_starts(tf.tokens, starts, 32, "cpu")
    for b, s in enumerate(starts):
        assert x[b].tolist() == tf.tokens[s : s + 32].tolist()
        assert y[b].tolist() == tf.tokens[s + 1 : s + 33].tolist()
    x, _ = get_batch(tf.tokens, 16, 32, "cpu", generator=rng())
    assert int(x.max()) < tiny_tokenizer.n_vocab


def test_cpu_tensor_tokens():
    tokens = np.arange(100, dtype=np.uint16)
    for t in (torch.from_numpy(tokens), torch.arange(100)):
        x, y = get_batch(t, 2, 5, "cpu", generator=rng())
        assert torch.equal(y, x + 1) and x.dtype == torch.int64


def test_get_batch_is_batch_from_starts_of_the_same_draws():
    tokens = np.arange(300) * 7
    x, y = get_batch(tokens, 6, 10, "cpu", generator=rng(3))
    starts = rng(3).integers(0, count_starts(300, 10), size=6, dtype=np.int64)
    x2, y2 = batch_from_starts(tokens, starts, 10, "cpu")
    assert torch.equal(x, x2) and torch.equal(y, y2)


@given(
    n=st.integers(2, 200),
    data=st.data(),
)
def test_batch_from_starts_windows(n, data):
    tokens = np.random.default_rng(n).integers(0, 50_000, size=n).astype(np.uint16)
    context_length = data.draw(st.integers(1, n - 1))
    starts = data.draw(st.lists(st.integers(0, n - context_length - 1), min_size=1, max_size=8))
    x, y = batch_from_starts(tokens, np.array(starts), context_length, "cpu")
    expect = np.stack([tokens[s : s + context_length + 1] for s in starts]).astype(np.int64)
    assert x.numpy().tolist() == expect[:, :-1].tolist()
    assert y.numpy().tolist() == expect[:, 1:].tolist()


def test_sampler_to_batches_on_a_real_file(encode_tiny, tiny_tokenizer):
    tf = open_training_file(encode_tiny(), vocab_size=320, fingerprint=tiny_tokenizer.fingerprint)
    sampler = WindowSampler(len(tf), 64, global_batch=8, seed=0, grad_accum=2)
    micro = [batch_from_starts(tf.tokens, s, 64, "cpu") for s in sampler.next_step()]
    assert [tuple(x.shape) for x, _ in micro] == [(4, 64), (4, 64)]


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "unknown device 'tpu'"),
        ("banana", "unknown device 'banana'"),
        ("meta", "device type 'meta' is not supported"),
        pytest.param(
            "cuda",
            "needs CUDA, but no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"),
        ),
        pytest.param(
            "cuda:7",
            "cuda:7",
            marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="has 8 GPUs"),
        ),
    ],
)
def test_bad_device(device, message):
    tokens = np.arange(100)
    with pytest.raises(ValueError, match=message):
        get_batch(tokens, 2, 4, device)
    with pytest.raises(ValueError, match=message):
        batch_from_starts(tokens, np.array([0]), 4, device)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("tokens", "batch_size", "context_length", "message"),
    [
        (np.arange(8), 2, 8, "8 tokens are too few for context_length 8: a window needs"),
        (np.arange(0), 2, 1, "0 tokens are too few"),
        (np.arange(8), 0, 2, "batch_size must be a positive integer"),
        (np.arange(8), True, 2, "batch_size must be a positive integer"),
        (np.arange(8), 2, 0, "context_length must be a positive integer"),
        (np.arange(8.0), 2, 2, "integer ids, got dtype float64"),
        (np.zeros((2, 8), dtype=np.int64), 2, 2, "1-D array of ids, got shape \\(2, 8\\)"),
        (torch.zeros(8, dtype=torch.long, device="meta"), 2, 2, "tokens must be on the CPU"),
    ],
)
def test_get_batch_refuses(tokens, batch_size, context_length, message):
    with pytest.raises(ValueError, match=message):
        get_batch(tokens, batch_size, context_length, "cpu")


def test_generator_must_be_numpy():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        get_batch(np.arange(10), 2, 2, "cpu", generator=torch.Generator())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("starts", "message"),
    [
        ([0, 6], "start 6 is out of range: .* between 0 and 5"),
        ([-1, 0], "start -1 is out of range"),
        ([], "non-empty 1-D integer array"),
        ([[0, 1]], "non-empty 1-D integer array"),
        ([0.0], "non-empty 1-D integer array"),
    ],
)
def test_batch_from_starts_refuses(starts, message):
    with pytest.raises(ValueError, match=message):
        batch_from_starts(np.arange(10), np.array(starts), 4, "cpu")


@pytest.mark.gpu
def test_cuda_batches_match_cpu():
    tokens = np.arange(10_000, dtype=np.uint16)
    x, y = get_batch(tokens, 8, 64, "cuda", generator=rng())
    cx, cy = get_batch(tokens, 8, 64, "cpu", generator=rng())
    assert x.device.type == "cuda" and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)
    x, _ = batch_from_starts(tokens, np.array([3]), 4, "cuda:0")
    assert x.device == torch.device("cuda:0") and x.tolist() == [[3, 4, 5, 6]]


@pytest.mark.gpu
def test_pinned_ring_reuse_keeps_every_batch():
    """More batches than buffers, queued behind slow GPU work: each arrives intact."""
    from lmforge.data.batches import PinnedRing

    ring = PinnedRing(slots=2)
    busy = torch.randn(4096, 4096, device="cuda")
    outs = []
    for i in range(7):
        busy = busy @ busy / 64  # keeps the stream busy, so the copies queue up
        outs.append(ring.copy(np.full((3, 5), i, dtype=np.int64), torch.device("cuda")))
    assert [int(o.float().mean()) for o in outs] == list(range(7))
    assert [o.sum().item() for o in outs] == [15 * i for i in range(7)]
