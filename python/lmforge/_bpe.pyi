"""Type stubs for the private Rust extension ``lmforge._bpe`` (use ``lmforge.Tokenizer``)."""

from collections.abc import Iterable
from os import PathLike
from typing import Any

GPT2_PATTERN: str
CL100K_PATTERN: str
O200K_PATTERN: str

class TokenizerFileError(ValueError): ...
class InvalidUtf8Error(ValueError): ...
class EmptyCorpusError(ValueError): ...

def pretokenize(text: str, pattern: str) -> list[str]: ...

class CoreTokenizer:
    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[tuple[str, int]],
        pattern: str,
    ) -> None: ...
    @staticmethod
    def train_files(
        paths: list[str],
        vocab_size: int,
        special_tokens: list[str],
        pattern: str,
        num_threads: int | None,
        progress: bool,
        errors: str,
    ) -> tuple[CoreTokenizer, dict[str, Any]]: ...
    @staticmethod
    def train_texts(
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: list[str],
        pattern: str,
        num_threads: int | None,
        progress: bool,
        batch_bytes: int = ...,
    ) -> tuple[CoreTokenizer, dict[str, Any]]: ...
    def encode(
        self, text: str, allowed: list[str] | None = None, disallowed: list[str] = ...
    ) -> list[int]: ...
    def encode_batch(
        self,
        texts: list[str],
        allowed: list[str] | None = None,
        disallowed: list[str] = ...,
        num_threads: int | None = None,
    ) -> list[list[int]]: ...
    def encode_batch_to_bytes(
        self,
        texts: list[str],
        allowed: list[str] | None = None,
        disallowed: list[str] = ...,
        num_threads: int | None = None,
    ) -> tuple[bytearray, bytearray]: ...
    def encode_to_bytes(
        self,
        text: str,
        allowed: list[str] | None = None,
        disallowed: list[str] = ...,
        num_threads: int | None = None,
    ) -> bytearray: ...
    def encode_files(
        self,
        paths: list[str],
        out: str,
        eot: int | None,
        width: int,
        num_threads: int | None,
        progress: bool,
        errors: str,
    ) -> list[dict[str, Any]]: ...
    @property
    def fingerprint(self) -> str: ...
    def encode_ordinary(self, text: str) -> list[int]: ...
    def decode_bytes(self, ids: list[int]) -> bytes: ...
    def vocab(self) -> dict[int, bytes]: ...
    def merges(self) -> list[tuple[bytes, bytes]]: ...
    def special_tokens(self) -> list[tuple[str, int]]: ...
    @property
    def pattern(self) -> str: ...
    @property
    def pattern_regex(self) -> str: ...
    @property
    def n_vocab(self) -> int: ...
    def __len__(self) -> int: ...
    def save(self, path: str | PathLike[str]) -> None: ...
    @staticmethod
    def load(path: str | PathLike[str]) -> CoreTokenizer: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str, origin: str = ...) -> CoreTokenizer: ...

class CoreStreamEncoder:
    def __init__(self) -> None: ...
    def feed(self, tok: CoreTokenizer, text: str) -> list[int]: ...
    def finish(self, tok: CoreTokenizer) -> list[int]: ...
