"""The public byte-level BPE tokenizer.

A thin wrapper over the Rust core (``lmforge._bpe.CoreTokenizer``): every O(n) operation runs
in Rust with the GIL released, and this class adds Python conveniences (input detection, warnings,
pickling). A tokenizer is fully determined by its vocabulary (id -> bytes), ordered merges,
special tokens and pretokenization pattern.

Training follows GPT-2's byte-level BPE. Ties between equally frequent pairs go to the
lexicographically greatest pair of byte strings ``(left, right)``, as Python's ``max`` over such
tuples would pick, which makes training reproducible and comparable with reference trainers.
When special tokens overlap, the longest match wins.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import cached_property
from typing import TYPE_CHECKING, Any, Union, cast

import numpy as np

from lmforge import _bpe
from lmforge.tokenizer.arguments import as_paths, special_sets
from lmforge.tokenizer.stream import StreamDecoder

if TYPE_CHECKING:
    import tiktoken

    from lmforge.data.token_file import TokenFile

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
"""A filesystem path."""

BUILTIN_PATTERNS = ("gpt2", "cl100k", "o200k")
"""Names of the pretokenization patterns that have hand-written scanners."""

_IDS = np.dtype("<u4")
"""The dtype of ``encode_to_numpy``'s arrays, built once (parsing ``"<u4"`` on every call shows
on short texts)."""
_OFFSETS = np.dtype("<i8")
"""The dtype of ``encode_batch_to_numpy``'s offsets, built once likewise."""


