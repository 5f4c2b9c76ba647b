"""Encoding corpora into token files (``train.bin`` + ``train.bin.json``).

The Rust core streams the inputs, encodes them in parallel and writes the ids in input order to
a temporary file; only a complete file is renamed into place, and its header is written after
that, so an interrupted run never leaves a token file that looks valid. Any old header at the
destination is removed first, so it can never describe the new ``.bin``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.data.token_file import TokenFile, TokenFileHeader, dtype_for, header_path, write_header

if TYPE_CHECKING:
    from lmforge.tokenizer.tokenizer import PathLike, Tokenizer

EOT = "<|endoftext|>"


def end_of_text(tok: Tokenizer) -> str | None:
    """The special token that ends documents: ``<|endoftext|>``, else the only special token."""
    if EOT in tok.special_tokens:
        return EOT
    if len(tok.special_tokens) == 1:
        return next(iter(tok.special_tokens))
    return None


def _dtype(tok: Tokenizer, dtype: str | np.dtype | None) -> np.dtype:
    if dtype is None:
        return dtype_for(tok.n_vocab)
    chosen = np.dtype(dtype).newbyteorder("<")
    if chosen.name not in ("uint16", "uint32"):
        raise ValueError(f"dtype must be uint16 or uint32, not {np.dtype(dtype).name}")
    if chosen.name == "uint16" and tok.n_vocab > 1 << 16:
        raise ValueError(
            f"uint16 cannot hold ids up to {tok.n_vocab - 1}; use dtype='uint32' (or None)"
        )
    return chosen


def encode_files(
    tok: Tokenizer,
    inputs: Sequence[PathLike],
    out_path: PathLike,
    *,
    append_eot: bool = True,
    dtype: str | np.dtype | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    errors: str = "strict",
) -> TokenFile:
    """Encodes text files into a token file; see :meth:`Tokenizer.encode_files`."""
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise ValueError("no inputs given: pass at least one file")
    separator = end_of_text(tok)
    if append_eot and separator is None:
        raise ValueError(
            "the tokenizer has no end-of-text special token to append after each document; "
            "train it with special_tokens=('<|endoftext|>',) or pass append_eot=False"
        )
    eot_id = tok.special_tokens[separator] if append_eot and separator else None
    np_dtype = _dtype(tok, dtype)
    out = Path(out_path)
    header_path(out).unlink(missing_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        stats = tok._core.encode_files(
            paths, str(tmp), eot_id, np_dtype.itemsize, num_threads, progress, errors
        )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    header = TokenFileHeader(
        dtype=np_dtype.name,
        vocab_size=tok.n_vocab,
        n_tokens=sum(s["tokens"] for s in stats),
        tokenizer_fingerprint=tok.fingerprint,
        eot_id=eot_id,
        append_eot=append_eot,
        document_separator=separator,
        sources=[{"path": s["path"], "bytes": s["bytes"]} for s in stats],
    )
    write_header(out, header)
    return TokenFile.open(out, fingerprint=tok.fingerprint)
