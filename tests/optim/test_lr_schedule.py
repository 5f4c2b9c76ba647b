"""Learning-rate schedules: hand-computed values, phase boundaries, and shape invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.optim import constant_lr, cosine_lr, wsd_lr

# CS336 assignment 1's reference: max 1, min 0.1, warm-up 7, cosine until 21, it = 0..24.
CS336_EXPECTED = [
    0.0,
    1 / 7,
    2 / 7,
    3 / 7,
    4 / 7,
    5 / 7,
    6 / 7,
    1.0,
    0.9887175604818206,
    0.9554359905560885,
    0.9018241671106134,
    0.8305704108364301,
    0.7452476826029011,
    0.6501344202803414,
    0.55,
    0.44986557971965857,
    0.3547523173970989,
    0.26942958916356996,
    0.19817583288938662,
    0.14456400944391146,
    0.11128243951817937,
    0.1,
    0.1,
    0.1,
    0.1,
]


def test_cosine_matches_cs336_reference() -> None:
    got = [cosine_lr(it, 1.0, 0.1, 7, 21) for it in range(25)]
    assert got == pytest.approx(CS336_EXPECTED, abs=1e-12)


@pytest.mark.parametrize(
    ("it", "expected"),
    [
        (0, 0.0),
        (5, 0.5),  # half-way through the warm-up
        (10, 1.0),  # it == warmup_iters: the peak
        (35, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))),  # a quarter into the cosine
        (60, 0.55),  # half-way: the mean of max and min
        (110, 0.1),  # it == cosine_cycle_iters: min_lr
        (500, 0.1),
    ],
)
def test_cosine_hand_values(it: int, expected: float) -> None:
    assert cosine_lr(it, 1.0, 0.1, 10, 110) == pytest.approx(expected, abs=1e-12)


def test_cosine_edge_cases() -> None:
    assert cosine_lr(0, 1.0, 0.1, 0, 10) == 1.0  # no warm-up: start at the peak
    assert cosine_lr(5, 1.0, 0.1, 5, 5) == 1.0  # no cosine phase: the peak, then min
    assert cosine_lr(6, 1.0, 0.1, 5, 5) == 0.1
    with pytest.raises(ValueError, match="cosine_cycle_iters"):
        cosine_lr(0, 1.0, 0.1, 10, 5)
    with pytest.raises(ValueError, match="it must be"):
        cosine_lr(-1, 1.0, 0.1, 10, 20)


@pytest.mark.parametrize(
    ("it", "sqrt_expected", "linear_expected"),
    [
        (0, 0.0, 0.0),
        (5, 0.5, 0.5),
        (10, 1.0, 1.0),  # end of warm-up
        (59, 1.0, 1.0),  # stable
        (60, 1.0, 1.0),  # the decay starts at max
        (70, 0.55, 0.775),  # p = 1/4: 0.1 + 0.9 (1 - 1/2); 1 - 0.9 / 4
        (96, 0.1 + 0.9 * (1 - math.sqrt(0.9)), 0.19),  # p = 0.9
        (100, 0.1, 0.1),  # the end of the decay: min
        (1000, 0.1, 0.1),
    ],
)
def test_wsd_hand_values(it: int, sqrt_expected: float, linear_expected: float) -> None:
    assert wsd_lr(it, 1.0, 0.1, 10, 50, 40) == pytest.approx(sqrt_expected, abs=1e-12)
    linear = wsd_lr(it, 1.0, 0.1, 10, 50, 40, shape="linear")
    assert linear == pytest.approx(linear_expected, abs=1e-12)


def test_wsd_edge_cases() -> None:
    assert wsd_lr(3, 1.0, 0.1, 0, 0, 0) == 0.1  # no phases at all: min
    assert wsd_lr(0, 1.0, 0.1, 0, 0, 10) == 1.0  # decay only: starts at max
    with pytest.raises(ValueError, match="shape"):
        wsd_lr(0, 1.0, 0.1, 1, 1, 1, shape="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stable_iters"):
        wsd_lr(0, 1.0, 0.1, 1, -1, 1)


def test_constant() -> None:
    assert [constant_lr(it, 2.0, 4) for it in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert constant_lr(0, 2.0, 0) == 2.0


@given(
    warmup=st.integers(0, 50),
    cycle_extra=st.integers(0, 200),
    max_lr=st.floats(1e-5, 1.0),
    min_fraction=st.floats(0.0, 1.0),
)
def test_cosine_is_bounded_and_non_increasing_after_warmup(
    warmup: int, cycle_extra: int, max_lr: float, min_fraction: float
) -> None:
    min_lr = max_lr * min_fraction
    cycle = warmup + cycle_extra
    values = [cosine_lr(it, max_lr, min_lr, warmup, cycle) for it in range(cycle + 5)]
    after = values[warmup:]
    assert all(0 <= v < max_lr for v in values[:warmup])
    assert all(min_lr - 1e-15 <= v <= max_lr + 1e-15 for v in after)
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:], strict=False))
    assert values[warmup] == pytest.approx(max_lr) and values[cycle + 1] == min_lr


@given(
    warmup=st.integers(0, 30),
    stable=st.integers(0, 30),
    decay=st.integers(1, 60),
    min_fraction=st.floats(0.0, 1.0),
)
def test_wsd_decays_monotonically_and_sqrt_below_linear(
    warmup: int, stable: int, decay: int, min_fraction: float
) -> None:
    max_lr, min_lr = 1e-3, 1e-3 * min_fraction
    end = warmup + stable + decay
    sqrt_values = [wsd_lr(it, max_lr, min_lr, warmup, stable, decay) for it in range(end + 3)]
    linear = [
        wsd_lr(it, max_lr, min_lr, warmup, stable, decay, shape="linear") for it in range(end + 3)
    ]
    after = sqrt_values[warmup:]
    assert all(b <= a + 1e-18 for a, b in zip(after, after[1:], strict=False))
    assert all(s <= lin + 1e-18 for s, lin in zip(sqrt_values, linear, strict=True))
    assert sqrt_values[end] == min_lr and linear[end] == min_lr