class Tokenizer:
    """A byte-level BPE tokenizer.

    Args:
        vocab: token id -> token bytes. Must contain all 256 single bytes (any ids). Entries
            whose id is a special token's id are allowed if their bytes are that token's UTF-8.
        merges: the merges in rank order, each ``(left_bytes, right_bytes)``; both parts and
            their concatenation must be in ``vocab``.
        special_tokens: special token text -> id (ids distinct from ordinary tokens).
        pattern: ``"gpt2"``, ``"cl100k"``, ``"o200k"`` or any regex for pretokenization.

    Raises:
        ValueError: when the parts are inconsistent (a byte missing, a merge whose parts or
            result are not in the vocabulary, duplicate bytes or ids, an invalid regex).
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = "gpt2",
    ) -> None:
        specials = dict(special_tokens or {})
        ordinary = dict(vocab)
        for text, sid in specials.items():
            if sid in ordinary:
                if ordinary[sid] != text.encode("utf-8"):
                    raise ValueError(
                        f"id {sid} is special token {text!r} but vocab maps it to {ordinary[sid]!r}"
                    )
                del ordinary[sid]
        core = _bpe.CoreTokenizer(ordinary, list(merges), list(specials.items()), pattern)
        self._init(core)

    def _init(self, core: _bpe.CoreTokenizer, info: dict[str, Any] | None = None) -> None:
        self._core = core
        self.train_info: dict[str, Any] = dict(info or {})
        """Statistics of the training run that made this tokenizer (empty when loaded)."""

    @classmethod
    def _wrap(cls, core: _bpe.CoreTokenizer, info: dict[str, Any] | None = None) -> Tokenizer:
        tok = cls.__new__(cls)
        tok._init(core, info)
        return tok

    # ----------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        inputs: PathLike | Sequence[PathLike] | Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        pattern: str = "gpt2",
        num_threads: int | None = None,
        progress: bool = True,
        errors: str = "strict",
    ) -> Tokenizer:
        """Trains a byte-level BPE tokenizer.

        Args:
            inputs: a path, a list or tuple of paths (files are streamed, never loaded whole),
                or any other iterable of ``str`` (each item a separate document: pretokens never
                cross items). To train on texts held in a list, pass ``iter(texts)``.
            vocab_size: the final vocabulary size, counting the 256 bytes, the merges and the
                special tokens.
            special_tokens: strings that are split out of the text before counting, never
                merged, and added last to the vocabulary.
            pattern: ``"gpt2"`` (default), ``"cl100k"``, ``"o200k"`` or a custom regex.
            num_threads: worker threads (default: ``$LMFORGE_NUM_THREADS`` or all cores).
            progress: draw progress bars on stderr.
            errors: ``"strict"`` raises on invalid UTF-8 in files; ``"replace"`` substitutes
                U+FFFD.

        Returns:
            The trained tokenizer; ``tok.train_info`` holds the run's statistics.

        Raises:
            ValueError: ``vocab_size`` below 256 + the number of special tokens, empty or
                duplicate special tokens, an invalid pattern.
            FileNotFoundError, IsADirectoryError: a path that is not a readable file.
            lmforge.InvalidUtf8Error: invalid UTF-8 (names the file and byte offset).
            lmforge.EmptyCorpusError: no text to train on.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 0:
            raise ValueError(f"vocab_size={vocab_size} must be positive")
        if isinstance(special_tokens, str):
            raise TypeError("special_tokens must be a sequence of str, e.g. ('<|endoftext|>',)")
        specials = list(special_tokens)
        paths = as_paths(inputs)
        if paths is not None:
            core, info = _bpe.CoreTokenizer.train_files(
                paths, vocab_size, specials, pattern, num_threads, progress, errors
            )
        else:
            texts = cast(Iterable[str], inputs)
            core, info = _bpe.CoreTokenizer.train_texts(
                texts, vocab_size, specials, pattern, num_threads, progress
            )
        if info["exhausted"]:
            size = 256 + info["merges"] + len(specials)
            warnings.warn(
                f"the corpus ran out of pairs to merge: the vocabulary has {size} tokens, "
                f"fewer than vocab_size={vocab_size}",
                stacklevel=2,
            )
        logger.info("trained %d merges on %d bytes", info["merges"], info["bytes"])
        return cls._wrap(core, info)

    # ----------------------------------------------------------------------------- encoding

    def encode(
        self,
        text: str,
        *,
        allowed_special: AbstractSet[str] | str = "all",
        disallowed_special: AbstractSet[str] | Collection[str] | str = (),
    ) -> list[int]:
        """Encodes ``text`` to token ids, exactly as tiktoken would with the same ranks.

        Args:
            text: the text.
            allowed_special: special tokens that become their ids where they occur (``"all"``,
                the default, suits training data); other special-token text is plain text.
            disallowed_special: special tokens whose presence is an error (``"all"``: every
                special token not allowed, tiktoken's default for untrusted input).

        Raises:
            ValueError: a disallowed special token occurs (the message names it and its
                character offset), or a name is not a special token of this tokenizer.
        """
        if allowed_special == "all" and disallowed_special == ():
            return self._core.encode(text)  # the defaults: no arguments to convert
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        return self._core.encode(text, allowed, disallowed)

    def encode_with_offsets(
        self,
        text: str,
        *,
        allowed_special: AbstractSet[str] | str = "all",
        disallowed_special: AbstractSet[str] | Collection[str] | str = (),
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Encodes ``text`` and gives each token the character span of ``text`` it stands for.

        ``text[start:end]`` is the token's text; a token that holds only part of a multi-byte
        character gets the span of that whole character, so the spans of the tokens sharing
        it overlap (:mod:`lmforge.tokenizer.offsets`).

        Args:
            text: the text.
            allowed_special: as :meth:`encode`.
            disallowed_special: as :meth:`encode`.

        Returns:
            ``(ids, spans)``: the ids of :meth:`encode` and one ``(char_start, char_end)`` per id.

        Raises:
            ValueError: as :meth:`encode`.
        """
        from lmforge.tokenizer.offsets import char_spans

        ids = self.encode(
            text, allowed_special=allowed_special, disallowed_special=disallowed_special
        )
        vocab = self.vocab
        return ids, char_spans(text, [len(vocab[i]) for i in ids])

    def encode_ordinary(self, text: str) -> list[int]:
        """Encodes ``text`` treating special-token strings as plain text."""
        return self._core.encode_ordinary(text)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int | None = None,
        allowed_special: AbstractSet[str] | str = "all",
        disallowed_special: AbstractSet[str] | Collection[str] | str = (),
    ) -> list[list[int]]:
        """Encodes many texts in parallel (``num_threads``, default ``$LMFORGE_NUM_THREADS`` or
        all cores); special-token arguments as :meth:`encode`."""
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        return self._core.encode_batch(list(texts), allowed, disallowed, num_threads)

    def encode_batch_to_numpy(
        self,
        texts: Sequence[str],
        *,
        num_threads: int | None = None,
        allowed_special: AbstractSet[str] | str = "all",
        disallowed_special: AbstractSet[str] | Collection[str] | str = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes many texts in parallel into one flat array: ``(ids, offsets)``, ``uint32`` ids
        of every text one after another and ``int64`` offsets (``len(texts) + 1``, from 0), so
        that text ``i``'s ids are ``ids[offsets[i]:offsets[i + 1]]``. No Python list or per-text
        array is made (``encode_batch`` returns lists); threads and special-token arguments as
        :meth:`encode_batch`."""
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        core = self._core
        ids, offsets = core.encode_batch_to_bytes(list(texts), allowed, disallowed, num_threads)
        return np.frombuffer(ids, _IDS), np.frombuffer(offsets, _OFFSETS)

    def encode_to_numpy(
        self,
        text: str,
        *,
        num_threads: int | None = None,
        allowed_special: AbstractSet[str] | str = "all",
        disallowed_special: AbstractSet[str] | Collection[str] | str = (),
    ) -> np.ndarray:
        """Encodes ``text`` into a ``uint32`` array, in parallel for large texts, with no
        Python list in between; special-token arguments as :meth:`encode`."""
        if allowed_special == "all" and disallowed_special == ():
            # the default special-token arguments: none to convert
            data = self._core.encode_to_bytes(text, num_threads=num_threads)
        else:
            allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
            data = self._core.encode_to_bytes(text, allowed, disallowed, num_threads)
        # A short text's call costs ~0.5 µs, so the details count: the dtype positional (the
        # keyword form costs 0.14 µs more), no special-token sets for the defaults (0.2 µs).
        return np.frombuffer(data, _IDS)

    def encode_files(
        self,
        inputs: PathLike | Sequence[PathLike],
        out_path: PathLike,
        *,
        append_eot: bool = True,
        dtype: str | np.dtype | None = None,
        num_threads: int | None = None,
        progress: bool = True,
        errors: str = "strict",
    ) -> TokenFile:
        """Encodes text files into a token file for training (``out_path`` + its ``.json``).

        Inputs are plain UTF-8 text or ``.jsonl`` (a ``"text"`` field per line), either possibly
        ``.gz``/``.xz``/``.zst`` compressed. A document is a whole text file, the text between
        end-of-text separators in it, or one ``.jsonl`` record; with ``append_eot`` each
        non-empty document is followed by exactly one end-of-text token. Memory stays bounded
        whatever the input size; the file appears only when complete.

        Args:
            inputs: a path or a list of paths.
            out_path: the ``.bin`` to write; the header goes to ``out_path + ".json"``.
            append_eot: end every document with the end-of-text token.
            dtype: ``"uint16"`` or ``"uint32"`` (default: uint16 when ``n_vocab`` <= 65,536).
            num_threads: worker threads (default ``$LMFORGE_NUM_THREADS`` or all cores).
            progress: draw a progress bar with MB/s on stderr.
            errors: ``"strict"`` or ``"replace"`` for invalid UTF-8 in text files.

        Returns:
            The written file, opened (`lmforge.data.TokenFile`).
        """
        from lmforge.tokenizer.encode_files import encode_files

        paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        return encode_files(
            self,
            paths,
            out_path,
            append_eot=append_eot,
            dtype=dtype,
            num_threads=num_threads,
            progress=progress,
            errors=errors,
        )

    def _special_sets(
        self,
        allowed_special: AbstractSet[str] | str,
        disallowed_special: AbstractSet[str] | Collection[str] | str,
    ) -> tuple[list[str] | None, list[str]]:
        if allowed_special == "all" and not disallowed_special and disallowed_special != "":
            return None, []  # the defaults, without building sets on every call
        return special_sets(set(self.special_tokens), allowed_special, disallowed_special)

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encodes a stream of strings as if they were one concatenated string.

        Memory stays bounded by the longest unfinished pretoken for the built-in patterns (a
        custom regex has no known safe cut points, so it buffers up to the next special token).
        """
        stream = _bpe.CoreStreamEncoder()
        for text in iterable:
            yield from stream.feed(self._core, text)
        yield from stream.finish(self._core)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens ``ids``, concatenated.

        Raises:
            ValueError: an id that is not in the vocabulary.
        """
        return self._core.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decodes ``ids`` to text; invalid UTF-8 (e.g. a cut multi-byte character) becomes
        U+FFFD with ``errors="replace"`` or raises with ``errors="strict"``."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decoder(self, errors: str = "replace") -> StreamDecoder:
        """An incremental decoder for streaming generation: ``feed(ids)`` returns only whole
        characters, keeping a character's first bytes until its last token arrives."""
        return StreamDecoder(self, errors=errors)

    # --------------------------------------------------------------------------- inspection

    @cached_property
    def vocab(self) -> dict[int, bytes]:
        """Token id -> bytes, special tokens included (as their UTF-8 bytes)."""
        vocab: dict[int, bytes] = self._core.vocab()
        for text, sid in self._core.special_tokens():
            vocab[sid] = text.encode("utf-8")
        return vocab

    @cached_property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges ``(left, right)`` in rank order."""
        return self._core.merges()

    @cached_property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id."""
        return dict(self._core.special_tokens())

    @property
    def pattern(self) -> str:
        """The pretokenization pattern's name (``"gpt2"``, ...) or custom regex."""
        return self._core.pattern

    @property
    def pattern_regex(self) -> str:
        """The regex that the pattern is equivalent to."""
        return self._core.pattern_regex

    @property
    def fingerprint(self) -> str:
        """A hash of the canonical content (bytes by id, merges, special tokens, pattern regex):
        equal for the same tokenizer loaded from any format. Token files record it."""
        return self._core.fingerprint

    @property
    def n_vocab(self) -> int:
        """Largest token id + 1, as tiktoken: the least embedding size a model needs."""
        return self._core.n_vocab

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab={len(self)}, n_vocab={self.n_vocab}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)}, pattern={self.pattern!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------------- persistence

    def save(self, path: PathLike) -> None:
        """Saves to ``path`` in lmforge's versioned JSON format, atomically."""
        self._core.save(os.fspath(path))

    @classmethod
    def load(cls, path: PathLike) -> Tokenizer:
        """Loads a tokenizer saved by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            lmforge.TokenizerFileError: the file is truncated, corrupt or of an unknown version.
        """
        return cls._wrap(_bpe.CoreTokenizer.load(os.fspath(path)))

    def to_json(self) -> str:
        """The tokenizer file's JSON text."""
        return self._core.to_json()

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Parses the JSON text written by :meth:`to_json`."""
        return cls._wrap(_bpe.CoreTokenizer.from_json(text))

    # ------------------------------------------------------------------ other formats

    @classmethod
    def from_gpt2_files(cls, encoder_json: PathLike, vocab_bpe: PathLike) -> Tokenizer:
        """Loads GPT-2's published ``encoder.json`` + ``vocab.bpe`` (``merges.txt``)."""
        from lmforge.tokenizer.formats import load_gpt2

        return load_gpt2(encoder_json, vocab_bpe)

    @classmethod
    def from_tiktoken_file(
        cls, path: PathLike, *, pattern: str, special_tokens: Mapping[str, int] | None = None
    ) -> Tokenizer:
        """Loads a tiktoken ``.tiktoken`` rank file (which carries no pattern or specials)."""
        from lmforge.tokenizer.formats_tiktoken import load_tiktoken

        return load_tiktoken(path, pattern=pattern, special_tokens=special_tokens)

    def save_tiktoken(self, path: PathLike) -> None:
        """Writes a tiktoken ``.tiktoken`` rank file (ranks = ids), atomically."""
        from lmforge.tokenizer.formats_tiktoken import save_tiktoken

        save_tiktoken(self, path)

    def to_tiktoken(self, name: str | None = None) -> tiktoken.Encoding:
        """An equivalent ``tiktoken.Encoding`` (needs the ``tiktoken`` package)."""
        from lmforge.tokenizer.formats_tiktoken import to_tiktoken

        return to_tiktoken(self, name)

    def save_hf(self, path: PathLike) -> None:
        """Writes a Hugging Face ``tokenizer.json`` that ``tokenizers`` encodes identically."""
        from lmforge.tokenizer.formats_hf import save_hf

        save_hf(self, path)

    @classmethod
    def from_hf(cls, path: PathLike) -> Tokenizer:
        """Loads a Hugging Face byte-level BPE ``tokenizer.json``."""
        from lmforge.tokenizer.formats_hf import load_hf

        return load_hf(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Tokenizer.from_json, (self.to_json(),))
