"""Token files from `Tokenizer.encode_files`: equal to tiktoken per document, every input kind,
and no valid-looking file after a failure."""

from __future__ import annotations

import gzip
import json
import lzma

import numpy as np
import pytest

from datafiles import read_shared_text
from lmforge import InvalidUtf8Error, Tokenizer
from lmforge.data import TokenFile, TokenFileError, header_path

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok(sample_corpus) -> Tokenizer:
    return Tokenizer.train(sample_corpus, 1000, progress=False)


def expected_tokens(tok: Tokenizer, documents: list[str]) -> list[int]:
    """tiktoken's ids for each non-empty document, each followed by one end-of-text token."""
    enc = tok.to_tiktoken()
    eot = tok.special_tokens[EOT]
    out: list[int] = []
    for doc in documents:
        if doc:
            out += enc.encode(doc, allowed_special="all") + [eot]
    return out


def test_real_text_equals_tiktoken_document_by_document(tok, sample_corpus, tmp_path):
    texts = [sample_corpus.read_text(encoding="utf-8")]
    try:
        texts.append(read_shared_text("stories/valid.txt.xz", 3_000_000))
    except pytest.skip.Exception:
        pass
    for i, text in enumerate(texts):
        src = tmp_path / f"corpus{i}.txt"
        src.write_bytes(text.encode("utf-8"))  # several pieces, cut at safe points
        expected = expected_tokens(tok, text.split(EOT))
        # Piece size and the number of buffers going round depend on the thread count.
        for threads in (1, 2, 5):
            out = tmp_path / f"train{i}-{threads}.bin"
            tf = tok.encode_files(src, out, num_threads=threads, progress=False)
            assert tf.tokens.tolist() == expected, threads
            assert tf.header.tokenizer_fingerprint == tok.fingerprint
            assert tf.header.sources == [{"path": str(src), "bytes": src.stat().st_size}]
            assert tf.tokens.dtype == np.dtype("<u2")


def test_documents_and_separators(tok, tmp_path):
    files = {
        "a.txt": f"{EOT}first doc{EOT}{EOT}second doc",  # leading and doubled separators
        "b.txt": f"third doc{EOT}",  # already ends with one
        "c.txt": "",  # empty: no document
        "d.txt": "fourth doc",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    paths = [tmp_path / n for n in files]
    tf = tok.encode_files(paths, tmp_path / "out.bin", progress=False)
    docs = ["first doc", "second doc", "third doc", "fourth doc"]
    assert tf.tokens.tolist() == expected_tokens(tok, docs)
    assert [tok.decode(d.tolist()) for d in tf.documents()] == [d + EOT for d in docs]
    plain = tok.encode_files(paths, tmp_path / "plain.bin", append_eot=False, progress=False)
    assert plain.tokens.tolist() == [t for text in files.values() for t in tok.encode(text)]
    assert plain.header.eot_id is None


def test_jsonl_and_compressed_inputs(tok, tmp_path):
    records = ["one record", "", "another <|endoftext|> record", "last"]
    lines = "\n".join(json.dumps({"text": r, "id": i}) for i, r in enumerate(records)) + "\n"
    (tmp_path / "r.jsonl").write_text(lines, encoding="utf-8")
    with gzip.open(tmp_path / "r.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    text = "plain text, compressed three ways. " * 2000
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    with lzma.open(tmp_path / "t.txt.xz", "wt", encoding="utf-8") as f:
        f.write(text)
    with gzip.open(tmp_path / "t.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "t.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    expected_records = expected_tokens(tok, ["one record", "another ", " record", "last"])
    for name in ["r.jsonl", "r.jsonl.gz"]:
        tf = tok.encode_files(tmp_path / name, tmp_path / f"{name}.bin", progress=False)
        assert tf.tokens.tolist() == expected_records, name
    expected_text = expected_tokens(tok, [text])
    for name in ["t.txt", "t.txt.xz", "t.txt.gz", "t.txt.zst"]:
        tf = tok.encode_files(tmp_path / name, tmp_path / f"{name}.bin", progress=False)
        assert tf.tokens.tolist() == expected_text, name


@pytest.mark.parametrize("threads", [1, 4])
def test_many_compressed_shards_in_order(tok, tmp_path, threads):
    """Compressed inputs are decompressed ahead, several at once, on threads of their own: the
    token file is still the inputs' documents in the order given, whatever the mix."""
    texts = [f"shard {i}: " + f"word{i} and more words. " * (3000 + 500 * i) for i in range(7)]
    paths = []
    for i, text in enumerate(texts):
        kind = ["gz", "xz", "txt", "gz", "jsonl.gz", "xz", "gz"][i]
        path = tmp_path / f"s{i}.{kind}"
        data = (json.dumps({"text": text}) + "\n") if kind == "jsonl.gz" else text
        opener = {"gz": gzip.open, "xz": lzma.open, "jsonl.gz": gzip.open}.get(kind)
        if opener is None:
            path.write_text(data, encoding="utf-8")
        else:
            with opener(path, "wt", encoding="utf-8") as f:
                f.write(data)
        paths.append(path)
    tf = tok.encode_files(paths, tmp_path / "out.bin", progress=False, num_threads=threads)
    assert tf.tokens.tolist() == expected_tokens(tok, texts)


def test_corrupt_shard_among_many_fails_naming_it(tok, tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"s{i}.txt.gz"
        data = gzip.compress((f"text of shard {i}. " * 20_000).encode())
        if i == 3:  # the stream breaks off halfway
            data = data[: len(data) // 2]
        path.write_bytes(data)
        paths.append(path)
    out = tmp_path / "out.bin"
    with pytest.raises(OSError, match=r"s3\.txt\.gz"):
        tok.encode_files(paths, out, progress=False, num_threads=4)
    assert not out.exists() and not header_path(out).exists()


def test_bad_jsonl_names_the_line(tok, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"txt": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON object"):
        tok.encode_files(src, tmp_path / "out.bin", progress=False)


def test_failure_leaves_no_valid_looking_file(tok, tmp_path):
    out = tmp_path / "train.bin"
    good = tmp_path / "good.txt"
    good.write_text("fine text " * 1000)
    tok.encode_files(good, out, progress=False)  # a valid file from an earlier run
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"some text " * 200_000 + b"\xff broken")
    with pytest.raises(InvalidUtf8Error, match=r"bad\.txt: invalid UTF-8 at byte offset 2000000"):
        tok.encode_files([good, bad], out, progress=False)
    assert not header_path(out).exists()
    with pytest.raises(TokenFileError, match="no header"):
        TokenFile.open(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt", "train.bin"]


def test_dtype_and_fingerprint_checks(tok, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("hello world")
    wide = tok.encode_files(src, tmp_path / "w.bin", dtype="uint32", progress=False)
    assert wide.tokens.dtype == np.dtype("<u4")
    assert wide.tokens.tolist() == expected_tokens(tok, ["hello world"])
    with pytest.raises(ValueError, match="uint16 or uint32"):
        tok.encode_files(src, tmp_path / "x.bin", dtype="int64", progress=False)
    other = Tokenizer.train(iter(["other words entirely"] * 5), 270, progress=False)
    with pytest.raises(TokenFileError, match="different tokenizer"):
        TokenFile.open(tmp_path / "w.bin", fingerprint=other.fingerprint)
    no_eot = Tokenizer.train(iter(["abc"] * 5), 258, special_tokens=[], progress=False)
    with pytest.raises(ValueError, match="append_eot=False"):
        no_eot.encode_files(src, tmp_path / "y.bin", progress=False)
