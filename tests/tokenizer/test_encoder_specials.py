"""[CLS] [SEP] [MASK] [PAD]: added to a tokenizer or trained in, their ids, the input layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge import Tokenizer
from lmforge.cli import main
from lmforge.tokenizer import ENCODER_SPECIAL_TOKENS, EncoderSpecials, with_special_tokens

TEXTS = ["the cat sat on the mat", "a dog [MASK] ran", "café 😀 中文"] * 10


@pytest.fixture(scope="module")
def plain() -> Tokenizer:
    return Tokenizer.train(iter(TEXTS), 280, progress=False)


def test_adding_specials_keeps_every_other_id(plain: Tokenizer) -> None:
    tok = with_special_tokens(plain)
    n = plain.n_vocab
    assert [tok.special_tokens[t] for t in ENCODER_SPECIAL_TOKENS] == [n, n + 1, n + 2, n + 3]
    assert tok.special_tokens["<|endoftext|>"] == plain.special_tokens["<|endoftext|>"]
    assert tok.merges == plain.merges and tok.n_vocab == n + 4
    for text in TEXTS[:3]:
        assert tok.encode_ordinary(text) == plain.encode_ordinary(text)
    assert tok.special_tokens["[MASK]"] in tok.encode("a dog [MASK] ran")
    assert tok.fingerprint != plain.fingerprint
    assert with_special_tokens(tok) is tok  # nothing missing: the same tokenizer
    assert Tokenizer.from_json(tok.to_json()) == tok


def test_only_the_missing_specials_are_added(plain: Tokenizer) -> None:
    some = with_special_tokens(plain, ["[SEP]"])
    full = with_special_tokens(some)
    assert full.special_tokens["[SEP]"] == some.special_tokens["[SEP]"] == plain.n_vocab
    assert [full.special_tokens[t] for t in ("[CLS]", "[MASK]", "[PAD]")] == [
        plain.n_vocab + 1,
        plain.n_vocab + 2,
        plain.n_vocab + 3,
    ]
    with pytest.raises(ValueError, match="distinct non-empty"):
        with_special_tokens(plain, ["[X]", "[X]"])
    with pytest.raises(TypeError, match="sequence of str"):
        with_special_tokens(plain, "[CLS]")


def test_ids_and_input_layout() -> None:
    tok = Tokenizer.train(
        iter(TEXTS), 285, special_tokens=("<|endoftext|>", *ENCODER_SPECIAL_TOKENS), progress=False
    )
    sp = EncoderSpecials.of(tok)
    assert sp.ids == tuple(tok.special_tokens[t] for t in ENCODER_SPECIAL_TOKENS)
    a, b = tok.encode("the cat"), tok.encode("a dog")
    assert sp.wrap(a) == [sp.cls_id, *a, sp.sep_id]
    assert sp.wrap(a, b) == [sp.cls_id, *a, sp.sep_id, *b, sp.sep_id]
    labels = [1] * len(a)
    assert sp.wrap(labels, fill=-100) == [-100, *labels, -100]
    assert tok.decode(sp.wrap(a, b)) == "[CLS]the cat[SEP]a dog[SEP]"


def test_missing_specials_are_named(plain: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"no \[CLS\], \[SEP\], \[MASK\], \[PAD\] special"):
        EncoderSpecials.of(plain)
    with pytest.raises(ValueError, match=r"no \[MASK\] special"):
        EncoderSpecials.of(with_special_tokens(plain, ["[CLS]", "[SEP]", "[PAD]"]))


def test_cli_trains_with_encoder_specials(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "tok.json"
    argv = ["tokenizer", "train", str(corpus), "--vocab-size", "285", "--encoder-specials"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    tok = Tokenizer.load(out)
    assert list(tok.special_tokens) == ["<|endoftext|>", *ENCODER_SPECIAL_TOKENS]
    EncoderSpecials.of(tok)
