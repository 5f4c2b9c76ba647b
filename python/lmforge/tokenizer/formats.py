"""GPT-2's published tokenizer files, and what the other file formats share.

GPT-2's ``encoder.json`` maps tokens, written through GPT-2's byte-to-unicode table (every byte
as a printable character), to ids; ``vocab.bpe`` lists the merges in rank order, one
``left right`` pair per line after an optional ``#version`` line. Hugging Face's byte-level
files use the same table (``formats_hf.py``); tiktoken's rank files are in ``formats_tiktoken.py``.

Every writer here goes through :func:`lmforge._atomic.write_text_atomic` (temp file, fsync,
rename), as ``Tokenizer.save`` does, so a crash never leaves a half-written tokenizer behind.
"""

from __future__ import annotations

import json
import os

from lmforge.tokenizer.tokenizer import PathLike, Tokenizer

GPT2_EOT = "<|endoftext|>"


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's table from printable character back to byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in byte order, to
    code points from 256 upwards.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def gpt2_byte_encoder() -> list[str]:
    """GPT-2's table from byte to printable character, indexed by byte (inverse of
    :func:`gpt2_byte_decoder`)."""
    encoder = [""] * 256
    for char, b in gpt2_byte_decoder().items():
        encoder[b] = char
    return encoder


def _decode(token: str, table: dict[str, int], source: str) -> bytes:
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(f"{source}: {token!r} is not in GPT-2's byte alphabet") from e


def load_gpt2(encoder_json: PathLike, vocab_bpe: PathLike) -> Tokenizer:
    """Loads GPT-2's published tokenizer files (``encoder.json`` and ``vocab.bpe``).

    ``<|endoftext|>`` becomes the special token with its published id (50256).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the files are not GPT-2 tokenizer files.
    """
    table = gpt2_byte_decoder()
    enc_name, bpe_name = os.fspath(encoder_json), os.fspath(vocab_bpe)
    with open(enc_name, encoding="utf-8") as f:
        try:
            encoder = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{enc_name}: not valid JSON ({e})") from e
    if not isinstance(encoder, dict):
        raise ValueError(f"{enc_name}: expected a JSON object of token -> id")
    specials = {GPT2_EOT: encoder.pop(GPT2_EOT)} if GPT2_EOT in encoder else {}
    vocab = {int(i): _decode(t, table, enc_name) for t, i in encoder.items()}
    merges = []
    with open(bpe_name, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{bpe_name}:{n}: expected 'left right', got {line!r}")
            merges.append((_decode(parts[0], table, bpe_name), _decode(parts[1], table, bpe_name)))
    return Tokenizer(vocab, merges, specials, pattern="gpt2")
