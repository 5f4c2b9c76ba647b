"""Token offsets: the character span of the original ``str`` that each token stands for.

Word-level annotations (named-entity BIO tags, answer spans) are given on characters or words;
a model reads tokens. :meth:`Tokenizer.encode_with_offsets` returns, beside the ids, one
``(char_start, char_end)`` span per token, so labels can be carried from words to tokens
(:func:`lmforge.data.word_labels_to_tokens`).

Design choices:

* **Computed from the tokens' bytes**, not by a second tokenizer pass: in byte-level BPE the
  tokens' bytes concatenate to the text's UTF-8 exactly (special tokens to their own text), so
  each token's byte span is a running sum of byte lengths, and byte offsets map to character
  offsets through the UTF-8 lead bytes (``b & 0xC0 != 0x80``), in numpy.
* **Tokens that split a character.** Byte-level BPE can cut a multi-byte character (an emoji, a
  CJK character) between two tokens. A token's span is then the *smallest run of characters
  that holds all of its bytes*: ``char_start`` is the character holding its first byte and
  ``char_end`` is one past the character holding its last byte. Every token thus has a
  non-empty span, spans never go backwards, and the tokens sharing a character have
  overlapping spans (both cover it) — so a word-to-token mapping by overlap assigns every such
  token to the word of that character. Spans of tokens that cut no character tile the text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["char_spans"]


def char_spans(text: str, byte_lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of consecutive pieces of ``text``'s UTF-8 with the given byte lengths.

    Args:
        text: the original text.
        byte_lengths: the byte length of each token, in order; all >= 1, summing to
            ``len(text.encode("utf-8"))``.

    Returns:
        One ``(char_start, char_end)`` per token (see the module docstring for tokens that
        split a character).

    Raises:
        ValueError: the lengths are not positive or do not add up to the text's UTF-8 length.
    """
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    lengths = np.asarray(byte_lengths, dtype=np.int64).reshape(-1)
    if lengths.size and int(lengths.min()) < 1:
        raise ValueError("every token must stand for at least one byte")
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    if total != data.size:
        raise ValueError(
            f"the tokens stand for {total} bytes but the text has {data.size} UTF-8 bytes"
        )
    # chars_before[i]: characters that start among the first i bytes
    chars_before = np.concatenate(([0], np.cumsum((data & 0xC0) != 0x80)))
    starts = ends - lengths
    char_start = chars_before[starts + 1] - 1  # the character holding the first byte
    char_end = chars_before[ends]  # one past the character holding the last byte
    return list(zip(char_start.tolist(), char_end.tolist(), strict=True))
