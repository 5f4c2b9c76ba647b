"""WindowSampler: one seeded global stream, split across ranks and micro-batches, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data import WindowSampler

N, T = 10_000, 32


def steps(sampler: WindowSampler, k: int) -> list[list[list[int]]]:
    return [[m.tolist() for m in sampler.next_step()] for _ in range(k)]


def flat(step: list[np.ndarray]) -> list[int]:
    return np.concatenate(step).tolist()


def test_determinism_by_seed():
    a = steps(WindowSampler(N, T, 16, seed=7), 3)
    assert a == steps(WindowSampler(N, T, 16, seed=7), 3)
    assert a != steps(WindowSampler(N, T, 16, seed=8), 3)
    assert a[0] != a[1]  # a new draw every step


def test_starts_are_valid_and_cover_the_file():
    sampler = WindowSampler(12, 4, global_batch=64, seed=0)  # valid starts 0..7
    seen = set()
    for _ in range(20):
        (starts,) = sampler.next_step()
        assert starts.dtype == np.int64 and starts.shape == (64,)
        seen.update(starts.tolist())
    assert seen == set(range(8))


def test_micro_batch_shapes():
    sampler = WindowSampler(N, T, 24, seed=0, rank=1, world_size=2, grad_accum=3)
    micro = sampler.next_step()
    assert sampler.micro_batch == 4 and [m.shape for m in micro] == [(4,)] * 3


def test_resume_matches_an_uninterrupted_run():
    whole = WindowSampler(N, T, 8, seed=3, grad_accum=2)
    expected = steps(whole, 8)[5:]
    first = WindowSampler(N, T, 8, seed=3, grad_accum=2)
    steps(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    assert state["step"] == 5
    resumed = WindowSampler(N, T, 8, seed=3, grad_accum=2)
    resumed.load_state_dict(state)
    assert resumed.step == 5 and steps(resumed, 3) == expected


def test_resume_on_more_ranks():
    one = WindowSampler(N, T, 8, seed=3)
    steps(one, 4)
    state = one.state_dict()
    expected = flat(one.next_step())
    union = []
    for rank in range(4):
        sampler = WindowSampler(N, T, 8, seed=3, rank=rank, world_size=4)
        sampler.load_state_dict(state)
        union += flat(sampler.next_step())
    assert union == expected


@given(
    world_size=st.integers(1, 4),
    grad_accum=st.integers(1, 4),
    per_micro=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_ranks_and_micro_batches_partition_the_global_batch(
    world_size, grad_accum, per_micro, seed
):
    global_batch = world_size * grad_accum * per_micro
    reference = WindowSampler(N, T, global_batch, seed)
    ranks = [
        WindowSampler(
            N, T, global_batch, seed, rank=r, world_size=world_size, grad_accum=grad_accum
        )
        for r in range(world_size)
    ]
    for _ in range(2):
        expected = flat(reference.next_step())
        union = []
        for sampler in ranks:
            micro = sampler.next_step()
            assert len(micro) == grad_accum and all(len(m) == per_micro for m in micro)
            union += flat(micro)
        assert union == expected


def test_rank_starts_does_not_advance():
    sampler = WindowSampler(N, T, 4, seed=0)
    peek = [m.tolist() for m in sampler.rank_starts(0)]
    assert sampler.step == 0 and steps(sampler, 1) == [peek]
    assert sampler.global_starts(0).tolist() == peek[0]


def test_epoch_accounting():
    sampler = WindowSampler(1000, 10, 4, seed=0, rank=1, world_size=2, grad_accum=2)
    assert sampler.epoch == 0.0 and sampler.tokens_seen == 0
    steps(sampler, 10)
    assert sampler.tokens_seen == 10 * 4 * 10  # all ranks, not only this one
    assert sampler.epoch == pytest.approx(0.4)
    steps(sampler, 15)
    assert sampler.epoch == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(global_batch=10, world_size=4), "global_batch 10 is not divisible by world_size 4"),
        (dict(global_batch=12, world_size=2, grad_accum=4), "x grad_accum 4 = 8"),
        (dict(rank=2, world_size=2), "rank 2 must be below world_size 2"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(global_batch=0), "global_batch must be"),
        (dict(grad_accum=0), "grad_accum must be"),
        (dict(n_tokens=32), "32 tokens are too few for context_length 32"),
        (dict(context_length=0), "context_length must be"),
    ],
)
def test_constructor_refuses(kwargs, message):
    args = {**dict(n_tokens=N, context_length=T, global_batch=8, seed=0), **kwargs}
    with pytest.raises(ValueError, match=message):
        WindowSampler(**args)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (dict(seed=1), "different data stream: seed 1 \\(saved\\) vs 0 \\(this sampler\\)"),
        (dict(n_tokens=5000, global_batch=16), "n_tokens 5000 .*; global_batch 16"),
        (dict(context_length=64), "context_length 64"),
        (dict(version=2), "not a WindowSampler state of version 1"),
        (dict(step=-1), "the saved step must be an integer >= 0"),
    ],
)
def test_load_state_dict_refuses(edit, message):
    sampler = WindowSampler(N, T, 8, seed=0)
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict({**sampler.state_dict(), **edit})
    assert sampler.step == 0


def test_load_state_dict_refuses_malformed():
    sampler = WindowSampler(N, T, 8, seed=0)
    state = sampler.state_dict()
    del state["step"]
    with pytest.raises(ValueError, match="missing \\['step'\\]"):
        sampler.load_state_dict(state)
    with pytest.raises(ValueError, match="got a list"):
        sampler.load_state_dict([])  # type: ignore[arg-type]


def test_repr():
    assert "global_batch=8" in repr(WindowSampler(N, T, 8, seed=0)) and "step=0" in repr(
        WindowSampler(N, T, 8, seed=0)
    )
