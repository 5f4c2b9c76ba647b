"""Word-level tags (BIO named entities) carried to tokens through the tokens' character spans.

Tagging data (CoNLL-2003 and the like) labels *words*; a subword tokenizer cuts a word into
several tokens. With each token's character span (:meth:`Tokenizer.encode_with_offsets`) and
each word's, :func:`word_labels_to_tokens` gives every token a label.

Design choices:

* **BIO tags** (Ramshaw & Marcus 1995): ``O`` outside any entity, ``B-T`` the first word of an
  entity of type ``T``, ``I-T`` a following word of it. :class:`BIOScheme` numbers them ``O``
  = 0, then ``B-T``, ``I-T`` for each type in order.
* **A token belongs to the first word its span overlaps.** Spans of whitespace-only tokens (or
  specials outside every word) overlap none and get ``-100``. A GPT-2-style token often starts
  with the space before its word (``" John"``): its span overlaps only that word, so it
  belongs to it.
* **The first sub-token of each word carries the word's label; the others get ``-100``** by
  default: BERT's choice for NER (Devlin et al. 2019, §5.3), where the loss and the prediction
  read one token per word, so word-level accuracy is token-level accuracy on labelled tokens.
  ``continuation=scheme.inside`` instead labels the others too, with ``B-T`` turned into
  ``I-T`` (the continuation of the entity the first sub-token began).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.data.mlm import IGNORE_INDEX

__all__ = ["BIOScheme", "join_words", "word_labels_to_tokens"]


@dataclass(frozen=True)
class BIOScheme:
    """The BIO tag set of some entity types.

    Attributes:
        entity_types: the types, e.g. ``("PER", "LOC")``; tags are ``O``, ``B-PER``,
            ``I-PER``, ``B-LOC``, ``I-LOC`` with ids 0, 1, 2, 3, 4.

    Raises:
        ValueError: no types, or an empty or duplicated one.
    """

    entity_types: tuple[str, ...]

    def __post_init__(self) -> None:
        types = tuple(self.entity_types)
        object.__setattr__(self, "entity_types", types)
        if not types or any(not isinstance(t, str) or not t for t in types):
            raise ValueError(f"entity_types must be non-empty strings, got {types!r}")
        if len(set(types)) != len(types):
            raise ValueError(f"entity_types must be distinct, got {types!r}")

    @property
    def names(self) -> list[str]:
        """Every tag, in id order."""
        return ["O", *(f"{p}-{t}" for t in self.entity_types for p in ("B", "I"))]

    @property
    def num_labels(self) -> int:
        """How many tags (``1 + 2 × types``)."""
        return 1 + 2 * len(self.entity_types)

    def id(self, name: str) -> int:
        """The id of tag ``name``.

        Raises:
            ValueError: not a tag of this scheme.
        """
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown tag {name!r}; tags: {self.names}") from None

    def inside(self, label: int) -> int:
        """``B-T`` → ``I-T``; ``O`` and ``I-T`` unchanged (a continuation sub-token's tag)."""
        return label + 1 if label % 2 == 1 else label


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Words joined by single spaces, with each word's character span in the text.

    Raises:
        ValueError: an empty word.
    """
    spans, pos = [], 0
    for w in words:
        if not w:
            raise ValueError("words must be non-empty strings")
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def word_labels_to_tokens(
    token_spans: Sequence[tuple[int, int]],
    word_spans: Sequence[tuple[int, int]],
    word_labels: Sequence[int],
    *,
    continuation: Callable[[int], int] | None = None,
) -> list[int]:
    """Per-token labels from per-word labels.

    Args:
        token_spans: ``(char_start, char_end)`` per token, from
            :meth:`~lmforge.tokenizer.Tokenizer.encode_with_offsets`.
        word_spans: ``(char_start, char_end)`` per word, in order, not overlapping.
        word_labels: one label id per word.
        continuation: the label of a word's later sub-tokens, from its own label (e.g.
            :meth:`BIOScheme.inside`); ``None`` (default) gives them ``-100``.

    Returns:
        One label per token: the word's label on its first token, ``continuation(label)`` or
        ``-100`` on its other tokens, ``-100`` on tokens outside every word.

    Raises:
        ValueError: word spans and labels of different lengths, or word spans empty,
            decreasing or overlapping.
    """
    if len(word_spans) != len(word_labels):
        raise ValueError(f"{len(word_spans)} word spans but {len(word_labels)} word labels")
    w = np.asarray(word_spans, dtype=np.int64).reshape(-1, 2)
    if np.any(w[:, 1] <= w[:, 0]) or np.any(w[1:, 0] < w[:-1, 1]):
        raise ValueError("word spans must be non-empty, in order and not overlapping")
    t = np.asarray(token_spans, dtype=np.int64).reshape(-1, 2)
    # the first word ending after the token starts; the token overlaps it iff it starts first
    first = np.searchsorted(w[:, 1], t[:, 0], side="right")
    out, seen = [], set()
    for (_, t_end), j in zip(t.tolist(), first.tolist(), strict=True):
        if j >= len(w) or w[j, 0] >= t_end:
            out.append(IGNORE_INDEX)
        elif j in seen:
            out.append(IGNORE_INDEX if continuation is None else continuation(word_labels[j]))
        else:
            seen.add(j)
            out.append(int(word_labels[j]))
    return out
