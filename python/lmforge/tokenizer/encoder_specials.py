"""The special tokens of a bidirectional encoder: ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[PAD]``.

BERT's inputs (Devlin et al. 2019) are ``[CLS] a [SEP]`` or, for a pair, ``[CLS] a [SEP] b
[SEP]``; the masked-LM objective replaces tokens by ``[MASK]``; batches of unequal length are
filled with ``[PAD]``. In lmforge they are ordinary special tokens of the byte-level BPE
tokenizer: never merged, split out of the text before pretokenization, each one id.

Two ways to get them:

* **At training time** (preferred: the ids follow the merges like any special token)::

      Tokenizer.train(files, 8192, special_tokens=("<|endoftext|>", *ENCODER_SPECIAL_TOKENS))

  or ``lmforge tokenizer train ... --encoder-specials``.
* **Added to a trained tokenizer** with :func:`with_special_tokens`, at the next free ids
  (``n_vocab``, ``n_vocab + 1``, ...), every other id unchanged. The result is a new tokenizer
  with a new fingerprint: encode the token files with it.

Design choices:

* The bracketed names are BERT's. As with any special token, the literal text ``[MASK]`` in a
  corpus becomes the special id when specials are allowed (the default of
  :meth:`Tokenizer.encode`); pass ``allowed_special=set()`` to read such text as plain text.
* :class:`EncoderSpecials` holds the four ids and builds inputs (:meth:`EncoderSpecials.wrap`);
  it is the only place the input layout is written down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.tokenizer.tokenizer import Tokenizer

__all__ = ["ENCODER_SPECIAL_TOKENS", "EncoderSpecials", "with_special_tokens"]

CLS, SEP, MASK, PAD = "[CLS]", "[SEP]", "[MASK]", "[PAD]"
ENCODER_SPECIAL_TOKENS = (CLS, SEP, MASK, PAD)
"""The special tokens an encoder needs, in the order :func:`with_special_tokens` adds them."""


def with_special_tokens(
    tokenizer: Tokenizer, tokens: Sequence[str] = ENCODER_SPECIAL_TOKENS
) -> Tokenizer:
    """``tokenizer`` with the special tokens it lacks added at the next free ids.

    Args:
        tokenizer: any tokenizer; it is not changed.
        tokens: special token texts to ensure (default: ``[CLS] [SEP] [MASK] [PAD]``).

    Returns:
        ``tokenizer`` itself when it has them all; otherwise a new tokenizer with the same
        vocabulary, merges and pattern and the missing tokens at ids ``n_vocab, n_vocab + 1,
        ...`` in the order given.

    Raises:
        ValueError: an empty or duplicated token text.
        TypeError: ``tokens`` is a single string.
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of str, e.g. ('[CLS]', '[SEP]')")
    names = list(tokens)
    if any(not isinstance(t, str) or not t for t in names) or len(set(names)) != len(names):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {names!r}")
    specials = dict(tokenizer.special_tokens)
    missing = [t for t in names if t not in specials]
    if not missing:
        return tokenizer
    for offset, text in enumerate(missing):
        specials[text] = tokenizer.n_vocab + offset
    return Tokenizer(tokenizer.vocab, tokenizer.merges, specials, tokenizer.pattern)


@dataclass(frozen=True)
class EncoderSpecials:
    """The ids of ``[CLS]``, ``[SEP]``, ``[MASK]`` and ``[PAD]`` in one tokenizer.

    Attributes:
        cls_id: ``[CLS]``, first in every input; sequence classifiers read its output.
        sep_id: ``[SEP]``, ends each segment.
        mask_id: ``[MASK]``, what most masked-LM targets are replaced by.
        pad_id: ``[PAD]``, fills short rows of a batch (their attention mask is False).
    """

    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> EncoderSpecials:
        """The ids in ``tokenizer``.

        Raises:
            ValueError: the tokenizer lacks some of them (named, with how to add them).
        """
        specials = tokenizer.special_tokens
        missing = [t for t in ENCODER_SPECIAL_TOKENS if t not in specials]
        if missing:
            raise ValueError(
                f"the tokenizer has no {', '.join(missing)} special token(s): train it with "
                "special_tokens=('<|endoftext|>', *ENCODER_SPECIAL_TOKENS) (CLI: lmforge "
                "tokenizer train --encoder-specials) or add them with "
                "lmforge.tokenizer.with_special_tokens, then re-encode the token files"
            )
        return cls(specials[CLS], specials[SEP], specials[MASK], specials[PAD])

    @property
    def ids(self) -> tuple[int, int, int, int]:
        """``(cls_id, sep_id, mask_id, pad_id)``."""
        return (self.cls_id, self.sep_id, self.mask_id, self.pad_id)

    def wrap(
        self, first: Sequence[int], second: Sequence[int] | None = None, *, fill: int | None = None
    ) -> list[int]:
        """One encoder input: ``[CLS] first [SEP]`` or ``[CLS] first [SEP] second [SEP]``.

        Args:
            first: the first segment's token ids (or per-token labels, with ``fill``).
            second: the second segment of a pair, if any.
            fill: put this value where the special tokens go instead of their ids, to lay out
                per-token labels the same way (``fill=-100``: no loss on the specials).

        Returns:
            The ids (or labels), ``len(first) + 2`` long, ``+ len(second) + 1`` for a pair.
        """
        cls_id = self.cls_id if fill is None else fill
        sep_id = self.sep_id if fill is None else fill
        out = [cls_id, *first, sep_id]
        if second is not None:
            out += [*second, sep_id]
        return out
