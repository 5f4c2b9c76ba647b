"""Saving, loading, pickling and constructing tokenizers from their parts."""

from __future__ import annotations

import json
import pickle

import pytest

from lmforge import Tokenizer, TokenizerFileError


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "tok.json"
    trained.save(path)
    loaded = Tokenizer.load(path)
    assert loaded == trained
    assert loaded.vocab == trained.vocab
    assert loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.pattern == trained.pattern
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind


def test_file_is_versioned_json(trained_gpt2, tmp_path):
    path = tmp_path / "tok.json"
    trained_gpt2.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "lmforge-tokenizer"
    assert data["version"] == 1
    assert data["pattern"] == "gpt2"
    assert len(data["vocab"]) + len(data["special_tokens"]) == len(trained_gpt2)


def test_custom_pattern_round_trips(tmp_path):
    tok = Tokenizer.train(iter(["aa bb aa bb cc"] * 3), 260, pattern=r"\w+|\s+", progress=False)
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").pattern == r"\w+|\s+"


def test_constructor_from_parts(trained):
    rebuilt = Tokenizer(trained.vocab, trained.merges, trained.special_tokens, trained.pattern)
    assert rebuilt == trained


def test_pickle(trained_gpt2):
    back = pickle.loads(pickle.dumps(trained_gpt2))
    assert back == trained_gpt2
    assert back.encode("hello world") == trained_gpt2.encode("hello world")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[: len(s) // 2],
        lambda s: "",
        lambda s: s.replace('"version":1', '"version":99'),
        lambda s: s.replace('"format":"lmforge-tokenizer"', '"format":"other"'),
        lambda s: s.replace('[0,"00"]', '[0,"0g"]'),
        lambda s: s.replace('[97,"61"]', '[97,"62"]'),
    ],
    ids=["truncated", "empty", "future-version", "wrong-format", "bad-hex", "duplicate-bytes"],
)
def test_corrupt_files_raise_clear_errors(trained_gpt2, tmp_path, mangle):
    path = tmp_path / "tok.json"
    path.write_text(mangle(trained_gpt2.to_json()))
    with pytest.raises(TokenizerFileError, match="tok.json"):
        Tokenizer.load(path)


def test_binary_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "tok.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(TokenizerFileError, match="not UTF-8"):
        Tokenizer.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "nope.json")


def test_inconsistent_parts_are_rejected():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="byte 0x07"):
        Tokenizer({i: b for i, b in vocab.items() if i != 7}, [])
    with pytest.raises(ValueError, match="id 3 is special token"):
        Tokenizer(vocab, [], {"<s>": 3})
    with pytest.raises(ValueError, match="already uses"):
        Tokenizer(vocab, [], {"<s>": 300, "<t>": 300})
    with pytest.raises(ValueError, match="special token"):
        Tokenizer(vocab | {300: b"<t>"}, [], {"<s>": 300})
