"""open_training_file on real token files: each mismatch with the model or tokenizer refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge import Tokenizer
from lmforge.data import (
    TokenFile,
    TokenFileError,
    header_path,
    open_training_file,
)
from lmforge.model import pad_vocab_size


def test_opens_a_matching_file(encode_tiny, tiny_tokenizer):
    path = encode_tiny()
    for vocab_size in (tiny_tokenizer.n_vocab, pad_vocab_size(tiny_tokenizer.n_vocab)):
        tf = open_training_file(
            path, vocab_size=vocab_size, fingerprint=tiny_tokenizer.fingerprint, check_ids=True
        )
        assert isinstance(tf, TokenFile) and tf.header.vocab_size == tiny_tokenizer.n_vocab
    assert len(open_training_file(path, vocab_size=300, context_length=len(tf) - 1)) == len(tf)


def test_vocab_size_smaller_than_the_tokenizer(encode_tiny):
    path = encode_tiny()
    with pytest.raises(TokenFileError) as e:
        open_training_file(path, vocab_size=299)
    assert str(e.value) == (
        f"model vocab_size 299 is smaller than the tokenizer's n_vocab 300 in "
        f"{header_path(path)}; set vocab_size >= 300 (e.g. 320, a multiple of 64)"
    )
    assert isinstance(e.value, ValueError)


def test_another_tokenizer(encode_tiny, tiny_corpus):
    other = Tokenizer.train(tiny_corpus, 290, num_threads=1, progress=False)
    with pytest.raises(TokenFileError, match="made by a different tokenizer"):
        open_training_file(encode_tiny(), vocab_size=320, fingerprint=other.fingerprint)


def test_truncated_file(encode_tiny):
    path = encode_tiny()
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(TokenFileError, match="the file is truncated"):
        open_training_file(path, vocab_size=320)


def test_dtype_disagrees_with_the_data(encode_tiny):
    path = encode_tiny(dtype="uint32")
    header = json.loads(header_path(path).read_text())
    header_path(path).write_text(json.dumps({**header, "dtype": "uint16"}))
    with pytest.raises(TokenFileError, match="bytes but its header says .* uint16 tokens"):
        open_training_file(path, vocab_size=320)


def test_too_short_for_the_context(encode_tiny):
    path = encode_tiny()
    n = len(TokenFile.open(path))
    with pytest.raises(TokenFileError, match=f"holds {n:,} tokens, too few for context_length"):
        open_training_file(path, vocab_size=320, context_length=n)


def test_check_ids_reads_every_id(encode_tiny):
    path = encode_tiny()
    data = np.fromfile(path, dtype="<u2")
    data[100] = 300  # == n_vocab: out of range
    data.tofile(path)
    open_training_file(path, vocab_size=320)  # the header and size are fine
    with pytest.raises(TokenFileError, match="token 100 is id 300, not below vocab_size 300"):
        open_training_file(path, vocab_size=320, check_ids=True)


def test_missing_file(tmp_path):
    with pytest.raises(TokenFileError, match="no token file at"):
        open_training_file(tmp_path / "nope.bin", vocab_size=320)


@pytest.mark.parametrize(
    "kwargs", [dict(vocab_size=0), dict(vocab_size=True), dict(vocab_size=320, context_length=0)]
)
def test_bad_arguments(encode_tiny, kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        open_training_file(encode_tiny(), **kwargs)
