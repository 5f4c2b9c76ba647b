"""tiktoken's rank files (``.tiktoken``) and ``tiktoken.Encoding`` objects.

A rank file lists each ordinary token as ``base64(token_bytes) rank``, one per line. The rank is
both the token's id and its merge priority: tiktoken joins the lowest-ranked adjacent pair first.
The file carries no merges, special tokens or pattern, so the last two are arguments and the
merges are rebuilt: BPE run on a token's own bytes with only the ranks below its own must end in
exactly two parts, the merge that made it. This holds for every vocabulary made by BPE training;
checking it (rather than splitting tokens any old way) refuses files that are not BPE
vocabularies, on which lmforge's merge-rank rule and tiktoken's rank rule could disagree.

Writing uses ids as ranks. That is tiktoken's rule only when merged tokens' ids increase with
their merge rank (trained layouts and GPT-2's do), so other layouts are refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from itertools import pairwise
from typing import TYPE_CHECKING

from lmforge._atomic import write_text_atomic
from lmforge.tokenizer.tokenizer import PathLike, Tokenizer

if TYPE_CHECKING:
    import tiktoken


def load_tiktoken(
    path: PathLike, *, pattern: str, special_tokens: Mapping[str, int] | None = None
) -> Tokenizer:
    """Loads a tiktoken rank file; ranks become ids and the merges are rebuilt.

    Args:
        path: the ``.tiktoken`` file (``base64 rank`` per line).
        pattern: the pretokenization pattern (``"gpt2"``, ``"cl100k"``, ``"o200k"`` or a regex);
            the file does not carry it.
        special_tokens: special token text -> id, ids distinct from the file's ranks.

    Returns:
        The tokenizer, whose ids equal tiktoken's for the same file, pattern and special tokens.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line, a duplicate token or rank, a missing byte, a token that is
            not a BPE merge of lower-ranked tokens, or a special token id used by a rank (the
            message names the file and, where there is one, the line).
    """
    name = os.fspath(path)
    ranks, lines = _read_ranks(name)
    for b in range(256):
        if bytes([b]) not in ranks:
            raise ValueError(f"{name}: byte 0x{b:02x} has no rank; a byte-level file needs all 256")
    merges = _rebuild_merges(ranks, lines, name)
    vocab = {rank: token for token, rank in ranks.items()}
    specials = dict(special_tokens or {})
    for text, sid in specials.items():
        if sid in vocab:
            raise ValueError(
                f"{name}: special token {text!r} has id {sid}, the rank of {vocab[sid]!r} "
                f"(line {lines[sid]}); give it an id not in the file"
            )
    try:
        return Tokenizer(vocab, merges, specials, pattern)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def save_tiktoken(tok: Tokenizer, path: PathLike) -> None:
    """Writes ``tok``'s ordinary tokens as a tiktoken rank file (ranks = ids), atomically.

    Special tokens and the pattern are not part of the format; pass them to
    :func:`load_tiktoken` (``tok.special_tokens``, ``tok.pattern``).

    Raises:
        ValueError: ``tok``'s ids do not work as tiktoken ranks (see :func:`mergeable_ranks`).
        OSError: the file cannot be written.
    """
    ranks = mergeable_ranks(tok)
    lines = [
        f"{base64.b64encode(token).decode('ascii')} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    ]
    write_text_atomic(path, "".join(lines))


def to_tiktoken(tok: Tokenizer, name: str | None = None) -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` that encodes as ``tok`` does.

    Args:
        tok: the tokenizer.
        name: the encoding's name (default ``"lmforge-<pattern>"`` or ``"lmforge"``).

    Returns:
        The encoding; ``enc.encode(text, allowed_special="all") == tok.encode(text)``.

    Raises:
        ImportError: tiktoken is not installed.
        ValueError: ``tok``'s ids do not work as tiktoken ranks (see :func:`mergeable_ranks`).
    """
    try:
        import tiktoken
    except ImportError as e:
        raise ImportError("to_tiktoken needs the tiktoken package: pip install tiktoken") from e
    if name is None:
        name = f"lmforge-{tok.pattern}" if tok.pattern in ("gpt2", "cl100k", "o200k") else "lmforge"
    return tiktoken.Encoding(
        name,
        pat_str=tok.pattern_regex,
        mergeable_ranks=mergeable_ranks(tok),
        special_tokens=tok.special_tokens,
    )


def mergeable_ranks(tok: Tokenizer) -> dict[bytes, int]:
    """``tok``'s ordinary tokens as tiktoken ranks: token bytes -> id.

    Raises:
        ValueError: merged tokens' ids do not increase with their merge rank, or a multi-byte
            token is made by no merge; tiktoken would then merge differently from ``tok``.
    """
    specials = set(tok.special_tokens.values())
    ranks = {token: i for i, token in tok.vocab.items() if i not in specials}
    merged = [ranks[left + right] for left, right in tok.merges]
    for rank, (a, b) in enumerate(pairwise(merged)):
        if a >= b:
            raise ValueError(
                f"merges {rank} and {rank + 1} make tokens {a} and {b}: as tiktoken ranks, ids "
                "of merged tokens must increase with merge order"
            )
    if len(ranks) != 256 + len(merged):
        raise ValueError(
            f"{len(ranks) - 256 - len(merged)} multi-byte tokens are made by no merge; "
            "tiktoken would use them, lmforge does not"
        )
    return ranks


def _read_ranks(name: str) -> tuple[dict[bytes, int], dict[int, int]]:
    """The file's token -> rank, and rank -> line number (for messages)."""
    ranks: dict[bytes, int] = {}
    lines: dict[int, int] = {}
    with open(name, "rb") as f:
        for n, raw in enumerate(f, 1):
            fields = raw.split()
            if not fields:
                continue
            where = f"{name}:{n}"
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(f"{where}: expected 'base64 rank', got {raw[:80]!r}")
            try:
                token = base64.b64decode(fields[0], validate=True)
            except binascii.Error as e:
                raise ValueError(f"{where}: {fields[0][:80]!r} is not base64 ({e})") from e
            rank = int(fields[1])
            if not token:
                raise ValueError(f"{where}: the token is empty")
            if token in ranks:
                raise ValueError(f"{where}: token {token!r} already has rank {ranks[token]}")
            if rank in lines:
                raise ValueError(f"{where}: rank {rank} is already used on line {lines[rank]}")
            ranks[token] = rank
            lines[rank] = n
    return ranks, lines


def _rebuild_merges(
    ranks: dict[bytes, int], lines: dict[int, int], name: str
) -> list[tuple[bytes, bytes]]:
    """The merge of every multi-byte token, in rank order."""
    merges = []
    for token, rank in sorted(
        ((t, r) for t, r in ranks.items() if len(t) > 1), key=lambda item: item[1]
    ):
        parts = _bpe(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(
                f"{name}:{lines[rank]}: not a BPE vocabulary: the tokens ranked below {rank} "
                f"split {token!r} into {len(parts)} parts {parts!r}, not the two of a merge"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _bpe(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """tiktoken's merging of ``token``'s bytes using only ranks below ``limit``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts
