"""Mixture sampling: weights from sizes and alpha, a seeded resumable sampler, mixed batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data import (
    MixtureSampler,
    MixtureStarts,
    WindowSampler,
    gather_mixture_batch,
    mixture_weights,
)

SIZES, T = [2_000, 50_000, 400_000], 16


def steps(sampler: MixtureSampler, k: int) -> list[list[tuple[list[int], list[int]]]]:
    return [
        [(m.sources.tolist(), m.starts.tolist()) for m in sampler.next_step()] for _ in range(k)
    ]


def flat(step: list[MixtureStarts]) -> tuple[list[int], list[int]]:
    return (
        np.concatenate([m.sources for m in step]).tolist(),
        np.concatenate([m.starts for m in step]).tolist(),
    )


# --- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "alpha", "expected"),
    [
        ([100, 400], 0.5, [1 / 3, 2 / 3]),  # sqrt: 10 and 20
        ([1, 8, 27], 1 / 3, [1 / 6, 2 / 6, 3 / 6]),  # cube roots: 1, 2, 3
        ([1_000, 3_000], 1.0, [0.25, 0.75]),  # alpha 1: proportional to size
        ([1_000, 3_000], None, [0.25, 0.75]),  # the default is alpha 1
        ([10, 10**9, 7], 0.0, [1 / 3] * 3),  # alpha 0: uniform
        ([100, 10_000], 2.0, [1 / 10_001, 10_000 / 10_001]),  # alpha > 1 sharpens
    ],
)
def test_weights_from_sizes_and_alpha(sizes, alpha, expected):
    w = mixture_weights(sizes, alpha=alpha)
    assert w.dtype == np.float64 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, expected, rtol=1e-12)


def test_small_alpha_is_nearly_uniform_and_large_alpha_does_not_overflow():
    w = mixture_weights([10, 10**9], alpha=1e-4)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-3)
    assert w[0] < w[1]  # still ordered by size
    w = mixture_weights([1e12, 2e12], alpha=2000.0)  # 1e12^2000 overflows float64 directly
    assert np.all(np.isfinite(w)) and w[1] == pytest.approx(1.0)


def test_alpha_up_samples_the_small_source():
    sizes = [1_000, 99_000]
    proportional = mixture_weights(sizes, alpha=1.0)[0]
    assert mixture_weights(sizes, alpha=0.3)[0] > 5 * proportional == pytest.approx(0.05)


def test_explicit_weights_are_normalised_and_may_be_zero():
    np.testing.assert_allclose(mixture_weights([5, 7], weights=[1, 3]), [0.25, 0.75])
    np.testing.assert_allclose(mixture_weights([5, 7, 9], weights=[0, 2, 2]), [0, 0.5, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sizes=[]), "sizes must be a non-empty list of positive numbers"),
        (dict(sizes=[10, 0]), "positive numbers .*got \\[10, 0\\]"),
        (dict(sizes=[10, -3]), "positive numbers"),
        (dict(sizes=[10, float("nan")]), "positive numbers"),
        (dict(alpha=-0.1), "alpha must be finite and >= 0 .*got -0.1"),
        (dict(alpha=float("inf")), "alpha must be finite"),
        (dict(alpha=float("nan")), "alpha must be finite"),
        (dict(alpha="0.3"), "alpha must be finite"),
        (dict(alpha=True), "alpha must be finite"),
        (dict(alpha=0.3, weights=[1, 1]), "alpha \\(0.3\\) or explicit weights .*not both"),
        (dict(weights=[1, 1, 1]), "got 3 mixture weights for 2 sources"),
        (dict(weights=[1, -1]), "finite and >= 0 with a positive sum"),
        (dict(weights=[0, 0]), "positive sum"),
        (dict(weights=[1, float("nan")]), "finite"),
        (dict(weights=["a", "b"]), "must be numbers"),
    ],
)
def test_weights_refuse(kwargs, message):
    args = {"sizes": [100, 200], **kwargs}
    with pytest.raises(ValueError, match=message):
        mixture_weights(**args)


# --- the sampler -----------------------------------------------------------------------------


def test_realised_mixture_matches_the_weights():
    sampler = MixtureSampler(SIZES, T, 64, seed=0, alpha=0.3, grad_accum=2)
    drawn = np.zeros(3, dtype=np.int64)
    for _ in range(300):
        for micro in sampler.next_step():
            drawn += np.bincount(micro.sources, minlength=3)
            assert np.all(micro.starts < np.asarray(SIZES)[micro.sources] - T)
    n, p = drawn.sum(), sampler.weights
    assert n == 300 * 64 and sampler.state_dict()["counts"] == drawn.tolist()
    np.testing.assert_allclose(sampler.realised_mixture(), drawn / n)
    bound = 5 * np.sqrt(p * (1 - p) / n)  # binomial, 5 sigma
    assert np.all(np.abs(sampler.realised_mixture() - p) < bound)
    assert sampler.realised_mixture()[0] > SIZES[0] / sum(SIZES) * 5  # really up-sampled


def test_realised_mixture_before_any_step_and_zero_weights():
    sampler = MixtureSampler([100, 100, 100], 4, 32, seed=1, weights=[1, 0, 0])
    assert sampler.realised_mixture().tolist() == [0.0, 0.0, 0.0]
    steps(sampler, 20)
    assert sampler.realised_mixture().tolist() == [1.0, 0.0, 0.0]
    tail = MixtureSampler([100, 100, 100], 4, 32, seed=1, weights=[0, 1, 0])
    steps(tail, 20)
    assert tail.realised_mixture().tolist() == [0.0, 1.0, 0.0]  # a zero-weight last source too


def test_starts_cover_each_small_source():
    sampler = MixtureSampler([12, 9], 4, global_batch=64, seed=0, weights=[1, 1])  # 8 and 5
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for _ in range(20):
        ((sources, starts),) = sampler.next_step()
        assert sources.dtype == starts.dtype == np.int64 and starts.shape == (64,)
        for s in (0, 1):
            seen[s].update(starts[sources == s].tolist())
    assert seen == {0: set(range(8)), 1: set(range(5))}


def test_determinism_by_seed():
    a = steps(MixtureSampler(SIZES, T, 16, seed=7, alpha=0.5), 3)
    assert a == steps(MixtureSampler(SIZES, T, 16, seed=7, alpha=0.5), 3)
    assert a != steps(MixtureSampler(SIZES, T, 16, seed=8, alpha=0.5), 3)
    assert a[0] != a[1]


def test_one_source_is_the_window_sampler_stream():
    mix, win = MixtureSampler([5_000], T, 8, seed=3, grad_accum=2), WindowSampler(5_000, T, 8, 3)
    for _ in range(4):
        sources, starts = flat(mix.next_step())
        assert sources == [0] * 8 and starts == np.concatenate(win.next_step()).tolist()
    assert mix.realised_mixture().tolist() == [1.0] and mix.epoch == win.epoch


def test_resume_matches_an_uninterrupted_run():
    whole = MixtureSampler(SIZES, T, 8, seed=3, alpha=0.3, grad_accum=2)
    expected = steps(whole, 8)[5:]
    first = MixtureSampler(SIZES, T, 8, seed=3, alpha=0.3, grad_accum=2)
    steps(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = MixtureSampler(SIZES, T, 8, seed=3, alpha=0.3, grad_accum=2)
    resumed.load_state_dict(state)
    assert resumed.step == 5 and resumed.state_dict()["counts"] == state["counts"]
    np.testing.assert_array_equal(resumed.realised_mixture(), first.realised_mixture())
    assert steps(resumed, 3) == expected
    assert resumed.state_dict() == whole.state_dict()


def test_resume_on_more_ranks():
    one = MixtureSampler(SIZES, T, 8, seed=3, alpha=0.5)
    steps(one, 4)
    state = one.state_dict()
    expected = flat(one.next_step())
    union: tuple[list[int], list[int]] = ([], [])
    for rank in range(4):
        sampler = MixtureSampler(SIZES, T, 8, seed=3, alpha=0.5, rank=rank, world_size=4)
        sampler.load_state_dict(state)
        sources, starts = flat(sampler.next_step())
        union[0].extend(sources)
        union[1].extend(starts)
        assert sampler.state_dict()["counts"] == one.state_dict()["counts"]  # global counts
    assert union == expected


@settings(max_examples=25, deadline=None)
@given(
    world_size=st.integers(1, 4),
    grad_accum=st.integers(1, 3),
    per_micro=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_ranks_and_micro_batches_partition_the_global_batch(
    world_size, grad_accum, per_micro, seed
):
    global_batch = world_size * grad_accum * per_micro
    reference = MixtureSampler(SIZES, T, global_batch, seed, alpha=0.3)
    split = dict(world_size=world_size, grad_accum=grad_accum)
    ranks = [
        MixtureSampler(SIZES, T, global_batch, seed, alpha=0.3, rank=r, **split)
        for r in range(world_size)
    ]
    for _ in range(2):
        expected = flat(reference.next_step())
        union: tuple[list[int], list[int]] = ([], [])
        for sampler in ranks:
            micro = sampler.next_step()
            assert len(micro) == grad_accum and all(len(m.starts) == per_micro for m in micro)
            union[0].extend(flat(micro)[0])
            union[1].extend(flat(micro)[1])
        assert union == expected


def test_rank_starts_does_not_advance_or_count():
    sampler = MixtureSampler(SIZES, T, 4, seed=0)
    peek = [(m.sources.tolist(), m.starts.tolist()) for m in sampler.rank_starts(0)]
    assert sampler.step == 0 and sampler.state_dict()["counts"] == [0, 0, 0]
    assert steps(sampler, 1) == [peek]


def test_epoch_accounting():
    sampler = MixtureSampler([600, 400], 10, 4, seed=0, weights=[1, 0], world_size=2, rank=1)
    assert sampler.epoch == 0.0 and sampler.tokens_seen == 0
    steps(sampler, 10)
    assert sampler.tokens_seen == 10 * 4 * 10  # all ranks, not only this one
    assert sampler.epoch == pytest.approx(0.4) and sampler.n_tokens == 1_000
    np.testing.assert_allclose(sampler.source_epochs, [400 / 600, 0.0])


def test_window_sampler_state_resumes_a_one_source_mixture():
    win = WindowSampler(5_000, T, 8, seed=3)
    for _ in range(6):
        win.next_step()
    state = json.loads(json.dumps(win.state_dict()))
    mix = MixtureSampler([5_000], T, 8, seed=3)
    mix.load_state_dict(state)
    assert mix.step == 6 and mix.state_dict()["counts"] == [48]
    assert flat(mix.next_step())[1] == np.concatenate(win.next_step()).tolist()
    with pytest.raises(ValueError, match="one-file WindowSampler's, but this mixture has 2"):
        MixtureSampler([2_000, 3_000], T, 8, seed=3).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sizes=[1_000, 16]), "source 1 \\(of 16 tokens\\): 16 tokens are too few"),
        (dict(sizes=[1_000, 0]), "the size of source 1 must be an integer >= 1, got 0"),
        (dict(sizes=[]), "sizes must be a non-empty list"),
        (dict(global_batch=10, world_size=4), "global_batch 10 is not divisible by world_size 4"),
        (dict(rank=2, world_size=2), "rank 2 must be below world_size 2"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(context_length=0), "context_length must be"),
        (dict(alpha=-1.0), "alpha must be finite and >= 0"),
        (dict(weights=[1.0]), "got 1 mixture weights for 2 sources"),
    ],
)
def test_constructor_refuses(kwargs, message):
    args = {**dict(sizes=[1_000, 2_000], context_length=T, global_batch=8, seed=0), **kwargs}
    with pytest.raises(ValueError, match=message):
        MixtureSampler(**args)


@pytest.mark.parametrize(
    ("other", "edit", "message"),
    [
        (dict(seed=1), {}, "different data stream: seed 0 \\(saved\\) vs 1"),
        (dict(sizes=[2_000, 1_000]), {}, "different mixture: sizes \\[1000, 2000\\]"),
        (dict(alpha=0.5), {}, "different mixture: .*weights"),
        ({}, dict(counts=[3, 4]), "counts \\[3, 4\\] are not 2 non-negative integers summing"),
        ({}, dict(counts=[-1, 9]), "non-negative integers"),
        ({}, dict(counts=[8]), "not 2 non-negative"),
        ({}, dict(kind="other"), "not a MixtureSampler state"),
        ({}, dict(version=2), "not a WindowSampler state of version 1"),
    ],
)
def test_load_state_dict_refuses(other, edit, message):
    saved = MixtureSampler([1_000, 2_000], T, 8, seed=0)
    steps(saved, 1)
    kwargs = {"sizes": [1_000, 2_000], "context_length": T, "global_batch": 8, "seed": 0, **other}
    sampler = MixtureSampler(**kwargs)
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict({**saved.state_dict(), **edit})
    assert sampler.step == 0 and sampler.state_dict()["counts"] == [0, 0]


def test_repr():
    text = repr(MixtureSampler([1_000, 3_000], T, 8, seed=0))
    assert "weights=[0.250, 0.750]" in text and "step=0" in text


# --- gathering -------------------------------------------------------------------------------


def _sources(tmp_path):
    a = np.arange(100, dtype=np.uint16)
    b = np.arange(1_000, 1_050, dtype=np.uint32)
    c = np.memmap(tmp_path / "c.bin", dtype=np.uint16, mode="w+", shape=(40,))
    c[:] = np.arange(5_000, 5_040)
    c.flush()
    return [a, torch.from_numpy(b), np.memmap(tmp_path / "c.bin", dtype=np.uint16, mode="r")]


def test_gather_takes_each_window_from_its_source(tmp_path):
    arrays = _sources(tmp_path)
    sources = np.array([2, 0, 1, 0, 2, 1])
    starts = np.array([31, 0, 41, 91, 3, 7])
    x, y = gather_mixture_batch(arrays, sources, starts, 8, "cpu")
    assert x.shape == y.shape == (6, 8) and x.dtype == y.dtype == torch.int64
    for b, (s, t) in enumerate(zip(sources, starts, strict=True)):
        window = np.asarray(arrays[s][t : t + 9], dtype=np.int64)
        assert x[b].tolist() == window[:-1].tolist() and y[b].tolist() == window[1:].tolist()


def test_gather_from_sampler_micro_batches(tmp_path):
    arrays = _sources(tmp_path)
    sampler = MixtureSampler([len(a) for a in arrays], 8, 12, seed=0, weights=[1, 1, 1])
    for sources, starts in sampler.next_step():
        x, y = gather_mixture_batch(arrays, sources, starts, 8, "cpu")
        assert torch.equal(x[:, 1:], y[:, :-1])
        first = np.array([0, 1_000, 5_000])[sources] + starts
        assert x[:, 0].tolist() == first.tolist()


@pytest.mark.parametrize(
    ("sources", "starts", "message"),
    [
        ([0, 3], [0, 0], "source index 3 is out of range for 3 token arrays"),
        ([0, -1], [0, 0], "source index -1 is out of range"),
        ([1, 1], [0, 42], "start 42 is out of range for source 1 of 50 tokens: .* 0 to 41"),
        ([0, 2], [-1, 0], "start -1 is out of range for source 0"),
        ([0, 1], [0], "differ in length: 2 vs 1"),
        ([], [], "sources must be a non-empty 1-D integer array"),
        ([0.0], [0], "sources must be a non-empty 1-D integer array"),
        ([0], [[0]], "starts must be a non-empty 1-D integer array"),
    ],
)
def test_gather_refuses(tmp_path, sources, starts, message):
    with pytest.raises(ValueError, match=message):
        gather_mixture_batch(_sources(tmp_path), np.array(sources), np.array(starts), 8, "cpu")


def test_gather_refuses_a_short_source_and_no_sources():
    with pytest.raises(ValueError, match="source 1 \\(of 5 tokens\\): 5 tokens are too few"):
        gather_mixture_batch([np.arange(50), np.arange(5)], [0, 1], [0, 0], 8, "cpu")
    with pytest.raises(ValueError, match="source index 0 is out of range for 0 token arrays"):
        gather_mixture_batch([], [0], [0], 8, "cpu")
