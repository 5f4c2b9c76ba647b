"""Opening a token file for training: refuse, before the first step, a file the model cannot use.

:meth:`TokenFile.open` checks that a file is intact (header, size, optionally the tokenizer's
fingerprint). Training needs more: every id must index the model's embedding table, so the
tokenizer's ``n_vocab`` from the header must not exceed the model's ``vocab_size``; otherwise
the first batch with a high id fails as a CUDA device-side assert (or an ``IndexError`` on the
CPU) far from its cause. A larger ``vocab_size`` is fine and common: padded to a multiple of 64
for faster matmuls (Karpathy's nanoGPT: 50,257 -> 50,304), the extra rows are never targets.
All refusals are :class:`~lmforge.data.token_file.TokenFileError` (a ``ValueError``) that name
the file and the fix. The full id scan (:meth:`TokenFile.validate_ids`) reads the whole file,
so it is opt-in.
"""

from __future__ import annotations

from lmforge.data.batches import _check_positive_int
from lmforge.data.token_file import PathLike, TokenFile, TokenFileError, header_path

_VOCAB_MULTIPLE = 64


def open_training_file(
    path: PathLike,
    *,
    vocab_size: int,
    fingerprint: str | None = None,
    context_length: int | None = None,
    check_ids: bool = False,
) -> TokenFile:
    """Open a token file and check that a model of ``vocab_size`` can train on it.

    Args:
        path: the ``.bin`` token file (its header is ``path + ".json"``).
        vocab_size: the model's vocabulary size (rows of its embedding table).
        fingerprint: the fingerprint of the tokenizer the run uses (``Tokenizer.fingerprint``);
            a file made by another tokenizer is refused. ``None`` skips the check.
        context_length: when given, the file must hold at least one window of
            ``context_length + 1`` tokens.
        check_ids: also read the whole file and check every id (slow for big files).

    Returns:
        The opened :class:`TokenFile`.

    Raises:
        TokenFileError: the file or its header is missing or corrupt, its size disagrees with
            its header, its fingerprint differs from ``fingerprint``, the tokenizer's
            ``n_vocab`` exceeds ``vocab_size``, it is shorter than one window, or (with
            ``check_ids``) an id is out of range.
        ValueError: when ``vocab_size`` or ``context_length`` is not a positive integer.
    """
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    if context_length is not None:
        context_length = _check_positive_int("context_length", context_length)
    tf = TokenFile.open(path, fingerprint=fingerprint)
    n_vocab = tf.header.vocab_size
    if n_vocab > vocab_size:
        raise TokenFileError(
            f"model vocab_size {vocab_size} is smaller than the tokenizer's n_vocab {n_vocab} "
            f"in {header_path(tf.path)}; set vocab_size >= {n_vocab} "
            f"(e.g. {-(-n_vocab // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE}, a multiple of 64)"
        )
    if context_length is not None and len(tf) < context_length + 1:
        raise TokenFileError(
            f"{tf.path} holds {len(tf):,} tokens, too few for context_length "
            f"{context_length:,}: a window needs context_length + 1 = {context_length + 1:,} "
            f"tokens; use more data or a shorter context_length"
        )
    if check_ids:
        tf.validate_ids()
    return tf
