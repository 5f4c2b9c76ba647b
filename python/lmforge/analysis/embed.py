"""Contextual embeddings: per-token hidden states of a trained model, pooled into one vector
per text, and the standardisation that makes their cosine similarities mean something.

:func:`token_states` runs a batch of texts through the model and returns the residual stream
after any layer (``0`` = the token embedding, ``i`` = after block ``i``, negative indices from
the end); :func:`embed_texts` pools each text into one ``d_model`` vector. :class:`Standardizer`
z-scores the dimensions with statistics fitted on a reference set, and
:func:`mean_pairwise_cosine` measures how anisotropic a set of embeddings is.

Design choices:

* **Right padding, no attention mask** for a causal model. Texts are padded at the end with
  token 0; a real token never attends to the pads after it and its hidden state equals the
  one of the unpadded text; the pads' own states are dropped by the pooling. Texts longer than
  the context are truncated to their first ``context_length`` tokens (logged).
* **An encoder reads** ``[CLS] text [SEP]``, padded with ``[PAD]`` under an attention mask
  (:class:`~lmforge.model.Encoder`; the tokenizer needs the encoder specials), texts truncated
  to ``context_length - 2`` tokens; mean pooling covers ``[CLS]`` and ``[SEP]`` too (every
  position the mask marks real, as Sentence-BERT's mean pooling does).
* **The residual stream, before the final norm.** ``layer=-1`` is the stream after the last
  block, as :attr:`~lmforge.model.ModelOutput.hidden_states` holds it, not the normalised input
  of the LM head: every layer is then read the same way.
* **Pooling: ``"mean"``, ``"last"`` or ``"cls"``.** Mean pooling averages the real tokens
  (Reimers & Gurevych 2019 found it the best of the simple poolings); ``"last"`` takes the last
  real token, the only one that has seen the whole text in a causal model; ``"cls"`` takes the
  ``[CLS]`` state of an encoder (BERT's sentence representation; a decoder has none).
* **Standardise before comparing.** Contextual embeddings are anisotropic: they share a large
  common direction, so any two texts have a high cosine similarity (Ethayarajh 2019, "How
  contextual are contextualized word representations?"), and a few "rogue" dimensions with a
  huge mean and variance dominate the cosine. Timkey & van Schijndel (2021, "All bark and no
  bite: rogue dimensions in transformer language models obscure representational quality")
  show that z-scoring each dimension, with statistics from a reference set, removes both and
  brings similarity back in line with human judgements. The statistics must come from other
  texts than those compared, or the comparison is fitted to itself.
* **Anisotropy as the mean cosine of random pairs** of distinct texts, Ethayarajh's baseline:
  close to 1 for a degenerate space, close to 0 for an isotropic one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lmforge.model.encoder import Encoder
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import EncoderSpecials, Tokenizer

__all__ = [
    "Pooling",
    "Standardizer",
    "TokenStates",
    "embed_texts",
    "mean_pairwise_cosine",
    "pool_states",
    "resolve_layer",
    "token_states",
]

log = logging.getLogger(__name__)

Pooling = Literal["mean", "last", "cls"]

_PAD_ID = 0  # any id works: right pads are never attended by real tokens of a causal model


@dataclass(frozen=True)
class TokenStates:
    """Per-token hidden states of a batch of texts (see :func:`token_states`).

    Attributes:
        states: float32 ``(n_texts, seq, d_model)``, on the CPU; positions past a text's
            end (where ``mask`` is False) hold no meaningful values.
        mask: bool ``(n_texts, seq)``, True at real tokens.
        token_ids: int64 ``(n_texts, seq)``, the (padded, truncated) input ids.
        layer: the non-negative layer index the states were read from.
        has_cls: the rows start with ``[CLS]`` (an encoder's ``[CLS] text [SEP]``), so
            ``"cls"`` pooling applies.
    """

    states: Tensor
    mask: Tensor
    token_ids: Tensor
    layer: int
    has_cls: bool = False


def resolve_layer(layer: int, n_layers: int) -> int:
    """``layer`` as an index into the ``n_layers + 1`` hidden states (negatives from the end).

    Raises:
        ValueError: ``layer`` outside ``[-(n_layers + 1), n_layers]``.
    """
    n_states = n_layers + 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_states <= layer < n_states:
        raise ValueError(
            f"layer must be an int in [{-n_states}, {n_layers}] for a {n_layers}-layer model "
            f"(0 = the token embedding, {n_layers} or -1 = after the last block), got {layer!r}"
        )
    return layer % n_states


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, e.g. [text]; got one str")
    if len(texts) == 0:
        raise ValueError("texts is empty: give at least one text")


def _encode(model: Transformer, tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    _check_texts(texts)
    specials = EncoderSpecials.of(tokenizer) if isinstance(model, Encoder) else None
    context = model.config.context_length - (0 if specials is None else 2)
    ids = tokenizer.encode_batch(list(texts))
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"text {i} encodes to no tokens: remove empty texts")
    long = sum(len(row) > context for row in ids)
    if long:
        log.info("%d of %d texts truncated to the context of %d tokens", long, len(ids), context)
    if specials is not None:
        return [specials.wrap(row[:context]) for row in ids]
    return [row[:context] for row in ids]


def _pad_id(model: Transformer, tokenizer: Tokenizer) -> int:
    return EncoderSpecials.of(tokenizer).pad_id if isinstance(model, Encoder) else _PAD_ID


def _pad(rows: list[list[int]], pad_id: int = _PAD_ID) -> tuple[Tensor, Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = True
    return ids, mask


@torch.no_grad()
def _batch_states(model: Transformer, rows: list[list[int]], layer: int, pad_id: int) -> Tensor:
    """``(len(rows), longest row, d_model)`` float32 CPU states of one right-padded batch."""
    ids, mask = _pad(rows, pad_id)
    device = model.head_weight.device
    if isinstance(model, Encoder):  # bidirectional: pads must be masked out
        _, states = model.forward_hidden(
            ids.to(device), attention_mask=mask.to(device), return_hidden_states=True
        )
    else:
        _, states = model.forward_hidden(ids.to(device), return_hidden_states=True)
    assert states is not None
    return states[layer].float().cpu()


def token_states(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    layer: int = -1,
    batch_size: int = 32,
) -> TokenStates:
    """The hidden state of every token of every text after layer ``layer``.

    Args:
        model: the language model (put in eval mode by the caller; it is not trained here).
        tokenizer: the tokenizer the model was trained with.
        texts: the texts; each is encoded on its own, truncated to the model's context and
            right-padded to the longest text.
        layer: which residual stream: ``0`` the token embedding, ``i`` after block ``i``,
            ``-1`` (default) after the last block; negative indices count from the end.
        batch_size: texts per forward pass.

    Returns:
        A :class:`TokenStates` with states ``(n_texts, seq, d_model)`` float32 on the CPU.

    Raises:
        ValueError: no texts, a text without tokens, a bad ``layer`` or ``batch_size``.
        TypeError: ``texts`` is a single string.
    """
    _check_batch_size(batch_size)
    index = resolve_layer(layer, model.config.n_layers)
    rows = _encode(model, tokenizer, texts)
    return _states_of_rows(model, rows, index, batch_size, _pad_id(model, tokenizer))


def _states_of_rows(
    model: Transformer, rows: list[list[int]], layer: int, batch_size: int, pad_id: int
) -> TokenStates:
    ids, mask = _pad(rows, pad_id)
    states = torch.zeros((*ids.shape, model.config.d_model), dtype=torch.float32)
    for start in range(0, len(rows), batch_size):
        chunk = _batch_states(model, rows[start : start + batch_size], layer, pad_id)
        states[start : start + len(chunk), : chunk.shape[1]] = chunk
    encoder = isinstance(model, Encoder)
    return TokenStates(states=states, mask=mask, token_ids=ids, layer=layer, has_cls=encoder)


def _check_pooling(pooling: str, has_cls: bool) -> None:
    if pooling in ("mean", "last") or (pooling == "cls" and has_cls):
        return
    hint = (
        "a causal model has no [CLS] token (use an lmforge.model.Encoder, or 'last')"
        if pooling == "cls"
        else "use 'mean' or 'last' (or 'cls' for an encoder)"
    )
    raise ValueError(f"unknown pooling {pooling!r}: {hint}")


def pool_states(states: TokenStates, pooling: Pooling = "mean") -> Tensor:
    """One vector per text from its token states.

    Args:
        states: what :func:`token_states` returned.
        pooling: ``"mean"`` over the real tokens, ``"last"``: the last real token's state, or
            ``"cls"``: the first (``[CLS]``) state of an encoder's rows.

    Returns:
        float32 ``(n_texts, d_model)``.

    Raises:
        ValueError: an unknown pooling, or ``"cls"`` for states of a causal model (no [CLS]).
    """
    _check_pooling(pooling, states.has_cls)
    if pooling == "cls":
        return states.states[:, 0]
    if pooling == "last":
        last = states.mask.sum(1) - 1
        return states.states[torch.arange(len(last)), last]
    weights = states.mask.to(states.states.dtype).unsqueeze(-1)
    return (states.states * weights).sum(1) / weights.sum(1)


def embed_texts(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    batch_size: int = 32,
) -> Tensor:
    """One embedding per text: the pooled hidden states of layer ``layer``.

    Args:
        model: the language model, in eval mode.
        tokenizer: the tokenizer the model was trained with.
        texts: the texts (see :func:`token_states` for truncation and padding).
        layer: which residual stream (``0`` = embedding, ``-1`` = after the last block).
        pooling: ``"mean"`` over the real tokens, the ``"last"`` real token, or ``"cls"``
            (an :class:`~lmforge.model.Encoder`'s ``[CLS]`` state).
        batch_size: texts per forward pass.

    Returns:
        float32 ``(n_texts, d_model)`` on the CPU.

    Raises:
        ValueError: as :func:`token_states` and :func:`pool_states`.
    """
    _check_pooling(pooling, isinstance(model, Encoder))  # before the forward passes
    _check_batch_size(batch_size)
    index = resolve_layer(layer, model.config.n_layers)
    rows = _encode(model, tokenizer, texts)
    pad_id = _pad_id(model, tokenizer)
    parts = [  # pooled batch by batch: only one batch's token states exist at a time
        pool_states(
            _states_of_rows(model, rows[i : i + batch_size], index, batch_size, pad_id), pooling
        )
        for i in range(0, len(rows), batch_size)
    ]
    return torch.cat(parts)


def _as_matrix(embeddings: Tensor | np.ndarray, name: str, min_rows: int) -> Tensor:
    x = torch.as_tensor(embeddings)
    if x.ndim != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float (n, dim) matrix, got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    return x.detach().cpu().double()


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension z-scoring, ``(x - mean) / std``, with statistics from a reference set.

    Build one with :meth:`fit` on embeddings of *other* texts than those to compare (see the
    module docstring: Timkey & van Schijndel 2021).

    Attributes:
        mean: float64 ``(dim,)`` per-dimension mean of the reference set.
        std: float64 ``(dim,)`` per-dimension standard deviation (floored at ``eps``).
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, embeddings: Tensor | np.ndarray, eps: float = 1e-8) -> Standardizer:
        """The standardiser of a reference set.

        Args:
            embeddings: ``(n, dim)`` reference embeddings, ``n >= 2``.
            eps: the smallest standard deviation (a constant dimension is centred, not blown
                up).

        Returns:
            The fitted :class:`Standardizer`.

        Raises:
            ValueError: not a float matrix, or fewer than 2 rows.
        """
        x = _as_matrix(embeddings, "embeddings", 2)
        return cls(mean=x.mean(0), std=x.std(0).clamp_min(eps))

    def transform(self, embeddings: Tensor | np.ndarray) -> Tensor:
        """``embeddings`` z-scored with the fitted statistics.

        Args:
            embeddings: ``(n, dim)`` with the reference set's ``dim``.

        Returns:
            float32 ``(n, dim)``.

        Raises:
            ValueError: not a float matrix, or another width than the reference set.
        """
        x = _as_matrix(embeddings, "embeddings", 0)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"embeddings have {x.shape[1]} dimensions but the standardiser was fitted on "
                f"{self.mean.shape[0]}: fit it on embeddings of the same model and layer"
            )
        return ((x - self.mean) / self.std).float()


def mean_pairwise_cosine(
    embeddings: Tensor | np.ndarray, n_pairs: int = 1000, seed: int = 0
) -> float:
    """The mean cosine similarity of ``n_pairs`` random pairs of distinct rows.

    A measure of anisotropy (Ethayarajh 2019): about 0 for directions spread evenly, near 1
    when all embeddings share one direction.

    Args:
        embeddings: ``(n, dim)``, ``n >= 2``.
        n_pairs: pairs drawn (with replacement among the ``n (n - 1)`` ordered pairs).
        seed: seeds the draw, so a number can be reproduced.

    Returns:
        The mean cosine similarity, in ``[-1, 1]``.

    Raises:
        ValueError: not a float matrix, fewer than 2 rows, or ``n_pairs < 1``.
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive int, got {n_pairs!r}")
    x = _as_matrix(embeddings, "embeddings", 2)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(x), n_pairs)
    j = rng.integers(0, len(x) - 1, n_pairs)
    j = j + (j >= i)  # uniform over the other rows: never a row with itself
    cos = torch.nn.functional.cosine_similarity(x[torch.from_numpy(i)], x[torch.from_numpy(j)])
    return float(cos.mean())
