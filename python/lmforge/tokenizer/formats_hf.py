"""Hugging Face ``tokenizers`` files (``tokenizer.json``) for byte-level BPE.

Only the configuration that encodes exactly as lmforge does is written or read: a BPE model
whose tokens are spelled through GPT-2's byte-to-unicode table, no normalizer, and a
pre-tokenizer that is either ``Sequence[Split(Regex(pattern), "Isolated"), ByteLevel(use_regex
=false)]`` (what we write, and what tiktoken conversions such as Llama 3's use) or GPT-2's own
``ByteLevel(use_regex=true)``, whose built-in regex is GPT-2's pattern. Special tokens are
``added_tokens``, which HF splits out before pre-tokenizing, leftmost-longest as lmforge does.

HF's BPE applies merges by rank to pairs of parts, while lmforge and tiktoken join any adjacent
parts whose concatenation is a merged token; on vocabularies made by BPE training (and GPT-2's)
the two agree, which the tests check. Files that would tokenize differently (a normalizer,
another model or pre-tokenizer, a prefix space, stripping added tokens) are refused with a
``ValueError`` that says what is unsupported. The post-processor, truncation and padding are
ignored: they never change ``encode(text, add_special_tokens=False).ids``. ``ignore_merges`` is
read either way: lmforge, like tiktoken, takes a pretoken that is itself a token whole, and on a
BPE vocabulary merging gives that same token.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lmforge import _bpe
from lmforge._atomic import write_text_atomic
from lmforge.tokenizer.formats import gpt2_byte_decoder, gpt2_byte_encoder
from lmforge.tokenizer.tokenizer import PathLike, Tokenizer

TIKTOKEN_GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
"""tiktoken's spelling of GPT-2's regex, equivalent to lmforge's ``"gpt2"``."""

PATTERN_NAMES = {
    _bpe.GPT2_PATTERN: "gpt2",
    TIKTOKEN_GPT2_PATTERN: "gpt2",
    _bpe.CL100K_PATTERN: "cl100k",
    _bpe.O200K_PATTERN: "o200k",
}
"""Published regex text -> lmforge's name for it (exact text only: no regex is parsed)."""


def save_hf(tok: Tokenizer, path: PathLike) -> None:
    """Writes ``tok`` as a Hugging Face ``tokenizer.json``, atomically.

    ``tokenizers.Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids`` equals
    ``tok.encode(text)``.

    Raises:
        OSError: the file cannot be written.
    """
    spell = gpt2_byte_encoder()
    specials = tok.special_tokens
    special_ids = set(specials.values())
    vocab = {
        "".join(spell[b] for b in token): i
        for i, token in sorted(tok.vocab.items())
        if i not in special_ids
    }
    merges = [
        ["".join(spell[b] for b in left), "".join(spell[b] for b in right)]
        for left, right in tok.merges
    ]
    added = [
        {
            "id": sid,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for text, sid in sorted(specials.items(), key=lambda item: item[1])
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False}
    split = {"type": "Split", "pattern": {"Regex": tok.pattern_regex}}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                split | {"behavior": "Isolated", "invert": False},
                byte_level | {"use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": byte_level | {"use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    write_text_atomic(path, json.dumps(doc, ensure_ascii=False))


def load_hf(path: PathLike) -> Tokenizer:
    """Loads a Hugging Face ``tokenizer.json`` holding a byte-level BPE tokenizer.

    Every added token becomes a special token; the pattern comes from the pre-tokenizer (the
    published gpt2/cl100k/o200k regexes by name, any other regex as itself).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or a configuration that lmforge cannot reproduce exactly (the
            message names the file and the unsupported part).
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise ValueError(f"{name}: not a tokenizers file (no 'model' object)")
    if doc.get("normalizer") is not None:
        raise ValueError(f"{name}: unsupported normalizer {_kind(doc['normalizer'])}")
    decoder = doc.get("decoder")
    if decoder is not None and _kind(decoder) != "ByteLevel":
        raise ValueError(f"{name}: unsupported decoder {_kind(decoder)} (expected ByteLevel)")
    try:
        pattern = _pattern(doc.get("pre_tokenizer"), name)
        specials = _added_tokens(doc.get("added_tokens") or [], name)
        vocab, merges = _model(doc["model"], specials, name)
    except (AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{name}: malformed tokenizers file ({type(e).__name__}: {e})") from e
    try:
        return Tokenizer(vocab, merges, specials, pattern)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def _kind(part: Any) -> str:
    """The ``type`` of a configuration part, for comparisons and messages."""
    return str(part.get("type")) if isinstance(part, dict) else json.dumps(part)


def _pattern(pre: Any, name: str) -> str:
    """The pattern that a supported pre-tokenizer applies."""
    steps = pre.get("pretokenizers") if _kind(pre) == "Sequence" else [pre]
    kinds = [_kind(step) for step in steps or []]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        _check_byte_level(steps[0], name)
        return "gpt2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex")
        if regex is None or split.get("behavior") != "Isolated" or split.get("invert"):
            raise ValueError(
                f"{name}: unsupported Split {split.get('pattern')} behavior="
                f"{split.get('behavior')!r} invert={split.get('invert')!r} (expected a Regex "
                "pattern, behavior 'Isolated', invert false)"
            )
        _check_byte_level(steps[1], name)
        return PATTERN_NAMES.get(regex, regex)
    raise ValueError(
        f"{name}: unsupported pre_tokenizer {' + '.join(kinds) or _kind(pre)} (expected "
        "ByteLevel with use_regex, or Sequence[Split(Regex), ByteLevel without use_regex])"
    )


def _check_byte_level(step: dict[str, Any], name: str) -> None:
    if step.get("add_prefix_space"):
        raise ValueError(f"{name}: unsupported ByteLevel add_prefix_space=true")


def _added_tokens(added: list[Any], name: str) -> dict[str, int]:
    """Added tokens as special tokens: text -> id."""
    specials = {}
    for token in added:
        options = [k for k in ("single_word", "lstrip", "rstrip") if token.get(k)]
        if options:
            raise ValueError(f"{name}: unsupported {options} on added token {token['content']!r}")
        specials[token["content"]] = token["id"]
    return specials


def _model(
    model: dict[str, Any], specials: dict[str, int], name: str
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The ordinary vocabulary and merges of a byte-level BPE model."""
    if model.get("type") != "BPE":
        raise ValueError(f"{name}: unsupported model type {model.get('type')!r} (expected BPE)")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"{name}: unsupported BPE option {key}={model[key]!r}")
    table = gpt2_byte_decoder()

    def decode(text: str) -> bytes:
        try:
            return bytes(table[c] for c in text)
        except KeyError as e:
            raise ValueError(f"{name}: {text!r} is not in GPT-2's byte alphabet") from e

    special_ids = set(specials.values())
    vocab = {}
    for text, i in model.get("vocab", {}).items():
        if i in special_ids:
            if specials.get(text) != i:
                raise ValueError(f"{name}: id {i} is both {text!r} and an added token")
            continue  # HF lists added tokens in the model's vocab too
        vocab[i] = decode(text)
    merges = []
    for n, merge in enumerate(model.get("merges", [])):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2:
            raise ValueError(f"{name}: merge {n} is {merge!r}, not a pair")
        merges.append((decode(pair[0]), decode(pair[1])))
    return vocab, merges
