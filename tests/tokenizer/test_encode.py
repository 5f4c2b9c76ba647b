"""Encoding and decoding: round trips, tiktoken equality, streaming, special tokens."""

from __future__ import annotations

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from datafiles import read_shared_text
from lmforge import Tokenizer
from reference_bpe import PATTERNS, encode_reference

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
# tiktoken's regex engine predates Unicode 17, whose new letters our scanners (like Python's
# `regex`) know; comparisons with tiktoken keep to code points Python's own tables assign.
ASSIGNED = st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=200)
TRICKY = st.text(alphabet="ab  \n\t'sS1é中 .,!\r<|endoftext|>ſ\u0301", max_size=80)


def as_tiktoken(tok: Tokenizer) -> tiktoken.Encoding:
    ranks = {b: i for i, b in tok.vocab.items() if i not in tok.special_tokens.values()}
    return tiktoken.Encoding(
        name=f"lmforge-{tok.pattern}",
        pat_str=tok.pattern_regex,
        mergeable_ranks=ranks,
        special_tokens=tok.special_tokens,
    )


@given(text=TEXT)
def test_round_trip(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert trained.decode_bytes(ids) == text.encode("utf-8")


@given(text=TEXT)
def test_round_trip_after_save_and_load(trained_gpt2, tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "rt.json"
    if not path.exists():
        trained_gpt2.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.encode(text) == trained_gpt2.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


@given(text=st.one_of(ASSIGNED, TRICKY))
def test_equals_tiktoken(trained, text):
    enc = as_tiktoken(trained)
    assert trained.encode(text) == enc.encode(text, allowed_special="all")
    assert trained.encode_ordinary(text) == enc.encode_ordinary(text)


@given(text=TRICKY)
def test_equals_reference(trained, text):
    expected = encode_reference(
        text, trained.vocab, trained.merges, trained.special_tokens, PATTERNS[trained.pattern]
    )
    assert trained.encode(text) == expected


def test_equals_tiktoken_on_real_text(trained, sample_corpus):
    enc = as_tiktoken(trained)
    texts = [sample_corpus.read_text(encoding="utf-8")[:300_000]]
    try:
        texts.append(read_shared_text("stories/valid.txt.xz", 300_000))
        texts.append(read_shared_text("tinystories-sample/valid-head.txt"))
    except pytest.skip.Exception:
        pass
    for text in texts:
        assert trained.encode(text) == enc.encode(text, allowed_special="all")


@given(pieces=st.lists(st.one_of(TEXT, TRICKY), max_size=8))
def test_encode_iterable_equals_encoding_the_concatenation(trained, pieces):
    assert list(trained.encode_iterable(pieces)) == trained.encode("".join(pieces))


def test_encode_iterable_is_lazy(trained_gpt2):
    def endless():
        while True:
            yield "the quick brown fox jumps over the lazy dog. "

    stream = trained_gpt2.encode_iterable(endless())
    first = [next(stream) for _ in range(1000)]
    assert trained_gpt2.decode(first).startswith("the quick brown fox")


def test_special_tokens_are_their_ids(trained_gpt2):
    eot = trained_gpt2.special_tokens["<|endoftext|>"]
    ids = trained_gpt2.encode("one<|endoftext|>two")
    assert ids.count(eot) == 1
    assert eot not in trained_gpt2.encode_ordinary("one<|endoftext|>two")
    assert trained_gpt2.decode(ids) == "one<|endoftext|>two"


def test_decode_partial_utf8(trained_gpt2):
    e_acute = "é".encode()
    first_byte = e_acute[:1]
    token = next(i for i, b in trained_gpt2.vocab.items() if b == first_byte)
    assert trained_gpt2.decode([token]) == "\ufffd"
    assert trained_gpt2.decode_bytes([token]) == first_byte
    with pytest.raises(UnicodeDecodeError):
        trained_gpt2.decode([token], errors="strict")


def test_decode_unknown_id(trained_gpt2):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        trained_gpt2.decode([trained_gpt2.n_vocab + 5])
