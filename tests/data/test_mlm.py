"""MLM masking: BERT's rates within binomial (Bernstein) bounds, specials untouched, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.data import MixtureSampler, MLMMasking, mask_tokens, mlm_batch, mlm_windows

N_VOCAB = 1000
SPECIALS = (0, 1, 2, 3)  # e.g. end-of-text, [CLS], [SEP], [PAD]
MASK_ID = 4


def masking(**kw: object) -> MLMMasking:
    return MLMMasking(mask_id=MASK_ID, special_ids=SPECIALS, n_vocab=N_VOCAB, **kw)  # type: ignore[arg-type]


def bound(n: int, p: float, delta: float = 1e-9) -> float:
    """``t`` with ``P(|k/n - p| >= t) <= delta`` for ``k ~ Binomial(n, p)`` (Bernstein's
    inequality: ``2 exp(-n t² / (2 p (1 - p) + 2 t / 3))``)."""
    log_term = math.log(2 / delta)
    a = 2 * log_term / 3
    return (a + math.sqrt(a * a + 8 * n * log_term * p * (1 - p))) / (2 * n)


def corpus(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, N_VOCAB, size=shape)
    specials = rng.random(shape) < 0.1
    ids[specials] = rng.choice(np.array(SPECIALS + (MASK_ID,)), size=int(specials.sum()))
    return ids


def within(k: int, n: int, p: float) -> bool:
    return abs(k / n - p) < bound(n, p)


def test_rates_are_15_percent_and_80_10_10() -> None:
    ids = corpus((400, 1024))
    inputs, labels = mask_tokens(ids, masking(), np.random.default_rng(1))
    eligible = ~np.isin(ids, SPECIALS + (MASK_ID,))
    selected = labels != -100
    n_eligible, n_sel = int(eligible.sum()), int(selected.sum())
    assert within(n_sel, n_eligible, 0.15), n_sel / n_eligible
    n_candidates = N_VOCAB - 5
    as_mask = inputs[selected] == MASK_ID
    kept = inputs[selected] == ids[selected]
    changed = ~as_mask & ~kept
    assert within(int(as_mask.sum()), n_sel, 0.8)
    assert within(int(kept.sum()), n_sel, 0.1 + 0.1 / n_candidates)  # a random draw may hit it
    assert within(int(changed.sum()), n_sel, 0.1 * (1 - 1 / n_candidates))
    # replacements are ordinary ids, spread evenly over them
    replaced = inputs[selected][changed]
    assert replaced.min() >= 5 and replaced.max() < N_VOCAB
    quarter = int((replaced < 5 + n_candidates / 4).sum())
    assert within(quarter, replaced.size, 0.25)


def test_only_selected_positions_change_and_specials_never() -> None:
    ids = corpus((50, 64), seed=2)
    inputs, labels = mask_tokens(ids, masking(probability=0.5), np.random.default_rng(3))
    selected = labels != -100
    assert np.array_equal(labels[selected], ids[selected])
    assert np.array_equal(inputs[~selected], ids[~selected])
    assert not np.isin(ids[selected], SPECIALS + (MASK_ID,)).any()
    assert np.isin(ids, SPECIALS).any() and inputs.dtype == labels.dtype == np.int64


def test_rates_can_be_changed() -> None:
    ids = corpus((100, 512), seed=4)
    only_mask = masking(probability=0.3, mask_fraction=1.0, random_fraction=0.0)
    inputs, labels = mask_tokens(ids, only_mask, np.random.default_rng(5))
    selected = labels != -100
    assert (inputs[selected] == MASK_ID).all()
    assert within(int(selected.sum()), int((ids > MASK_ID).sum()), 0.3)


def test_masks_are_keyed_on_seed_step_and_window() -> None:
    windows = corpus((8, 33), seed=6)
    kw = {"cls_id": 1, "context_length": 32, "seed": 7}
    inputs, labels = mlm_windows(windows, masking(), step=3, **kw)
    assert (inputs[:, 0] == 1).all() and (labels[:, 0] == -100).all()
    unmasked = labels[:, 1:] == -100
    assert np.array_equal(inputs[:, 1:][unmasked], windows[:, :31][unmasked])
    # the same windows split in two (two ranks, or two micro-batches) get the same masks
    low = mlm_windows(windows[:4], masking(), step=3, first_row=0, **kw)
    high = mlm_windows(windows[4:], masking(), step=3, first_row=4, **kw)
    assert np.array_equal(np.concatenate([low[0], high[0]]), inputs)
    assert np.array_equal(np.concatenate([low[1], high[1]]), labels)
    again = mlm_windows(windows, masking(), step=3, **kw)
    assert np.array_equal(again[1], labels)
    other_step = mlm_windows(windows, masking(), step=4, **kw)
    assert not np.array_equal(other_step[1], labels)


def test_mlm_batch_gathers_and_masks() -> None:
    tokens = corpus((1, 5000), seed=8)[0]
    starts, sources = np.array([0, 100, 4000]), np.zeros(3, dtype=np.int64)
    x, y = mlm_batch([tokens], sources, starts, 16, "cpu", masking(), cls_id=1, seed=0, step=2)
    windows = np.stack([tokens[s : s + 17] for s in starts])
    ref = mlm_windows(windows, masking(), cls_id=1, context_length=16, seed=0, step=2)
    assert x.dtype == y.dtype == torch.int64 and x.shape == (3, 16)
    assert np.array_equal(x.numpy(), ref[0]) and np.array_equal(y.numpy(), ref[1])


def test_first_rows_tile_the_global_batch() -> None:
    rows = []
    for rank in range(2):
        s = MixtureSampler([1000], 8, 12, seed=0, rank=rank, world_size=2, grad_accum=3)
        rows += [s.first_row(i) + j for i in range(3) for j in range(s.micro_batch)]
    assert sorted(rows) == list(range(12))
    with pytest.raises(ValueError, match="micro_step"):
        s.first_row(3)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"probability": 0.0}, "probability"),
        ({"probability": 1.5}, "probability"),
        ({"mask_fraction": 0.95, "random_fraction": 0.1}, "exceeds 1"),
        ({"random_fraction": -0.1}, "random_fraction"),
        ({"mask_id": N_VOCAB}, "mask_id"),
        ({"special_ids": (N_VOCAB + 1,)}, "special_ids"),
        ({"n_vocab": 0}, "n_vocab"),
    ],
)
def test_masking_config_is_validated(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"mask_id": MASK_ID, "special_ids": SPECIALS, "n_vocab": N_VOCAB}
    with pytest.raises(ValueError, match=match):
        MLMMasking(**{**args, **kw})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no ordinary id"):
        MLMMasking(mask_id=1, special_ids=(0,), n_vocab=2)
    with pytest.raises(ValueError, match="context_length >= 2"):
        mlm_windows(
            np.zeros((1, 4), dtype=np.int64), masking(), cls_id=1, context_length=1, seed=0, step=0
        )
