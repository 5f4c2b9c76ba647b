"""Token files: header round trips, memory-mapped reads, and every refusal of TokenFile.open."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from lmforge.data import (
    TokenFile,
    TokenFileError,
    TokenFileHeader,
    dtype_for,
    header_path,
    write_header,
)
from lmforge.data import token_file as token_file_module

FINGERPRINT = "sha256:" + "ab" * 32
EOT = 9


def make_header(**overrides) -> TokenFileHeader:
    fields = dict(
        dtype="uint16",
        vocab_size=10,
        n_tokens=0,
        tokenizer_fingerprint=FINGERPRINT,
        eot_id=EOT,
        append_eot=True,
        document_separator="<|endoftext|>",
        sources=[{"path": "corpus.txt", "bytes": 123}],
        created="2025-01-01T00:00:00+00:00",
    )
    return TokenFileHeader(**{**fields, **overrides})


def write_token_file(tmp_path, ids, **overrides):
    """Write ``train.bin`` with numpy and its header with write_header; return the .bin path."""
    header = make_header(n_tokens=len(ids), **overrides)
    path = tmp_path / "train.bin"
    np.asarray(ids, dtype=dtype_for(header.vocab_size)).tofile(path)
    write_header(path, header)
    return path


def test_round_trip(tmp_path):
    ids = [1, 2, EOT, 3, EOT]
    path = write_token_file(tmp_path, ids)
    tf = TokenFile.open(path, fingerprint=FINGERPRINT)
    assert len(tf) == 5 and tf.tokens.shape == (5,)
    assert tf.tokens.dtype == np.dtype("<u2") and tf.tokens.tolist() == ids
    assert tf.header == make_header(n_tokens=5)
    assert isinstance(tf.tokens, np.memmap)
    with pytest.raises(ValueError):
        tf.tokens[0] = 7
    assert "n_tokens=5" in repr(tf) and "uint16" in repr(tf)


def test_header_json_round_trip():
    header = make_header(n_tokens=7, document_separator=None, sources=[])
    text = header.to_json()
    assert json.loads(text)["format"] == "lmforge-tokens" and text.startswith('{\n  "format"')
    assert TokenFileHeader.from_json(text) == header


def test_dtype_for():
    assert dtype_for(1) == dtype_for(65_536) == np.dtype("<u2")
    assert dtype_for(65_537) == dtype_for(2**32) == np.dtype("<u4")
    with pytest.raises(ValueError, match="2\\*\\*32"):
        dtype_for(2**32 + 1)


def test_uint32_for_large_vocab(tmp_path):
    ids = [0, 70_000, 99_999, 65_536]
    path = write_token_file(tmp_path, ids, dtype="uint32", vocab_size=100_000, eot_id=99_999)
    tf = TokenFile.open(path)
    assert tf.tokens.dtype == np.dtype("<u4") and tf.tokens.tolist() == ids
    assert path.stat().st_size == 4 * len(ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "int64"}, "dtype must be one of"),
        ({"dtype": "uint16", "vocab_size": 65_537}, "cannot hold"),
        ({"n_tokens": -1}, "n_tokens"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"eot_id": None}, "eot_id"),
        ({"eot_id": 10}, "eot_id"),
        ({"append_eot": False}, "eot_id must be null"),
        ({"tokenizer_fingerprint": ""}, "fingerprint"),
        ({"sources": [{"path": "a.txt"}]}, "source"),
        ({"created": "yesterday"}, "ISO-8601"),
    ],
)
def test_header_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_header(**overrides)


def test_created_defaults_to_now_utc():
    fields = {k: v for k, v in dataclasses.asdict(make_header()).items() if k != "created"}
    assert TokenFileHeader(**fields).created.endswith("+00:00")


def test_missing_bin(tmp_path):
    with pytest.raises(TokenFileError, match="no token file at .*missing.bin"):
        TokenFile.open(tmp_path / "missing.bin")


def test_missing_header(tmp_path):
    path = write_token_file(tmp_path, [1, 2])
    header_path(path).unlink()
    with pytest.raises(TokenFileError) as e:
        TokenFile.open(path)
    assert "no header" in str(e.value) and "train.bin.json" in str(e.value)
    assert "was the encoding interrupted? re-run `lmforge tokenizer encode`" in str(e.value)


def _rewrite_header(path, edit):
    data = json.loads(header_path(path).read_text())
    edit(data)
    header_path(path).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: header_path(p).write_text("not json"), "is not valid JSON"),
        (lambda p: header_path(p).write_text(header_path(p).read_text()[:40]), "truncated"),
        (lambda p: header_path(p).write_bytes(b"\xff\xfe"), "not UTF-8"),
        (lambda p: header_path(p).write_text("[1, 2]"), "not a token file header"),
        (
            lambda p: _rewrite_header(p, lambda d: d.update(format="lmforge-tokenizer")),
            "not a token file header \\(format 'lmforge-tokenizer'",
        ),
        (
            lambda p: _rewrite_header(p, lambda d: d.update(version=2)),
            "header version 2.*upgrade lmforge",
        ),
        (lambda p: _rewrite_header(p, lambda d: d.pop("n_tokens")), "missing fields \\['n_tokens'"),
        (lambda p: _rewrite_header(p, lambda d: d.update(extra=1)), "unknown fields \\['extra'"),
        (lambda p: _rewrite_header(p, lambda d: d.update(n_tokens="3")), "n_tokens must be"),
        (lambda p: _rewrite_header(p, lambda d: d.update(n_tokens=4)), "has 6 bytes but"),
        (lambda p: p.write_bytes(b"\x01\x00\x02\x00\x03"), "has 5 bytes but .* 3 uint16 tokens"),
    ],
    ids=[
        "not-json",
        "truncated",
        "not-utf8",
        "not-object",
        "wrong-format",
        "future-version",
        "missing-field",
        "unknown-field",
        "wrong-type",
        "size-vs-header",
        "truncated-bin",
    ],
)
def test_open_refuses_corrupt_files(tmp_path, corrupt, message):
    path = write_token_file(tmp_path, [1, 2, EOT])
    corrupt(path)
    with pytest.raises(TokenFileError, match=message) as e:
        TokenFile.open(path)
    assert "train.bin" in str(e.value)


def test_open_refuses_another_tokenizer(tmp_path):
    path = write_token_file(tmp_path, [1, 2, EOT])
    other = "sha256:" + "cd" * 32
    with pytest.raises(TokenFileError) as e:
        TokenFile.open(path, fingerprint=other)
    assert (
        f"this token file was made by a different tokenizer ({FINGERPRINT}) "
        f"than the one given ({other})"
    ) in str(e.value)


def test_header_write_is_atomic(tmp_path, monkeypatch):
    path = write_token_file(tmp_path, [1, 2, EOT])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.bin.json"]
    before = header_path(path).read_text()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_header(path, make_header(n_tokens=99))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.bin.json"]
    assert header_path(path).read_text() == before


def test_header_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_token_file(tmp_path, [1, 2, EOT])
    finally:
        os.umask(old)
    assert header_path(path).stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


@pytest.mark.parametrize("chunk", [2, 3, 1 << 22])
def test_documents(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(token_file_module, "_CHUNK_TOKENS", chunk)
    path = write_token_file(tmp_path, [1, 2, EOT, 3, EOT, EOT, 4, 5, 6, EOT, 7])
    docs = [d.tolist() for d in TokenFile.open(path).documents()]
    assert docs == [[1, 2, EOT], [3, EOT], [EOT], [4, 5, 6, EOT], [7]]


def test_documents_need_an_eot(tmp_path):
    path = write_token_file(tmp_path, [1, 2, 3], eot_id=None, append_eot=False)
    with pytest.raises(TokenFileError, match="no end-of-text id"):
        next(TokenFile.open(path).documents())


@pytest.mark.parametrize("chunk", [2, 1 << 22])
def test_validate_ids(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(token_file_module, "_CHUNK_TOKENS", chunk)
    ok = write_token_file(tmp_path, [0, 1, 9, 9, 2])
    TokenFile.open(ok).validate_ids()
    bad = write_token_file(tmp_path, [0, 1, 9, 12, 2, 10])  # vocab_size 10: 12 and 10 are bad
    with pytest.raises(TokenFileError, match="token 3 is id 12, not below vocab_size 10"):
        TokenFile.open(bad).validate_ids()


def test_validate_ids_full_uint16_range(tmp_path):
    path = write_token_file(tmp_path, [0, 65_535], vocab_size=65_536, eot_id=0)
    TokenFile.open(path).validate_ids()


def test_zero_token_file(tmp_path):
    path = write_token_file(tmp_path, [])
    assert path.stat().st_size == 0
    tf = TokenFile.open(path)
    assert len(tf) == 0 and tf.tokens.shape == (0,) and tf.tokens.dtype == np.dtype("<u2")
    assert not tf.tokens.flags.writeable
    assert list(tf.documents()) == []
    tf.validate_ids()
