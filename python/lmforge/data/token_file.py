"""Token files: the hand-off from the tokenizer to training.

A token file is two files. ``train.bin`` is a flat array of little-endian token ids, ``uint16``
when the tokenizer's ``n_vocab`` fits (<= 65,536, half the disk and page cache of ``uint32``)
and ``uint32`` otherwise. ``train.bin.json`` is a small JSON header beside it: dtype, vocabulary
size, token count, the fingerprint of the tokenizer that made it, the end-of-text id, and the
inputs it came from.

Why a sidecar and not a header inside the ``.bin``: the ``.bin`` stays a plain array that any
tool can ``np.memmap`` with offset 0 (nanoGPT's convention), while the header can still say
which tokenizer made it, so training refuses to mix a file with the wrong tokenizer. The header
is written last and atomically (temp file, fsync, rename): a ``.bin`` without a header is an
interrupted encoding, never a file to train on. Opening checks only what is cheap (header
fields, file size, fingerprint); the ids themselves are checked on demand by
:meth:`TokenFile.validate_ids`, which reads the whole file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import numpy as np

from lmforge._atomic import write_text_atomic

PathLike = Union[str, "os.PathLike[str]"]
"""A filesystem path."""

FORMAT = "lmforge-tokens"
"""The ``format`` field of every token file header."""

VERSION = 1
"""The header version this lmforge writes and the newest it reads."""

_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_CHUNK_TOKENS = 1 << 22  # tokens per chunk when scanning a file: 8-16 MB of memory at most
_REENCODE = "re-run `lmforge tokenizer encode`"


class TokenFileError(ValueError):
    """A token file or its header is missing, corrupt, or does not match what was asked."""


def header_path(path: PathLike) -> Path:
    """The header (sidecar) path of a token file: ``train.bin`` -> ``train.bin.json``."""
    return Path(os.fspath(path) + ".json")


def dtype_for(n_vocab: int) -> np.dtype:
    """The narrowest token dtype that holds every id below ``n_vocab``.

    Args:
        n_vocab: the tokenizer's largest id + 1.

    Returns:
        Little-endian ``uint16`` when ``n_vocab <= 65,536``, else little-endian ``uint32``.

    Raises:
        ValueError: when ``n_vocab`` is not positive or exceeds ``2**32``.
    """
    if not 1 <= n_vocab <= 2**32:
        raise ValueError(f"n_vocab must be between 1 and 2**32, got {n_vocab}")
    return _DTYPES["uint16"] if n_vocab <= 2**16 else _DTYPES["uint32"]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_int(name: str, value: object, minimum: int = 0) -> None:
    # bool is an int subclass; `"n_tokens": true` in a header is corruption, not 1
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TokenFileHeader:
    """What a token file holds and how it was made; serialised as the ``.bin.json`` sidecar.

    Args:
        dtype: ``"uint16"`` or ``"uint32"`` (always little-endian).
        vocab_size: the tokenizer's ``n_vocab`` (largest id + 1); every id is below it.
        n_tokens: number of tokens in the ``.bin``.
        tokenizer_fingerprint: identifies the tokenizer, e.g. ``"sha256:<64 hex>"``.
        eot_id: the id appended after each document, ``None`` when ``append_eot`` is False.
        append_eot: whether an end-of-text id follows each document.
        document_separator: text that separates documents in the inputs (e.g.
            ``"<|endoftext|>"``), or ``None``.
        sources: the input files, each ``{"path": str, "bytes": int}``.
        created: when the file was made, ISO-8601 UTC (default: now).
        format: always :data:`FORMAT`.
        version: always :data:`VERSION`.

    Raises:
        ValueError: when a field is of the wrong type or out of range, when ``dtype`` cannot
            hold ``vocab_size - 1``, or when ``eot_id`` and ``append_eot`` disagree.
    """

    dtype: str
    vocab_size: int
    n_tokens: int
    tokenizer_fingerprint: str
    eot_id: int | None
    append_eot: bool
    document_separator: str | None
    sources: list[dict[str, Any]]
    created: str = field(default_factory=_utc_now)
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.format != FORMAT or self.version != VERSION:
            raise ValueError(f"format/version must be {FORMAT!r}/{VERSION}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        _check_int("vocab_size", self.vocab_size, minimum=1)
        _check_int("n_tokens", self.n_tokens)
        if self.vocab_size - 1 > np.iinfo(_DTYPES[self.dtype]).max:
            raise ValueError(f"dtype {self.dtype} cannot hold ids of vocab_size {self.vocab_size}")
        if not isinstance(self.tokenizer_fingerprint, str) or not self.tokenizer_fingerprint:
            raise ValueError("tokenizer_fingerprint must be a non-empty string")
        if not isinstance(self.append_eot, bool):
            raise ValueError(f"append_eot must be true or false, got {self.append_eot!r}")
        if self.append_eot:
            eot = self.eot_id
            if not isinstance(eot, int) or isinstance(eot, bool) or not 0 <= eot < self.vocab_size:
                raise ValueError(f"eot_id must be an id below vocab_size, got {eot!r}")
        elif self.eot_id is not None:
            raise ValueError("eot_id must be null when append_eot is false")
        if self.document_separator is not None and not isinstance(self.document_separator, str):
            raise ValueError("document_separator must be a string or null")
        self._check_sources()
        try:
            datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            raise ValueError(f"created must be an ISO-8601 time, got {self.created!r}") from None

    def _check_sources(self) -> None:
        if not isinstance(self.sources, list):
            raise ValueError("sources must be a list of {'path': str, 'bytes': int}")
        for s in self.sources:
            if not (isinstance(s, dict) and set(s) == {"path", "bytes"}):
                raise ValueError(f"each source must be {{'path': str, 'bytes': int}}, got {s!r}")
            if not isinstance(s["path"], str):
                raise ValueError(f"a source path must be a string, got {s['path']!r}")
            _check_int("a source's bytes", s["bytes"])

    def to_json(self) -> str:
        """The header as indented JSON, ``format`` and ``version`` first."""
        fields = dataclasses.asdict(self)
        ordered = {"format": self.format, "version": self.version, **fields}
        return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "<string>") -> TokenFileHeader:
        """Parse and validate a header.

        Args:
            text: the JSON text of a header.
            origin: where the text came from (a path), named in error messages.

        Returns:
            The validated header.

        Raises:
            TokenFileError: when the text is not JSON (truncated or corrupt), not a token file
                header, from a newer lmforge, or has missing, unknown or invalid fields.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenFileError(
                f"{origin} is not valid JSON ({e}): the header is truncated or corrupt; {_REENCODE}"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TokenFileError(
                f"{origin} is not a token file header (format {found!r}, expected {FORMAT!r})"
            )
        version = data.get("version")
        if isinstance(version, int) and version > VERSION:
            raise TokenFileError(
                f"{origin} has header version {version}, but this lmforge reads up to version "
                f"{VERSION}: upgrade lmforge"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise TokenFileError(
                f"{origin} is not a valid header (missing fields {missing}, unknown fields "
                f"{unknown}); {_REENCODE}"
            )
        try:
            return cls(**data)
        except ValueError as e:
            raise TokenFileError(f"{origin} is not a valid header: {e}; {_REENCODE}") from None


def write_header(path: PathLike, header: TokenFileHeader) -> None:
    """Write the header of the token file at ``path`` (to ``header_path(path)``), atomically.

    The JSON goes to a temp file in the same folder, is fsynced, then renamed over the header
    path, so a reader sees the old header or the new one, never half of one.

    Args:
        path: the token file (``train.bin``), not the header path.
        header: the header to write.

    Raises:
        OSError: when the folder is not writable; no temp file is left behind.
    """
    write_text_atomic(header_path(path), header.to_json())


class TokenFile:
    """An opened token file: its header and its ids as a read-only memory map.

    Use :meth:`TokenFile.open`; the constructor does no checking.

    Attributes:
        path: the ``.bin`` file.
        header: its validated header.
        tokens: the ids, shape ``(n_tokens,)``, read-only (an ``np.memmap``, or an empty
            array for a zero-token file, which cannot be mapped).
    """

    def __init__(self, path: Path, header: TokenFileHeader, tokens: np.ndarray) -> None:
        self.path = path
        self.header = header
        self.tokens = tokens

    @classmethod
    def open(cls, path: PathLike, *, fingerprint: str | None = None) -> TokenFile:
        """Open a token file, checking its header and size (not its ids: see validate_ids).

        Args:
            path: the ``.bin`` file; its header is ``header_path(path)``.
            fingerprint: when given, the fingerprint of the tokenizer the caller will use;
                a file made by another tokenizer is refused.

        Returns:
            The opened file, its ids memory-mapped read-only.

        Raises:
            TokenFileError: when the ``.bin`` or its header is missing, the header is corrupt
                or from a newer lmforge, the size disagrees with the header, or the
                fingerprint differs.
        """
        path = Path(path)
        hpath = header_path(path)
        if not path.is_file():
            raise TokenFileError(
                f"no token file at {path}: check the path, or make it with "
                "`lmforge tokenizer encode`"
            )
        if not hpath.is_file():
            raise TokenFileError(
                f"no header {hpath} beside {path}: was the encoding interrupted? {_REENCODE}"
            )
        try:
            text = hpath.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TokenFileError(f"{hpath} is not UTF-8 text: it is corrupt; {_REENCODE}") from None
        header = TokenFileHeader.from_json(text, origin=str(hpath))
        dtype = _DTYPES[header.dtype]
        size, expected = path.stat().st_size, header.n_tokens * dtype.itemsize
        if size != expected:
            raise TokenFileError(
                f"{path} has {size:,} bytes but its header says {header.n_tokens:,} "
                f"{header.dtype} tokens ({expected:,} bytes): the file is truncated or does "
                f"not belong to this header; {_REENCODE}"
            )
        if fingerprint is not None and fingerprint != header.tokenizer_fingerprint:
            raise TokenFileError(
                f"{path}: this token file was made by a different tokenizer "
                f"({header.tokenizer_fingerprint}) than the one given ({fingerprint}); "
                f"use the tokenizer that made it, or {_REENCODE} with this one"
            )
        tokens: np.ndarray
        if header.n_tokens == 0:
            tokens = np.empty(0, dtype=dtype)
            tokens.flags.writeable = False
        else:
            tokens = np.memmap(path, dtype=dtype, mode="r", shape=(header.n_tokens,))
        return cls(path, header, tokens)

    def __len__(self) -> int:
        return self.header.n_tokens

    def __repr__(self) -> str:
        h = self.header
        return (
            f"TokenFile({str(self.path)!r}, n_tokens={h.n_tokens:,}, dtype={h.dtype}, "
            f"vocab_size={h.vocab_size}, eot_id={h.eot_id})"
        )

    def documents(self) -> Iterator[np.ndarray]:
        """The documents, in order, each ending with its end-of-text id.

        Yields read-only views into the memory map (no copies); the file is scanned in chunks,
        so memory stays bounded. Tokens after the last end-of-text id, if any, are yielded as a
        final document.

        Raises:
            TokenFileError: when the file has no end-of-text id (encoded with ``--no-eot``).
        """
        eot = self.header.eot_id
        if eot is None:
            raise TokenFileError(
                f"{self.path} has no end-of-text id (encoded with --no-eot), so it cannot be "
                f"split into documents; {_REENCODE} without --no-eot"
            )
        start = 0
        for lo in range(0, len(self), _CHUNK_TOKENS):
            chunk = self.tokens[lo : lo + _CHUNK_TOKENS]
            for end in np.flatnonzero(chunk == eot) + lo + 1:
                yield self.tokens[start:end]
                start = int(end)
        if start < len(self):
            yield self.tokens[start:]

    def validate_ids(self) -> None:
        """Check that every id is below ``vocab_size``, reading the file in chunks.

        Raises:
            TokenFileError: naming the first out-of-range id and its position.
        """
        vocab_size = self.header.vocab_size
        if vocab_size > np.iinfo(self.tokens.dtype).max:
            return  # every value of the dtype is a valid id
        for lo in range(0, len(self), _CHUNK_TOKENS):
            chunk = self.tokens[lo : lo + _CHUNK_TOKENS]
            if int(chunk.max()) >= vocab_size:
                pos = lo + int(np.argmax(chunk >= vocab_size))
                raise TokenFileError(
                    f"{self.path}: token {pos:,} is id {int(self.tokens[pos])}, not below "
                    f"vocab_size {vocab_size}: the file is corrupt or was not made by this "
                    f"header's tokenizer; {_REENCODE}"
                )
