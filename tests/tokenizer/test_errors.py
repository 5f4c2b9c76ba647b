"""Bad input to training: each case a clear Python exception, never a panic or a hang."""

from __future__ import annotations

import pytest
import regex

from lmforge import EmptyCorpusError, InvalidUtf8Error, Tokenizer
from reference_bpe import PATTERNS


def train(inputs, vocab_size=300, **kw):
    return Tokenizer.train(inputs, vocab_size, progress=False, **kw)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on the mat " * 20)
    return path


def test_vocab_too_small(corpus):
    with pytest.raises(ValueError, match=r"at least 256 .* \+ 2 special token\(s\) = 258"):
        train(corpus, 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train(corpus, 300.0)


def test_missing_file_and_directory(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train([corpus, tmp_path / "missing.txt"])
    with pytest.raises(IsADirectoryError, match="is a directory"):
        train(tmp_path)


def test_unreadable_file(corpus):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    corpus.chmod(0)
    with pytest.raises(PermissionError):
        train(corpus)


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(EmptyCorpusError, match="empty"):
        train(empty)
    only_specials = tmp_path / "specials.txt"
    only_specials.write_text("<|endoftext|><|endoftext|>")
    with pytest.raises(EmptyCorpusError):
        train(only_specials)
    with pytest.raises(EmptyCorpusError):
        train(iter([]))


def test_invalid_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world " * 1000 + b"\xff\xfe oops")
    with pytest.raises(InvalidUtf8Error, match=r"bad\.txt: invalid UTF-8 at byte offset 12000"):
        train(bad)
    tok = train(bad, 260, errors="replace")
    text = bad.read_bytes().decode("utf-8", errors="replace")
    assert tok.train_info["bytes"] == bad.stat().st_size
    assert tok.train_info["pretokens"] == len(regex.findall(PATTERNS["gpt2"], text))
    with pytest.raises(ValueError, match="errors="):
        train(bad, errors="ignore")


def test_bad_special_tokens(corpus):
    with pytest.raises(ValueError, match="non-empty"):
        train(corpus, special_tokens=[""])
    with pytest.raises(ValueError, match="given twice"):
        train(corpus, special_tokens=["<s>", "<s>"])
    with pytest.raises(TypeError, match="sequence of str"):
        train(corpus, special_tokens="<s>")


def test_bad_pattern(corpus):
    with pytest.raises(ValueError, match="invalid pretokenization pattern"):
        train(corpus, pattern="(unclosed")


def test_bad_iterables():
    with pytest.raises(TypeError, match="item 1 is int"):
        train(iter(["ok", 3]))
    with pytest.raises(FileNotFoundError, match=r"pass iter\(texts\)"):
        train(["Once upon a time there was a story."])
    with pytest.raises(ValueError, match="empty"):
        train([])


def test_bad_thread_count(corpus, monkeypatch):
    with pytest.raises(ValueError, match="num_threads"):
        train(corpus, num_threads=0)
    monkeypatch.setenv("LMFORGE_NUM_THREADS", "lots")
    with pytest.raises(ValueError, match="LMFORGE_NUM_THREADS"):
        train(corpus)
    monkeypatch.setenv("LMFORGE_NUM_THREADS", "1")
    assert train(corpus, 260) == train(corpus, 260, num_threads=2)


def test_iterable_errors_propagate():
    def broken():
        yield "fine text"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        train(broken())
