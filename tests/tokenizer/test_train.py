"""The trainer against the pure-Python reference, plus layout, streaming and threading."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datafiles import read_shared_text
from lmforge import Tokenizer
from reference_bpe import PATTERNS, pretokenize, train_reference

ALPHABET = "aaabbc  \n\n\t'sS1é中 .,!\r"
SPECIALS = ["<|endoftext|>", "<|a|>", "<|a|><|b|>", "ab"]


def train_quiet(inputs, vocab_size, **kw) -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ran out of pairs" on tiny corpora
        return Tokenizer.train(inputs, vocab_size, progress=False, **kw)


@st.composite
def corpora(draw):
    specials = draw(st.lists(st.sampled_from(SPECIALS), unique=True, max_size=3))
    piece = st.one_of(st.text(alphabet=ALPHABET, max_size=25), st.sampled_from(SPECIALS))
    texts = draw(st.lists(st.lists(piece, max_size=6).map("".join), min_size=1, max_size=6))
    vocab_size = draw(st.integers(256 + len(specials), 256 + len(specials) + 50))
    pattern = draw(st.sampled_from(sorted(PATTERNS)))
    return texts, specials, vocab_size, pattern


@given(corpora())
def test_trainer_equals_reference(case):
    texts, specials, vocab_size, pattern = case
    if not pretokenize(texts, specials, PATTERNS[pattern]):
        return  # nothing to train on: covered by test_errors
    tok = train_quiet(iter(texts), vocab_size, special_tokens=specials, pattern=pattern)
    ref_vocab, ref_merges = train_reference(texts, vocab_size, specials, PATTERNS[pattern])
    assert tok.merges == ref_merges
    assert tok.vocab == ref_vocab
    assert tok.special_tokens == {s: ref_vocab_id(ref_vocab, s) for s in specials}


def ref_vocab_id(vocab: dict[int, bytes], special: str) -> int:
    return next(i for i, b in vocab.items() if i >= 256 and b == special.encode())


@given(corpora())
def test_file_input_equals_reference_on_the_concatenation(case):
    texts, specials, vocab_size, pattern = case
    text = "".join(texts)
    if not pretokenize([text], specials, PATTERNS[pattern]):
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "corpus.txt"
        path.write_bytes(text.encode("utf-8"))  # no newline translation
        tok = train_quiet(path, vocab_size, special_tokens=specials, pattern=pattern)
    ref_vocab, ref_merges = train_reference([text], vocab_size, specials, PATTERNS[pattern])
    assert tok.merges == ref_merges
    assert tok.vocab == ref_vocab


def test_vocabulary_layout(sample_corpus):
    tok = Tokenizer.train(
        sample_corpus, 700, special_tokens=["<|endoftext|>", "<|pad|>"], progress=False
    )
    assert len(tok.vocab) == len(tok) == 700 == tok.n_vocab
    assert all(tok.vocab[b] == bytes([b]) for b in range(256))
    for i, (left, right) in enumerate(tok.merges):
        assert tok.vocab[256 + i] == left + right
    assert tok.special_tokens == {"<|endoftext|>": 698, "<|pad|>": 699}
    assert not any(b"<|endoftext|>" in tok.vocab[i] for i in range(698))
    assert tok.train_info["unique_pretokens"] > 1000
    assert tok.train_info["bytes"] == sample_corpus.stat().st_size


def test_running_out_of_pairs_is_reported():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = Tokenizer.train(iter(["abab"]), 1000, special_tokens=[], progress=False)
    assert tok.merges == [(b"a", b"b"), (b"ab", b"ab")]
    assert tok.train_info["exhausted"]


def test_threads_do_not_change_the_result(sample_corpus):
    one = Tokenizer.train(sample_corpus, 600, num_threads=1, progress=False)
    two = Tokenizer.train(sample_corpus, 600, num_threads=2, progress=False)
    assert one == two


@pytest.mark.parametrize("pattern", ["gpt2", "o200k", r"\p{L}+|\s+|[^\s\p{L}]+"])
def test_streamed_chunks_equal_whole_text(tmp_path, pattern):
    """A file of several 1 MiB chunks trains exactly like the same text held whole."""
    try:
        text = read_shared_text("stories/valid.txt.xz", 10_000_000)
    except pytest.skip.Exception:
        base = Path(__file__).resolve().parents[2] / "python/lmforge/assets/stories-sample.txt"
        text = base.read_text(encoding="utf-8") * 5
    path = tmp_path / "big.txt"
    path.write_bytes(text.encode("utf-8"))
    from_file = Tokenizer.train(path, 600, pattern=pattern, progress=False)
    whole = Tokenizer.train(iter([text]), 600, pattern=pattern, progress=False)
    assert from_file.train_info["pretokens"] == whole.train_info["pretokens"]
    assert from_file == whole


@pytest.mark.parametrize("threads", [1, 3])
def test_compressed_shards_equal_plain_files(tmp_path, sample_corpus, threads):
    """Compressed inputs are decompressed ahead on threads of their own: the same merges as
    the same texts in plain files."""
    import gzip
    import lzma

    text = sample_corpus.read_text(encoding="utf-8")[:600_000]
    shards = [text[i : i + 100_000] for i in range(0, len(text), 100_000)]
    plain, packed = [], []
    for i, shard in enumerate(shards):
        p = tmp_path / f"s{i}.txt"
        p.write_text(shard, encoding="utf-8")
        plain.append(p)
        opener, suffix = (gzip.open, ".gz") if i % 2 else (lzma.open, ".xz")
        with opener(tmp_path / f"s{i}.txt{suffix}", "wt", encoding="utf-8") as f:
            f.write(shard)
        packed.append(tmp_path / f"s{i}.txt{suffix}")
    want = Tokenizer.train(plain, 400, num_threads=threads, progress=False)
    got = Tokenizer.train(packed, 400, num_threads=threads, progress=False)
    assert got.merges == want.merges
    broken = tmp_path / "broken.txt.gz"
    data = (tmp_path / "s1.txt.gz").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"broken\.txt\.gz"):
        inputs = [*packed[:3], broken, *packed[3:]]
        Tokenizer.train(inputs, 400, num_threads=threads, progress=False)


def test_several_files_and_pathlike(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the cat sat on the mat ")
    b.write_text("the dog sat on the log ")
    tok = Tokenizer.train([a, str(b)], 270, progress=False)
    ref_vocab, ref_merges = train_reference(
        [a.read_text(), b.read_text()], 270, ["<|endoftext|>"], PATTERNS["gpt2"]
    )
    assert tok.merges == ref_merges
