"""Incremental decoding for streaming generation.

A token can end in the middle of a multi-byte UTF-8 character, so decoding each new token on its
own would print broken characters. The stream decoder keeps the unfinished bytes of a character
until the next tokens complete it and emits only whole characters.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Decodes token ids as they come, never emitting a broken UTF-8 sequence.

    Args:
        tokenizer: the tokenizer whose ids are fed.
        errors: ``"replace"`` turns invalid sequences into U+FFFD; ``"strict"`` raises.
    """

    def __init__(self, tokenizer: Tokenizer, errors: str = "replace") -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def feed(self, ids: Iterable[int] | int) -> str:
        """Decodes more ids; returns the text completed so far (possibly empty)."""
        ids = [ids] if isinstance(ids, int) else list(ids)
        return self._utf8.decode(self._tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """Ends the stream: an unfinished character becomes U+FFFD (or raises when strict)."""
        return self._utf8.decode(b"", final=True)
