"""Word-level BIO tags to token labels through offsets; padding sequences with a mask."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge import Tokenizer
from lmforge.data import BIOScheme, join_words, pad_sequences, word_labels_to_tokens

WORDS = ["Alice", "Bob", "visited", "Paris", "and", "Zürich", "yesterday", "Kilimanjaro", "!"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS[:5]) for _ in range(12)) for _ in range(50)]
    return Tokenizer.train(iter(texts), 275, progress=False)  # rare words split into pieces


def reference_labels(token_spans, word_spans, labels, inside=None):  # type: ignore[no-untyped-def]
    """By brute force: each token's first overlapping word; first token of a word labelled."""
    out, seen = [], set()
    for ts, te in token_spans:
        words = [j for j, (ws, we) in enumerate(word_spans) if ts < we and ws < te]
        if not words:
            out.append(-100)
        elif words[0] in seen:
            out.append(-100 if inside is None else inside(labels[words[0]]))
        else:
            seen.add(words[0])
            out.append(labels[words[0]])
    return out


def test_bio_scheme() -> None:
    scheme = BIOScheme(("PER", "LOC"))
    assert scheme.names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert scheme.num_labels == 5 and scheme.id("I-LOC") == 4
    assert [scheme.inside(i) for i in range(5)] == [0, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="unknown tag"):
        scheme.id("B-ORG")
    with pytest.raises(ValueError, match="distinct"):
        BIOScheme(("PER", "PER"))


def test_first_sub_token_carries_the_word_label(tok: Tokenizer) -> None:
    scheme = BIOScheme(("PER", "LOC"))
    words = ["Alice", "visited", "Kilimanjaro", "yesterday", "!"]
    tags = ["B-PER", "O", "B-LOC", "O", "O"]
    text, spans = join_words(words)
    assert [text[s:e] for s, e in spans] == words
    ids, offsets = tok.encode_with_offsets(text)
    labels = [scheme.id(t) for t in tags]
    first = word_labels_to_tokens(offsets, spans, labels)
    assert len(first) == len(ids) and len(ids) > len(words)  # rare words were split
    assert sorted(x for x in first if x != -100) == sorted(labels)  # one labelled token a word
    pieces = [tok.decode([i]) for i, y in zip(ids, first, strict=True) if y != -100]
    assert [p.strip() for p in pieces] == [
        w[: len(p.strip())] for w, p in zip(words, pieces, strict=True)
    ]
    cont = word_labels_to_tokens(offsets, spans, labels, continuation=scheme.inside)
    inside = "".join(tok.decode([i]) for i, y in zip(ids, cont, strict=True) if y == 4)
    assert inside and "Kilimanjaro".endswith(inside)  # the word's later pieces become I-LOC
    assert cont == reference_labels(offsets, spans, labels, scheme.inside)


@given(
    words=st.lists(st.sampled_from(WORDS + ["Zü", "日本", "😀x"]), min_size=1, max_size=12),
    seed=st.integers(0, 100),
)
def test_matches_brute_force(tok: Tokenizer, words: list[str], seed: int) -> None:
    text, spans = join_words(words)
    _, offsets = tok.encode_with_offsets(text)
    labels = [random.Random(seed + i).randrange(5) for i in range(len(words))]
    scheme = BIOScheme(("A", "B"))
    assert word_labels_to_tokens(offsets, spans, labels) == reference_labels(offsets, spans, labels)
    assert word_labels_to_tokens(
        offsets, spans, labels, continuation=scheme.inside
    ) == reference_labels(offsets, spans, labels, scheme.inside)


def test_tokens_outside_words_are_ignored() -> None:
    # a whitespace token (4, 6) between the words and a special token after them
    got = word_labels_to_tokens([(0, 4), (4, 6), (6, 9), (9, 14)], [(0, 4), (6, 9)], [1, 3])
    assert got == [1, -100, 3, -100]
    with pytest.raises(ValueError, match="2 word spans but 1"):
        word_labels_to_tokens([(0, 1)], [(0, 1), (2, 3)], [0])
    with pytest.raises(ValueError, match="not overlapping"):
        word_labels_to_tokens([(0, 1)], [(0, 3), (2, 4)], [0, 0])


def test_pad_sequences() -> None:
    values, mask = pad_sequences([[5, 6, 7], [8], [9, 10]], 0)
    assert values.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    labels, _ = pad_sequences([[1], [2, 3]], -100, length=4)
    assert labels.tolist() == [[1, -100, -100, -100], [2, 3, -100, -100]]
    assert values.dtype == torch.int64 and mask.dtype == torch.bool
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([[1], []], 0)
    with pytest.raises(ValueError, match="exceeds the padded length"):
        pad_sequences([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="no rows"):
        pad_sequences([], 0)
