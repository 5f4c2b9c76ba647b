"""Token offsets: each token's character span, against a brute-force reference and decoding."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge import Tokenizer
from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS
from lmforge.tokenizer.offsets import char_spans

CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 40)]
PIECES = ["the", " cat", " café", " naïve", " über", "ß", " 😀", "🎉", " 中文", "\n", " a", "Ω"]


def _corpus() -> list[str]:
    rng = random.Random(0)
    # repeated multi-byte characters: merges of their partial byte sequences are learnt
    return ["".join(rng.choice(PIECES + CJK) for _ in range(40)) for _ in range(300)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    specials = ("<|endoftext|>", *ENCODER_SPECIAL_TOKENS)
    return Tokenizer.train(iter(_corpus()), 420, special_tokens=specials, progress=False)


def reference_spans(text: str, token_bytes: list[bytes]) -> list[tuple[int, int]]:
    """Smallest character run holding each token's bytes, by scanning every character."""
    starts = [len(text[:i].encode("utf-8")) for i in range(len(text) + 1)]
    spans, pos = [], 0
    for b in token_bytes:
        lo, hi = pos, pos + len(b)
        s = max(i for i in range(len(text)) if starts[i] <= lo)
        e = min(j for j in range(len(text) + 1) if starts[j] >= hi)
        spans.append((s, e))
        pos = hi
    return spans


TEXT = st.text(
    alphabet=st.sampled_from(
        list("ab .,'\n\t") + list("éßΩ") + CJK[:5] + [chr(0x4E00 + 500), "😀", "🎉", "🦀", "\u0301"]
    ),
    max_size=60,
) | st.lists(st.sampled_from(PIECES + list(ENCODER_SPECIAL_TOKENS)), max_size=12).map("".join)


@given(text=TEXT)
def test_spans_match_the_reference_and_decoding(tok: Tokenizer, text: str) -> None:
    ids, spans = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    token_bytes = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(token_bytes) == text.encode("utf-8")
    assert spans == reference_spans(text, token_bytes)
    for (s, e), b in zip(spans, token_bytes, strict=True):
        assert 0 <= s < e <= len(text)
        piece = text[s:e].encode("utf-8")
        assert b in piece  # the token's bytes lie inside its span
        if piece == b:  # a token that cuts no character is exactly its span's text
            assert text[s:e] == b.decode("utf-8")


def test_a_split_character_belongs_to_every_token_holding_its_bytes() -> None:
    ascii_only = Tokenizer.train(iter(["abc abd ab"] * 20), 260, progress=False)
    ids, spans = ascii_only.encode_with_offsets("x🦀y")
    assert len(ids) == 6  # x, the crab's four bytes, y
    assert spans == [(0, 1), (1, 2), (1, 2), (1, 2), (1, 2), (2, 3)]


def test_split_characters_occur_with_a_trained_tokenizer(tok: Tokenizer) -> None:
    text = "".join(chr(0x4E00 + 600 + i) for i in range(5))  # unseen CJK: lead bytes merged
    ids, spans = tok.encode_with_offsets(text)
    assert len(ids) > len(text)  # characters are cut between tokens ...
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False))  # ... spans overlap
    assert spans == reference_spans(text, [tok.decode_bytes([i]) for i in ids])


def test_special_tokens_span_their_text(tok: Tokenizer) -> None:
    text = "[CLS] the cat[SEP]"
    ids, spans = tok.encode_with_offsets(text)
    assert ids[0] == tok.special_tokens["[CLS]"] and spans[0] == (0, 5)
    assert ids[-1] == tok.special_tokens["[SEP]"] and spans[-1] == (13, 18)
    plain_ids, plain_spans = tok.encode_with_offsets(text, allowed_special=set())
    assert tok.special_tokens["[CLS]"] not in plain_ids and plain_spans[0][0] == 0
    assert tok.encode_with_offsets("") == ([], [])


def test_char_spans_checks_the_byte_count() -> None:
    with pytest.raises(ValueError, match="stand for 3 bytes but the text has 4"):
        char_spans("é a", [1, 2])
    with pytest.raises(ValueError, match="at least one byte"):
        char_spans("ab", [2, 0])
