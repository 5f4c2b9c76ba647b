"""Masked-language-model inputs: BERT's 15% / 80-10-10 masking, seeded, per training window.

BERT (Devlin et al. 2019, §3.1 and Appendix A.1) selects 15% of the input tokens as prediction
targets; a selected token is replaced by ``[MASK]`` 80% of the time, by a random token 10% of
the time and left unchanged 10% of the time, so the model cannot learn that only ``[MASK]``
positions matter. The loss is the cross-entropy of the original token at the selected positions
only: ``labels`` hold it there and ``-100`` elsewhere.

Design choices:

* **Each eligible position is selected independently** with probability ``probability``
  (RoBERTa's and Hugging Face's ``DataCollatorForLanguageModeling`` rule; BERT's original code
  selected exactly ``round(15% · n)`` per sequence): the same expected count, no per-row sort.
* **Special tokens are never selected** (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``,
  end-of-text, ...): the model is asked to predict text, not structure.
* **Random replacements are drawn uniformly from the ordinary ids** ``[0, n_vocab)`` minus the
  special ids: never a special token, and never a padding row of the embedding beyond the
  tokenizer's ``n_vocab``. As in BERT, the draw may hit the original token (probability
  ``1 / #candidates``).
* **One fixed-size draw per position** (selection, action, replacement), so the random stream
  does not depend on the tokens. In training, every window gets its own generator,
  ``PCG64(SeedSequence([seed, step], spawn_key=(MLM, row)))`` with ``row`` its index in the
  global batch: masks depend only on the seed, the step and the window, so they are the same
  for any number of ranks or accumulation steps and a resumed run continues with the same masks
  (the :class:`~lmforge.data.sampler.WindowSampler` argument, applied to masks).
* **Training windows** are the sampler's windows read as ``[CLS]`` + their first ``T - 1``
  tokens (RoBERTa's FULL-SENTENCES packing: windows cross document boundaries, whose
  end-of-text tokens stay as separators), so a pre-trained ``[CLS]`` is in place for
  classification fine-tuning.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.data.batches import TokenArray, copy_to_device
from lmforge.data.device import resolve_device
from lmforge.data.mixture import gather_mixture_windows

__all__ = ["IGNORE_INDEX", "MLMMasking", "mask_tokens", "mlm_batch", "mlm_windows"]

IGNORE_INDEX = -100
"""The label of positions without a loss (``F.cross_entropy``'s default ``ignore_index``)."""

_MLM_STREAM = 0x4D4C4D  # "MLM": keeps the masks' streams apart from the sampler's


@dataclass(frozen=True, kw_only=True)
class MLMMasking:
    """How to mask: the ids involved and the three rates.

    Attributes:
        mask_id: the ``[MASK]`` id.
        special_ids: ids never selected (every special token of the tokenizer; ``mask_id``
            need not be repeated).
        n_vocab: random replacements are drawn from ``[0, n_vocab)`` minus ``special_ids``
            (the tokenizer's ``n_vocab``).
        probability: the share of eligible positions selected as targets (BERT: 0.15).
        mask_fraction: of the selected, the share replaced by ``[MASK]`` (0.8).
        random_fraction: of the selected, the share replaced by a random id (0.1); the rest
            is left unchanged.

    Raises:
        ValueError: an id out of ``[0, n_vocab)``, no id left to draw from, a rate outside
            ``(0, 1]`` / ``[0, 1]``, or fractions summing to more than 1.
    """

    mask_id: int
    special_ids: tuple[int, ...] = ()
    n_vocab: int
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.n_vocab, bool) or not isinstance(self.n_vocab, int) or self.n_vocab < 1:
            raise ValueError(f"n_vocab must be a positive integer, got {self.n_vocab!r}")
        object.__setattr__(self, "special_ids", tuple(int(i) for i in self.special_ids))
        for name, i in [("mask_id", self.mask_id), *(("special_ids", i) for i in self.special_ids)]:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_vocab:
                raise ValueError(f"{name} must hold ids in [0, n_vocab={self.n_vocab}), got {i!r}")
        if not (0 < self.probability <= 1):
            raise ValueError(f"probability must be in (0, 1], got {self.probability!r}")
        for name in ("mask_fraction", "random_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.mask_fraction + self.random_fraction > 1 + 1e-12:
            raise ValueError(
                f"mask_fraction + random_fraction = {self.mask_fraction + self.random_fraction} "
                "exceeds 1"
            )
        if self.random_fraction > 0 and self.candidates.size == 0:
            raise ValueError("every id is special: there is no ordinary id to draw")

    @property
    def never_selected(self) -> np.ndarray:
        """The ids never selected: ``special_ids`` and ``mask_id``, sorted."""
        return np.unique(np.array([self.mask_id, *self.special_ids], dtype=np.int64))

    @functools.cached_property
    def candidates(self) -> np.ndarray:
        """The ids random replacements are drawn from, sorted."""
        return np.setdiff1d(np.arange(self.n_vocab, dtype=np.int64), self.never_selected)


def mask_tokens(
    ids: np.ndarray, masking: MLMMasking, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mask ``ids`` for the MLM objective.

    Args:
        ids: integer token ids of any shape.
        masking: the ids and rates.
        rng: the random source (three draws of ``ids.size`` values, whatever the tokens).

    Returns:
        ``(inputs, labels)``, int64 arrays of ``ids``' shape: ``inputs`` with the selected
        positions replaced (``[MASK]``, a random id, or kept), ``labels`` the original id at
        the selected positions and :data:`IGNORE_INDEX` elsewhere.
    """
    ids = np.asarray(ids, dtype=np.int64)
    select_u = rng.random(ids.shape)
    action_u = rng.random(ids.shape)
    candidates = masking.candidates
    draw = rng.integers(0, max(candidates.size, 1), size=ids.shape)
    selected = (select_u < masking.probability) & ~np.isin(ids, masking.never_selected)
    to_mask = selected & (action_u < masking.mask_fraction)
    to_random = (
        selected
        & (action_u >= masking.mask_fraction)
        & (action_u < masking.mask_fraction + masking.random_fraction)
    )
    inputs = np.where(to_mask, masking.mask_id, ids)
    if candidates.size:
        inputs = np.where(to_random, candidates[draw % candidates.size], inputs)
    labels = np.where(selected, ids, IGNORE_INDEX)
    return inputs, labels


def _row_generator(seed: int, step: int, row: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, step], spawn_key=(_MLM_STREAM, row)))
    )


def mlm_windows(
    windows: np.ndarray,
    masking: MLMMasking,
    *,
    cls_id: int,
    context_length: int,
    seed: int,
    step: int,
    first_row: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MLM inputs and labels from token windows: ``[CLS]`` + each window's first ``T - 1``
    tokens, masked with the window's own generator.

    Args:
        windows: int ``(B, >= T - 1)`` token windows (e.g. the sampler's ``T + 1`` tokens).
        masking: the ids and rates.
        cls_id: the ``[CLS]`` id put first.
        context_length: ``T``, the length of each input.
        seed: the run's seed.
        step: the optimizer step (or evaluation batch) the windows belong to.
        first_row: the global index of the first window (see the module docstring).

    Returns:
        ``(inputs, labels)``, int64 ``(B, T)``; ``labels[:, 0]`` is always ignored.

    Raises:
        ValueError: windows shorter than ``T - 1``, or a ``context_length`` below 2.
    """
    if context_length < 2:
        raise ValueError(f"an MLM input needs context_length >= 2, got {context_length}")
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] < context_length - 1:
        raise ValueError(
            f"windows must be (batch, >= {context_length - 1}) token ids, got {windows.shape}"
        )
    ids = np.empty((windows.shape[0], context_length), dtype=np.int64)
    ids[:, 0] = cls_id
    ids[:, 1:] = windows[:, : context_length - 1]
    inputs, labels = np.empty_like(ids), np.empty_like(ids)
    for b in range(len(ids)):
        rng = _row_generator(seed, step, first_row + b)
        inputs[b], labels[b] = mask_tokens(ids[b], masking, rng)
    labels[:, 0] = IGNORE_INDEX  # [CLS] is special; explicit in case it is not listed
    return inputs, labels


def mlm_batch(
    token_arrays: Sequence[TokenArray],
    sources: np.ndarray,
    starts: np.ndarray,
    context_length: int,
    device: str | torch.device,
    masking: MLMMasking,
    *,
    cls_id: int,
    seed: int,
    step: int,
    first_row: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLM batch of the sampler's windows ``(sources, starts)`` (see :func:`mlm_windows`).

    Args:
        token_arrays: each source's 1-D token ids.
        sources: 1-D source index of each window.
        starts: 1-D start of each window in its source.
        context_length: ``T``.
        device: where the batch goes.
        masking: the ids and rates.
        cls_id: the ``[CLS]`` id.
        seed: the run's seed.
        step: the optimizer step.
        first_row: the global-batch index of the first window
            (:meth:`~lmforge.data.mixture.MixtureSampler.first_row`).

    Returns:
        ``(inputs, labels)``, int64 ``(B, T)`` tensors on ``device``.

    Raises:
        ValueError: as :func:`~lmforge.data.mixture.gather_mixture_batch`.
    """
    dev = resolve_device(device)
    windows = gather_mixture_windows(token_arrays, sources, starts, context_length)
    inputs, labels = mlm_windows(
        windows,
        masking,
        cls_id=cls_id,
        context_length=context_length,
        seed=seed,
        step=step,
        first_row=first_row,
    )
    return copy_to_device(inputs, dev), copy_to_device(labels, dev)
