"""GPT-2's published tokenizer files, loaded by lmforge, encode exactly as tiktoken's GPT-2."""

from __future__ import annotations

import json
import random
import string

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from datafiles import read_shared_text, shared_file
from lmforge.tokenizer import load_gpt2
from lmforge.tokenizer.formats import gpt2_byte_decoder


@pytest.fixture(scope="module")
def gpt2_files():
    return shared_file("gpt2/encoder.json"), shared_file("gpt2/merges.txt")


@pytest.fixture(scope="module")
def ours(gpt2_files):
    return load_gpt2(*gpt2_files)


@pytest.fixture(scope="module")
def theirs(gpt2_files):
    """tiktoken's GPT-2 encoding built from encoder.json (get_encoding would download)."""
    table = gpt2_byte_decoder()
    encoder = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    eot = encoder.pop("<|endoftext|>")
    ranks = {bytes(table[c] for c in tok): i for tok, i in encoder.items()}
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": eot},
    )


def test_shape(ours):
    assert len(ours) == ours.n_vocab == 50257
    assert len(ours.merges) == 50000
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    assert ours.encode("Hello world") == [15496, 995]


def test_real_text(ours, theirs):
    texts = [read_shared_text("stories/valid.txt.xz", 2_000_000)]
    texts.append(read_shared_text("tinystories-sample/train-head.txt"))
    for text in texts:
        assert ours.encode(text) == theirs.encode(text, allowed_special="all")


# Code points new in Unicode 17 are letters to our scanner (and Python's `regex`) but not yet to
# tiktoken's regex engine: keep to what Python's own tables assign.
@given(st.text(st.characters(exclude_categories=["Cs", "Cn"]), max_size=300))
def test_arbitrary_text(ours, theirs, text):
    assert ours.encode(text) == theirs.encode(text, allowed_special="all")
    assert ours.decode(ours.encode(text)) == text


def test_version_line_is_skipped(gpt2_files, tmp_path, ours):
    bpe = tmp_path / "vocab.bpe"
    bpe.write_text("#version: 0.2\n" + gpt2_files[1].read_text(encoding="utf-8"), encoding="utf-8")
    assert load_gpt2(gpt2_files[0], bpe).merges == ours.merges


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "ab" * 50_000,
        "".join(chr(97 + (i * 7919) % 26) for i in range(100_000)),
        bytes((i * 7919 + 13) % 256 for i in range(100_000)).decode("latin-1"),
        " " * 50_000 + "x",
        "1234567890" * 10_000,
    ],
    ids=["one-letter", "two-letters", "letters", "latin1", "spaces", "digits"],
)
def test_pathological_pieces(ours, theirs, text):
    """Very long pretokens take the bucketed long-piece merge; ids must still match."""
    assert ours.encode(text) == theirs.encode(text, allowed_special="all")


def _random_text(case: str, n: int) -> str:
    rng = random.Random(f"{case}-{n}")
    if case == "random-lowercase":
        return "".join(rng.choices(string.ascii_lowercase, k=n))
    if case == "random-letters":
        return "".join(rng.choices(string.ascii_letters, k=n))
    if case == "random-latin1":
        return rng.randbytes(n).decode("latin-1")
    if case == "random-ab":
        return "".join(rng.choices("ab", k=n))
    raise ValueError(case)


@pytest.mark.parametrize("n", [49, 50, 200, 5_000, 200_000])
@pytest.mark.parametrize(
    "case", ["random-lowercase", "random-letters", "random-latin1", "random-ab"]
)
def test_long_random_pretokens(ours, theirs, case, n):
    """Pretokens over 48 bytes take backtracking BPE: same ids as tiktoken on one huge word."""
    text = _random_text(case, n)
    assert ours.encode(text) == theirs.encode(text, allowed_special="all")


@pytest.mark.parametrize("unit", ["a", "ab", "aab", "xyz", "é", "ab ", "0"])
def test_long_runs(ours, theirs, unit):
    """Runs of a short unit, across the short/backtracking boundary and far past it."""
    for count in [1, 47, 48, 49, 50, 97, 1000, 100_003]:
        text = unit * (count // len(unit) + 1)
        assert ours.encode(text) == theirs.encode(text, allowed_special="all"), count


@given(st.text(alphabet=st.sampled_from("aabcé"), min_size=49, max_size=3000))
def test_long_words_over_small_alphabets(ours, theirs, text):
    assert ours.encode(text) == theirs.encode(text, allowed_special="all")
