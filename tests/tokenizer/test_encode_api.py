"""The encoding API beyond `encode`: special-token rules, batches, numpy, streaming decode,
fingerprints, fork safety, and the worst case."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge import Tokenizer

SPECIALS = ["<|endoftext|>", "<|pad|>"]
TRICKY = st.text(alphabet="ab  \n'sS1é中 .<|endoftext|><|pad|>", max_size=80)
ASSIGNED = st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=120)


@pytest.fixture(scope="module")
def tok(sample_corpus) -> Tokenizer:
    return Tokenizer.train(sample_corpus, 700, special_tokens=SPECIALS, progress=False)


@pytest.fixture(scope="module")
def enc(tok):
    return tok.to_tiktoken()


KEYWORDS = [
    ({}, {"allowed_special": "all"}),
    ({"allowed_special": set(), "disallowed_special": ()}, {"disallowed_special": ()}),
    ({"allowed_special": {"<|pad|>"}}, {"allowed_special": {"<|pad|>"}, "disallowed_special": ()}),
    (
        {"allowed_special": {"<|pad|>"}, "disallowed_special": ()},
        {"allowed_special": {"<|pad|>"}, "disallowed_special": ()},
    ),
]


@pytest.mark.parametrize(("ours", "theirs"), KEYWORDS)
@given(text=TRICKY)
def test_special_token_keywords_match_tiktoken(tok, enc, ours, theirs, text):
    assert tok.encode(text, **ours) == enc.encode(text, **theirs)


def test_disallowed_special_raises_with_token_and_offset(tok):
    text = "héllo <|pad|> world"
    with pytest.raises(ValueError, match=r"'<\|pad\|>' at character offset 6"):
        tok.encode(text, allowed_special=set(), disallowed_special="all")
    with pytest.raises(ValueError, match="disallowed special token"):
        tok.encode("x<|endoftext|>", allowed_special={"<|pad|>"}, disallowed_special="all")
    assert tok.encode("x<|pad|>", allowed_special={"<|pad|>"}, disallowed_special="all")[-1] == 699
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})


@given(texts=st.lists(st.one_of(ASSIGNED, TRICKY), max_size=12))
def test_encode_batch_equals_encode(tok, texts):
    expected = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == expected
    assert tok.encode_batch(texts, num_threads=1) == expected
    assert tok.encode_batch(texts, num_threads=2, allowed_special=set()) == [
        tok.encode_ordinary(t) for t in texts
    ]


@given(texts=st.lists(st.one_of(ASSIGNED, TRICKY), max_size=12))
def test_encode_batch_to_numpy_equals_encode_batch(tok, texts):
    for kw in ({}, {"num_threads": 1}, {"num_threads": 2, "allowed_special": set()}):
        ids, offsets = tok.encode_batch_to_numpy(texts, **kw)
        assert ids.dtype == np.dtype("<u4") and offsets.dtype == np.dtype("<i8")
        assert offsets.shape == (len(texts) + 1,) and offsets[0] == 0
        lists = tok.encode_batch(texts, **kw)
        assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == lists


def test_encode_batch_to_numpy_on_real_text_and_bad_input(tok, sample_corpus):
    docs = sample_corpus.read_text(encoding="utf-8").split("<|endoftext|>")[:300]
    ids, offsets = tok.encode_batch_to_numpy(docs, num_threads=2)
    assert ids.tolist() == [i for d in docs for i in tok.encode(d)]
    assert np.diff(offsets).tolist() == [len(tok.encode(d)) for d in docs]
    empty_ids, empty_offsets = tok.encode_batch_to_numpy([])
    assert empty_ids.size == 0 and empty_offsets.tolist() == [0]
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch_to_numpy(docs, num_threads=0)
    with pytest.raises(ValueError, match=r"'<\|pad\|>' at character offset 1"):
        tok.encode_batch_to_numpy(
            ["ok", "x<|pad|>"], allowed_special=set(), disallowed_special="all"
        )


def test_encode_to_numpy_equals_encode_on_a_large_text(tok, sample_corpus):
    text = sample_corpus.read_text(encoding="utf-8")  # ~1.9 MB
    expected = tok.encode(text)
    # Pieces are sized by the thread count: 2 pieces of 1 MB on one thread, ~30 of 64 KB on 16.
    for threads in (1, 2, 16):
        ids = tok.encode_to_numpy(text, num_threads=threads)
        assert ids.dtype == np.dtype("<u4")
        assert ids.tolist() == expected, threads
    assert tok.encode_to_numpy("").size == 0


@pytest.mark.parametrize(("ours", "_"), KEYWORDS)
@given(text=st.one_of(ASSIGNED, TRICKY))
def test_encode_to_numpy_of_a_short_text_equals_encode(tok, ours, _, text):
    """Short texts are encoded on the calling thread, not the pool: same ids, same rules."""
    ids = tok.encode_to_numpy(text, **ours)
    assert ids.dtype == np.dtype("<u4")
    assert ids.tolist() == tok.encode(text, **ours)


@pytest.mark.parametrize("repeat", [1, 6000])  # 14 bytes: the calling thread; 84 KB: the pool
def test_encode_to_numpy_raises_on_disallowed_special_whatever_the_length(tok, repeat):
    text = "héllo world, " * repeat + "<|pad|>"
    with pytest.raises(ValueError, match=r"'<\|pad\|>' at character offset"):
        tok.encode_to_numpy(text, allowed_special=set(), disallowed_special="all")


@pytest.mark.parametrize("length", [11, 120_000])  # the calling thread; the pool
def test_encode_to_numpy_checks_num_threads_whatever_the_length(tok, length):
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_to_numpy("x" * length, num_threads=0)


def test_encode_to_numpy_with_fewer_pieces_than_threads_from_several_callers(tok, sample_corpus):
    """A text of a few 64 KB pieces on 8 threads, from 3 Python threads at once (the GIL is
    released while encoding): every call gives the serial ids."""
    from concurrent.futures import ThreadPoolExecutor

    text = sample_corpus.read_text(encoding="utf-8")[:200_000]
    expected = np.array(tok.encode(text), dtype="<u4")

    def run(_: int) -> bool:
        return all(
            np.array_equal(tok.encode_to_numpy(text, num_threads=8), expected) for _ in range(10)
        )

    with ThreadPoolExecutor(3) as pool:
        assert all(pool.map(run, range(3)))


def test_stream_decoder_never_emits_broken_characters(tok):
    text = "naïve café — 中文 🙂 done"
    decoder = tok.decoder()
    pieces = [decoder.feed(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert tok.decoder().feed([]) == ""


def test_stream_decoder_flags_an_unfinished_character(tok):
    first_byte = next(i for i, b in tok.vocab.items() if b == "é".encode()[:1])
    decoder = tok.decoder()
    assert decoder.feed([first_byte]) == ""
    assert decoder.flush() == "\ufffd"
    strict = tok.decoder(errors="strict")
    strict.feed([first_byte])
    with pytest.raises(UnicodeDecodeError):
        strict.flush()


def test_fingerprint_is_the_same_through_every_format(tok, tmp_path):
    fp = tok.fingerprint
    assert fp.startswith("sha256:") and len(fp) == 7 + 64
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").fingerprint == fp
    tok.save_tiktoken(tmp_path / "t.tiktoken")
    back = Tokenizer.from_tiktoken_file(
        tmp_path / "t.tiktoken", pattern=tok.pattern, special_tokens=tok.special_tokens
    )
    assert back.fingerprint == fp
    tok.save_hf(tmp_path / "hf.json")
    assert Tokenizer.from_hf(tmp_path / "hf.json").fingerprint == fp
    other = Tokenizer(tok.vocab, tok.merges, tok.special_tokens, "o200k")
    assert other.fingerprint != fp


def _encode_in_child(args):
    tok, texts = args
    return tok.encode_batch(texts, num_threads=2)


def test_encoding_works_after_fork(tok):
    texts = ["once upon a time"] * 50
    expected = tok.encode_batch(texts, num_threads=2)  # the parent now has a warm pool
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_encode_in_child, ((tok, texts),))
        assert result.get(timeout=60) == expected


def _seconds(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "a" * n,
        lambda n: "ab" * (n // 2),
        lambda n: bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)).decode(
            "latin-1"
        ),
        lambda n: "".join(
            chr(97 + c) for c in np.random.default_rng(1).integers(0, 26, n, dtype=np.int64)
        ),
    ],
    ids=["one-char", "two-chars", "random-bytes", "random-letters"],
)
def test_worst_cases_scale_with_length(tok, make):
    """8x a pathological input takes about 8x the time; quadratic would take 64x. The bound
    (24x) leaves room for a loaded machine's noise and still fails any quadratic merge."""
    small, large = make(100_000), make(800_000)
    assert tok.decode(tok.encode(small)) == small
    ratio = _seconds(lambda: tok.encode(large)) / _seconds(lambda: tok.encode(small))
    assert ratio < 24.0, f"time grew {ratio:.1f}x for 8x the input"
