"""Side-by-side encoding benchmark: lmforge vs tiktoken, Hugging Face tokenizers and Gigatoken
(not a test).

Every library encodes the same text with the same ranks, and the ids are compared: lmforge and
Hugging Face against tiktoken (against lmforge when tiktoken is skipped), as a count of mismatched
documents, never a crash. Two vocabularies (``--vocab gpt2,trained``):

- ``gpt2``: GPT-2's published ranks (``../shared/data/gpt2/encoder.json`` and ``merges.txt``).
  lmforge loads them with ``load_gpt2``; tiktoken's ``Encoding`` is built from ``encoder.json``
  (GPT-2's byte table, GPT-2's pattern, ``<|endoftext|>`` = 50256) without the network; Hugging
  Face gets ``tok.save_hf`` when lmforge has it, else a byte-level BPE built from the same files.
- ``trained``: 32,000 tokens trained by lmforge on the benchmark text, handed to tiktoken through
  ``tok.to_tiktoken()`` (or an ``Encoding`` built from ``tok.vocab``) and to Hugging Face
  through ``tok.save_hf`` (skipped, with a note, when lmforge lacks it).

Gigatoken (``pip install gigatoken``, skipped with a note when missing) gets each vocabulary as a
tiktoken rank file (``tok.save_tiktoken``) with its own pretokenizer of the same name (``gpt2``)
and ``<|endoftext|>``: its list API (``as_tiktoken().encode``) in the per-document rows, its
``encode`` (a ``uint32`` array) beside ``encode_to_numpy``, and ``encode_batch_list`` in the
batch rows (its rayon pool sized by ``RAYON_NUM_THREADS``).

The text is the input (``.xz``/``.gz`` decompressed untimed) cut to ``--max-bytes`` at a document
end and split into documents after each ``<|endoftext|>``. Measurements (``--parts``), each run in
fresh child processes (this script re-invoked with ``--child``), so thread settings that libraries
read at import (``RAYON_NUM_THREADS``) apply and peak RSS is one process's own:

1. single thread: one encode call per document for each library (``LMFORGE_NUM_THREADS=1``,
   ``RAYON_NUM_THREADS=1``; tiktoken's ``encode`` is single-threaded), in MB/s of UTF-8 text;
   then into arrays through ``encode_to_numpy`` (lmforge's and tiktoken's), where no Python int
   is built: the whole text in one call, and one call per document (the "speed-up" of these
   rows is against lmforge's array the same way).
2. thread scaling: ``encode_batch`` over all documents at each of ``--threads-list`` (and, as
   ``LIB-flat``, into one flat array with offsets: lmforge's ``encode_batch_to_numpy``,
   Gigatoken's ``encode_batch``), one child per thread count; MB/s and efficiency = rate(t) /
   (t * rate(1)). Beside it, the machine's ceiling:
   ``t`` independent single-threaded processes encoding their own 8 MB slices at once.
3. worst case: 1 MB of ``"a"``, of ``"ab"``, of random bytes read as Latin-1, and one 1 MB word of
   random ASCII letters, beside 1 MB of the text, each timed on its first call in a fresh child
   per library and case (no pretoken cache carried over; lmforge both through ``encode`` and
   through ``encode_to_numpy``, which builds no Python ints), killed after ``--worst-timeout``
   seconds (a quadratic merge would never finish), the fastest of ``--worst-repeats`` such
   processes kept. The target: lmforge's time per byte on each within 3x of its time per byte on
   the text. Ids are compared through a hash.
4. 10,000 short strings (5 to 20 consecutive words of the text): ``encode_batch`` wall time on all
   cores, and a loop of ``encode`` calls for reference.
5. ``tok.encode_files`` on the whole cut text (``--files-whole-input``: on ``--input`` itself),
   alone in its child for its peak RSS; the token file's first 1,000 documents (+ end-of-text)
   are checked against tiktoken's ids.

A missing lmforge method (``encode_batch``, ``encode_files``, ``to_tiktoken``, ``save_hf``) skips
what needs it, with a note on stdout and in the JSON. Timed regions run with the garbage collector
off, after one untimed warm-up call.

    python benches/bench_encode.py [--input PATH] [--max-bytes 50000000] [--vocab gpt2,trained]
        [--parts 1,2,3,4,5] [--threads-list 1,2,4] [--skip-hf] [--skip-tiktoken] [--skip-gigatoken]
        [--worst-timeout 60] [--files-whole-input] [--out PATH.json]

Results: a table per measurement on stdout and one JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    current_rss_mb,
    default_out_path,
    emit_result,
    machine_info,
    now_utc,
    open_binary,
    parse_result,
    print_table,
    run_child,
    uncompressed_size,
    write_json,
)

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "stories" / "train.txt.xz"
GPT2_DIR = REPO.parent / "shared" / "data" / "gpt2"
SPECIAL = "<|endoftext|>"
GPT2_EOT_ID = 50256
TRAINED_VOCAB_SIZE = 32000
VOCABS = ("gpt2", "trained")
LIBS = ("lmforge", "tiktoken", "hf", "gigatoken")
PARTS = (1, 2, 3, 4, 5)
WORST_CASES = ("text", "one_char", "two_chars", "random_latin1", "random_letters")
WORST_TARGET = 3.0  # lmforge's worst case per byte, at most this many times its text per byte
VERIFY_DOCS = 1000
MISSING_METHOD_EFFECT = {  # what the benchmark does without each newer lmforge method
    "encode_batch": "lmforge is left out of thread scaling and short-string batches",
    "encode_files": "measurement 5 is skipped",
    "to_tiktoken": "tiktoken's Encoding of the trained vocab is built from tok.vocab",
    "save_hf": "HF is built from GPT-2's files for gpt2 and skipped for the trained vocab",
}


# --- building the three tokenizers from a vocab spec (child side, and the parent for checks) ----


def load_lmforge(spec: dict) -> Any:
    from lmforge import Tokenizer
    from lmforge.tokenizer import load_gpt2

    if spec["vocab"] == "gpt2":
        return load_gpt2(spec["encoder_json"], spec["merges_txt"])
    return Tokenizer.load(spec["lmforge_json"])


def build_tiktoken(spec: dict, tok: Any = None) -> Any:
    import tiktoken

    if spec["vocab"] == "gpt2":
        from lmforge._bpe import GPT2_PATTERN
        from lmforge.tokenizer.formats import gpt2_byte_decoder

        table = gpt2_byte_decoder()
        with open(spec["encoder_json"], encoding="utf-8") as f:
            encoder = json.load(f)
        ranks = {bytes(table[c] for c in t): i for t, i in encoder.items() if t != SPECIAL}
        return tiktoken.Encoding(
            name="gpt2-local",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={SPECIAL: GPT2_EOT_ID},
        )
    tok = tok if tok is not None else load_lmforge(spec)
    if hasattr(tok, "to_tiktoken"):
        return tok.to_tiktoken()
    specials = tok.special_tokens
    special_ids = set(specials.values())
    return tiktoken.Encoding(
        name="lmforge-trained",
        pat_str=tok.pattern_regex,
        mergeable_ranks={b: i for i, b in tok.vocab.items() if i not in special_ids},
        special_tokens=specials,
    )


def build_hf(spec: dict) -> Any:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    if spec.get("hf_json"):
        return tokenizers.Tokenizer.from_file(spec["hf_json"])
    if spec["vocab"] != "gpt2":
        raise RuntimeError("no Hugging Face tokenizer for this vocab (lmforge has no save_hf)")
    with open(spec["encoder_json"], encoding="utf-8") as f:
        vocab = json.load(f)
    merges = []
    with open(spec["merges_txt"], encoding="utf-8") as f:
        for n, line in enumerate(f):
            line = line.rstrip("\n")
            if line and not (n == 0 and line.startswith("#version")):
                left, right = line.split(" ")
                merges.append((left, right))
    hf = tokenizers.Tokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([SPECIAL])
    return hf


GIGATOKEN_PATTERNS = {"gpt2": "gpt2", "cl100k": "cl100k", "o200k": "o200k"}
"""lmforge's pattern names → Gigatoken's pretokenizer names (Gigatoken runs only its own)."""


def build_gigatoken(spec: dict) -> Any:
    """Gigatoken (``pip install gigatoken``) from the vocab's tiktoken rank file, which the parent
    wrote with ``tok.save_tiktoken``, with the same pretokenizer and end-of-text token."""
    import gigatoken

    return gigatoken.Tokenizer.from_tiktoken(
        spec["tiktoken_file"],
        pretokenizer=GIGATOKEN_PATTERNS[spec["pattern"]],
        special_tokens={SPECIAL: spec["eot_id"]},
    )


def single_encoder(lib: str, spec: dict) -> Callable[[str], list[int]]:
    """``encode(text) -> ids`` of ``lib``, special tokens allowed."""
    if lib == "lmforge":
        return load_lmforge(spec).encode
    if lib == "lmforge-numpy":  # no Python ints: the encoder alone
        tok = load_lmforge(spec)
        return lambda text: tok.encode_to_numpy(text, num_threads=1)
    if lib == "tiktoken":
        enc = build_tiktoken(spec)
        return lambda text: enc.encode(text, allowed_special="all")
    if lib == "gigatoken":  # its tiktoken-compatible API, which returns lists
        compat = build_gigatoken(spec).as_tiktoken()
        return lambda text: compat.encode(text, allowed_special="all")
    hf = build_hf(spec)
    return lambda text: hf.encode(text, add_special_tokens=False).ids


def batch_encoder(lib: str, spec: dict, threads: int | None) -> Callable[[list[str]], list]:
    """``encode_batch(texts) -> list of ids`` of ``lib`` on ``threads`` threads (None: all
    cores; Hugging Face takes its thread count from ``RAYON_NUM_THREADS``, set by the parent)."""
    if lib == "lmforge":
        tok = load_lmforge(spec)
        if not hasattr(tok, "encode_batch"):
            raise MissingMethod("lmforge has no Tokenizer.encode_batch")
        return lambda texts: tok.encode_batch(texts, num_threads=threads)
    if lib == "tiktoken":
        enc = build_tiktoken(spec)
        n = threads or os.cpu_count() or 1
        return lambda texts: enc.encode_batch(texts, num_threads=n, allowed_special="all")
    if lib == "gigatoken":  # its rayon pool takes RAYON_NUM_THREADS, set by the parent
        g = build_gigatoken(spec)
        return lambda texts: g.encode_batch_list(texts)
    hf = build_hf(spec)
    return lambda texts: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


class MissingMethod(Exception):
    """An lmforge method the measurement needs does not exist (yet)."""


# --- texts ---------------------------------------------------------------------------------------


def split_documents(text: str) -> list[str]:
    """The documents of ``text``, each ending with its ``<|endoftext|>`` (the last maybe not)."""
    parts = text.split(SPECIAL)
    docs = [p + SPECIAL for p in parts[:-1]]
    if parts[-1]:
        docs.append(parts[-1])
    return docs


def read_docs(path: str) -> tuple[list[str], int]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return split_documents(text), len(text.encode("utf-8"))


def worst_case_text(case: str, n: int, text_path: str, seed: int) -> str:
    rng = random.Random(seed)
    if case == "text":
        with open(text_path, "rb") as f:
            return f.read(n).decode("utf-8", errors="ignore")
    if case == "one_char":
        return "a" * n
    if case == "two_chars":
        return "ab" * (n // 2)
    if case == "random_latin1":
        return rng.randbytes(n).decode("latin-1")
    if case == "random_letters":
        return "".join(rng.choices(string.ascii_letters, k=n))
    raise ValueError(case)


def short_strings(text: str, count: int, seed: int) -> list[str]:
    """``count`` runs of 5 to 20 consecutive words of ``text`` at random places."""
    words = text[:20_000_000].replace(SPECIAL, " ").split()
    if len(words) < 40:
        return []
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(5, 20)
        start = rng.randrange(len(words) - n)
        out.append(" ".join(words[start : start + n]))
    return out


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (garbage collector off), and its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best, result


def count_mismatches(ref: list[list[int]], ids: list[list[int]]) -> dict:
    bad = [i for i, (a, b) in enumerate(zip(ref, ids, strict=True)) if a != b]
    out: dict[str, Any] = {"mismatched_docs": len(bad)}
    if bad:
        a, b = ref[bad[0]], ids[bad[0]]
        pos = next(
            (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        out["first_mismatch"] = {
            "doc": bad[0],
            "token": pos,
            "ref": a[pos : pos + 5],
            "got": b[pos : pos + 5],
        }
    return out


# --- child side: one measurement ----------------------------------------------------------------


def child_single(spec: dict) -> dict:
    docs, n_bytes = read_docs(spec["text_path"])
    results: dict[str, Any] = {"bytes": n_bytes, "documents": len(docs)}
    ref_lib, ref = None, None
    for lib in spec["libs"]:  # the reference (tiktoken when present) comes first
        encode = single_encoder(lib, spec)
        encode(docs[0])
        seconds, ids = timed(lambda encode=encode: [encode(d) for d in docs])
        r: dict[str, Any] = {
            "seconds": seconds,
            "mb_per_s": n_bytes / 1e6 / seconds,
            "tokens": sum(len(x) for x in ids),
        }
        if ref is None:
            ref_lib, ref = lib, ids
        else:
            r |= {"checked_against": ref_lib, **count_mismatches(ref, ids)}
        results[lib] = r
        del ids
    results |= numpy_arrays(spec, docs, n_bytes, per_document=False)
    results |= numpy_arrays(spec, docs, n_bytes, per_document=True)
    return results


def numpy_arrays(spec: dict, docs: list[str], n_bytes: int, *, per_document: bool) -> dict:
    """Into NumPy arrays (no Python ints), on one thread, for each library that has such a call
    (``encode_to_numpy``: lmforge's and tiktoken's; Gigatoken's ``encode``); best of 3. The
    whole text in one call (``LIB-numpy``), or one call per document (``LIB-numpy-per-doc``, the
    arrays concatenated to check them)."""
    import numpy as np

    text = "".join(docs)
    suffix = "-numpy-per-doc" if per_document else "-numpy"
    results: dict[str, Any] = {}
    ref, ref_lib = None, ""
    for lib in ("tiktoken", "lmforge", "gigatoken"):
        if lib not in spec["libs"]:
            continue
        if lib == "gigatoken":
            encode = build_gigatoken(spec).encode
        elif lib == "lmforge":
            tok = load_lmforge(spec)
            if not hasattr(tok, "encode_to_numpy"):
                continue
            encode = lambda t, tok=tok: tok.encode_to_numpy(t, num_threads=1)  # noqa: E731
        else:
            enc = build_tiktoken(spec)
            if not hasattr(enc, "encode_to_numpy"):
                continue
            encode = lambda t, enc=enc: enc.encode_to_numpy(t, allowed_special="all")  # noqa: E731
        encode(text[: 1 << 20])
        if per_document:
            run = lambda encode=encode: np.concatenate([encode(d) for d in docs])  # noqa: E731
        else:
            run = lambda encode=encode: encode(text)  # noqa: E731
        seconds, ids = timed(run, repeat=3)
        r: dict[str, Any] = {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds}
        r["tokens"] = int(ids.size)
        if ref is None:
            ref, ref_lib = ids, lib
        else:
            same = ids.size == ref.size and bool(np.array_equal(ids, ref))
            r |= {"checked_against": ref_lib + suffix, "mismatched_docs": int(not same)}
        results[lib + suffix] = r
    return results


def child_batch(spec: dict) -> dict:
    docs, n_bytes = read_docs(spec["text_path"])
    threads = spec["threads"]
    results: dict[str, Any] = {"bytes": n_bytes, "documents": len(docs), "threads": threads}
    ref_lib, ref = None, None
    for lib in spec["libs"]:
        try:
            encode_batch = batch_encoder(lib, spec, threads)
        except MissingMethod as e:
            results[lib] = {"skipped": str(e)}
            continue
        encode_batch(docs[: 4 * threads])
        seconds, ids = timed(lambda f=encode_batch: f(docs))
        r: dict[str, Any] = {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds}
        if ref is None:
            ref_lib, ref = lib, ids
        else:
            r |= {"checked_against": ref_lib, **count_mismatches(ref, ids)}
        results[lib] = r
        del ids
    if ref is not None:
        results |= flat_batches(spec, docs, n_bytes, threads, ref, ref_lib)
    return results


FLAT_LIBS = ("lmforge-flat", "gigatoken-flat")


def flat_batches(
    spec: dict, docs: list[str], n_bytes: int, threads: int, ref: list, ref_lib: str
) -> dict:
    """The batch into one flat array with offsets, no Python ints: lmforge's
    ``encode_batch_to_numpy`` and Gigatoken's ``encode_batch`` (an awkward array, timed as it is
    returned and converted afterwards for the check), best of 3 calls, checked against the
    reference's lists."""
    import numpy as np

    # each library's call, and how its result becomes (ids, offsets) after the timing
    flat: dict[str, tuple[Callable[[list[str]], Any], Callable[[Any], tuple[Any, Any]]]] = {}
    if "lmforge" in spec["libs"]:
        tok = load_lmforge(spec)
        if hasattr(tok, "encode_batch_to_numpy"):
            call = lambda d: tok.encode_batch_to_numpy(d, num_threads=threads)  # noqa: E731
            flat["lmforge-flat"] = (call, lambda r: r)
    if "gigatoken" in spec["libs"]:
        import awkward as ak

        g = build_gigatoken(spec)
        flat["gigatoken-flat"] = (
            g.encode_batch,
            lambda r: (ak.flatten(r).to_numpy(), np.concatenate([[0], np.cumsum(ak.num(r))])),
        )
    want_ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in ref]) if ref else None
    want_lens = np.array([len(x) for x in ref])
    out: dict[str, Any] = {}
    for lib, (encode, to_flat) in flat.items():
        encode(docs[: 4 * threads])
        seconds, result = timed(lambda f=encode: f(docs), repeat=3)
        ids, offsets = to_flat(result)
        same = (
            want_ids is not None
            and np.array_equal(np.diff(offsets), want_lens)
            and np.array_equal(ids, want_ids)
        )
        out[lib] = {
            "seconds": seconds,
            "mb_per_s": n_bytes / 1e6 / seconds,
            "checked_against": ref_lib,
            "mismatched_docs": 0 if same else -1,  # -1: some document differs
        }
    return out


def child_numpy_scaling(spec: dict) -> dict:
    """lmforge's ``encode_to_numpy`` on the whole text (no Python ints) at every thread count of
    ``threads_list``, in one process: the encoder's own scaling, without the single-threaded
    building of Python lists that ``encode_batch`` needs. On a shared virtual machine one core's
    speed drifts by tens of percent from second to second, so the thread counts take turns over
    ``rounds`` rounds, each a window of repeated calls, and each rate is all the bytes of its
    windows over all their time; the ids of every thread count are checked against one
    thread's."""
    import numpy as np

    tok = load_lmforge(spec)
    if not hasattr(tok, "encode_to_numpy"):
        return {"skipped": "lmforge has no Tokenizer.encode_to_numpy"}
    docs, n_bytes = read_docs(spec["text_path"])
    text = "".join(docs)
    del docs
    threads_list = spec["threads_list"]
    ref = tok.encode_to_numpy(text, num_threads=1)
    totals = {t: [0, 0.0, 0] for t in threads_list}  # bytes, seconds, calls
    mismatched = dict.fromkeys(threads_list, 0)
    for t in threads_list:
        ids = tok.encode_to_numpy(text, num_threads=t)  # the pool starts, buffers grow
        mismatched[t] = int(not np.array_equal(ids, ref))
        del ids
    for _ in range(spec["rounds"]):
        for t in threads_list:
            window_start = time.perf_counter()
            while True:
                gc.disable()
                start = time.perf_counter()
                ids = tok.encode_to_numpy(text, num_threads=t)
                seconds = time.perf_counter() - start
                gc.enable()
                del ids
                totals[t][0] += n_bytes
                totals[t][1] += seconds
                totals[t][2] += 1
                if time.perf_counter() - window_start >= spec["window_s"]:
                    break
    out: dict[str, Any] = {"bytes": n_bytes, "rounds": spec["rounds"], "window_s": spec["window_s"]}
    for t in threads_list:
        b, sec, calls = totals[t]
        out[str(t)] = {
            "mb_per_s": b / 1e6 / sec,
            "calls": calls,
            "checked_against": "1 thread",
            "mismatched_docs": mismatched[t],
        }
    return out


def child_solo(spec: dict) -> dict:
    """One of ``t`` processes started together, each encoding its own slice of the text on one
    thread (``encode_to_numpy``) over and over in the same wall-clock window: with nothing
    shared between them, ``t`` of these bound what ``t`` threads of one process can reach on
    this machine (cores shared with hyper-threads or other guests, lower clocks with more cores
    busy, memory bandwidth). The rate counts the passes finished inside the window."""
    tok = load_lmforge(spec)
    with open(spec["text_path"], encoding="utf-8") as f:
        text = f.read()
    size = spec["slice_chars"]
    k = spec["index"] % max(1, len(text) // size)
    part = text[k * size : (k + 1) * size]
    del text
    n_bytes = len(part.encode("utf-8"))
    tok.encode_to_numpy(part, num_threads=1)
    start_at, end_at = spec["start_at"], spec["start_at"] + spec["window_s"]
    time.sleep(max(0.0, start_at - time.time()))
    passes, last = 0, time.time()
    while True:
        tok.encode_to_numpy(part, num_threads=1)
        now = time.time()
        if now > end_at:
            break
        passes, last = passes + 1, now
    if passes == 0:
        return {"error": "no pass finished inside the window"}
    return {
        "bytes": n_bytes,
        "passes": passes,
        "mb_per_s": passes * n_bytes / 1e6 / (last - start_at),
    }


def child_worst(spec: dict) -> dict:
    text = worst_case_text(spec["case"], spec["chars"], spec["text_path"], spec["seed"])
    n_bytes = len(text.encode("utf-8"))
    encode = single_encoder(spec["lib"], spec)
    encode("warm up the tokenizer")
    # Each case, the text's slice included, is timed on its first call in a fresh process, so no
    # cache of earlier pretokens helps; the best of two more calls is kept as "warm_seconds".
    seconds, ids = timed(lambda: encode(text))
    warm = timed(lambda: encode(text), repeat=2)[0] if seconds < 2 else None
    return {
        "chars": len(text),
        "bytes": n_bytes,
        "seconds": seconds,
        "mb_per_s": n_bytes / 1e6 / seconds,
        "warm_seconds": warm,
        "tokens": len(ids),
        "ids_sha256": hashlib.sha256(ids_bytes(ids)).hexdigest(),
    }


def ids_bytes(ids: Any) -> bytes:
    """Ids as little-endian uint64 bytes, from a list or a NumPy array alike."""
    if hasattr(ids, "astype"):
        return ids.astype("<u8").tobytes()
    return array.array("Q", ids).tobytes()


def child_tiny(spec: dict) -> dict:
    with open(spec["strings_path"], encoding="utf-8") as f:
        texts = json.load(f)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    results: dict[str, Any] = {"strings": len(texts), "bytes": n_bytes}
    ref_lib, ref = None, None
    for lib in spec["libs"]:
        r: dict[str, Any] = {}
        encode = single_encoder(lib, spec)
        encode(texts[0])
        r["loop_seconds"], ids = timed(lambda encode=encode: [encode(t) for t in texts], repeat=3)
        try:
            encode_batch = batch_encoder(lib, spec, None)
        except MissingMethod as e:
            r["batch_skipped"] = str(e)
        else:
            encode_batch(texts[:100])
            r["batch_seconds"], batch_ids = timed(lambda f=encode_batch: f(texts), repeat=3)
            if batch_ids != ids:
                r["batch_differs_from_loop"] = count_mismatches(ids, batch_ids)["mismatched_docs"]
        r["tokens"] = sum(len(x) for x in ids)
        if ref is None:
            ref_lib, ref = lib, ids
        else:
            r |= {"checked_against": ref_lib, **count_mismatches(ref, ids)}
        results[lib] = r
    return results


def child_files(spec: dict) -> dict:
    tok = load_lmforge(spec)
    if not hasattr(tok, "encode_files"):
        raise MissingMethod("lmforge has no Tokenizer.encode_files")
    rss_before = current_rss_mb()
    start = time.perf_counter()
    ret = tok.encode_files([spec["files_path"]], spec["out_bin"], num_threads=None, progress=False)
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "out_bytes": os.path.getsize(spec["out_bin"]),
        "n_vocab": tok.n_vocab,
        "rss_before_encode_mb": rss_before,
    }
    header = getattr(ret, "header", None)  # a lmforge.data.TokenFile
    if dataclasses.is_dataclass(header) and not isinstance(header, type):
        result["header"] = dataclasses.asdict(header)
    else:
        try:
            result["returned"] = json.loads(json.dumps(ret))
        except TypeError:
            result["returned"] = repr(ret)
    return result


CHILDREN = {
    "single": child_single,
    "batch": child_batch,
    "numpy_scaling": child_numpy_scaling,
    "worst": child_worst,
    "solo": child_solo,
    "tiny": child_tiny,
    "files": child_files,
}


def child_main(args: argparse.Namespace) -> int:
    spec = json.loads(args.child_spec)
    try:
        result = CHILDREN[args.child](spec)
    except MissingMethod as e:
        emit_result({"skipped": str(e)})
        return 0
    except Exception as e:  # noqa: BLE001 -- any failure goes to the parent as a result
        emit_result({"error": f"{type(e).__name__}: {e}"})
        return 1
    emit_result(result)
    return 0


# --- parent side --------------------------------------------------------------------------------


def run_measurement(
    kind: str, spec: dict, env_overrides: dict[str, str], timeout: float | None = None
) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    cmd += ["--child-spec", json.dumps(spec)]
    env = dict(os.environ) | env_overrides
    code, stdout, peak_rss_mb = run_child(cmd, env, timeout=timeout)
    if code is None:
        return {"timeout_s": timeout, "peak_rss_mb": peak_rss_mb}
    result = parse_result(stdout) or {"error": f"child exited with code {code} and no result"}
    result["peak_rss_mb"] = peak_rss_mb
    if "error" in result:
        print(f"  {kind} {spec.get('vocab')} FAILED: {result['error']}", flush=True)
    return result


def single_thread_env() -> dict[str, str]:
    return {"LMFORGE_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare_text(src: Path, max_bytes: int, out: Path) -> str:
    """The first ``max_bytes`` (0: all) of ``src``'s text, cut after the last whole document (or
    line), written to ``out`` as UTF-8. Untimed."""
    with open_binary(src) as f:
        data = f.read(max_bytes) if max_bytes > 0 else f.read()
        truncated = max_bytes > 0 and f.read(1) != b""
    if truncated:
        cut = data.rfind(SPECIAL.encode())
        cut = cut + len(SPECIAL) if cut > 0 else data.rfind(b"\n") + 1
        data = data[:cut] if cut > 0 else data
    text = data.decode("utf-8", errors="replace")
    out.write_text(text, encoding="utf-8")
    return text


def pkg_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def status_of(r: dict) -> str | None:
    """'timeout', 'skipped' or 'failed' for a result that has no timing, else None."""
    if "timeout_s" in r:
        return f"timeout ({r['timeout_s']:g} s)"
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "failed"
    return None


def check_text(r: dict) -> str:
    if "mismatched_docs" not in r:
        return "reference" if "seconds" in r or "loop_seconds" in r else "-"
    n = r["mismatched_docs"]
    if n < 0:  # counted as a whole (the flat arrays)
        return f"differs from {r['checked_against']}"
    return "identical" if n == 0 else f"{n} docs differ from {r['checked_against']}"


TIKTOKEN_LMFORGE = ("tiktoken", "lmforge", "gigatoken")


def part_single(vocabs: dict, ctx: dict) -> dict:
    print("\n[1] single thread, one encode call per document", flush=True)
    out, rows = {}, []
    for name, spec in vocabs.items():
        print(f"  {name} ...", flush=True)
        r = run_measurement("single", spec | {"libs": spec["libs"]}, single_thread_env())
        out[name] = r
        lm = r.get("lmforge", {})
        arrays = [f"{lib}-numpy{each}" for each in ("", "-per-doc") for lib in TIKTOKEN_LMFORGE]
        for lib in [*spec["libs"], *arrays]:
            x = r.get(lib, {})
            if "seconds" not in x:
                if "numpy" not in lib:
                    rows.append([name, lib, status_of(r) or "failed", "-", "-", "-", "-"])
                continue
            ref = r.get("lmforge" + lib[lib.index("-") :], {}) if "numpy" in lib else lm
            ratio = x["seconds"] / ref["seconds"] if "seconds" in ref else None
            bpt = r["bytes"] / x["tokens"] if x["tokens"] else None
            row = [name, lib, fmt(x["mb_per_s"]), fmt(x["seconds"], 2), fmt(bpt, 2)]
            rows.append(row + [fmt_x(ratio), check_text(x)])
        for other in ("tiktoken", "hf", "gigatoken"):
            if "seconds" in lm and "seconds" in r.get(other, {}):
                r[f"lmforge_speedup_vs_{other}"] = r[other]["seconds"] / lm["seconds"]
        for each in ("", "-per-doc"):
            lm_x, gt_x = r.get(f"lmforge-numpy{each}", {}), r.get(f"gigatoken-numpy{each}", {})
            if "seconds" in lm_x and "seconds" in gt_x:
                key = f"lmforge_numpy{each.replace('-', '_')}_speedup_vs_gigatoken"
                r[key] = gt_x["seconds"] / lm_x["seconds"]
        lm_np, tt_np = r.get("lmforge-numpy", {}), r.get("tiktoken-numpy", {})
        if "seconds" in lm_np and "seconds" in tt_np:
            r["lmforge_numpy_speedup_vs_tiktoken_numpy"] = tt_np["seconds"] / lm_np["seconds"]
        if "seconds" in lm_np and "seconds" in r.get("tiktoken", {}):
            r["lmforge_numpy_speedup_vs_tiktoken"] = r["tiktoken"]["seconds"] / lm_np["seconds"]
        lm_doc, tt_doc = r.get("lmforge-numpy-per-doc", {}), r.get("tiktoken-numpy-per-doc", {})
        if "seconds" in lm_doc and "seconds" in tt_doc:
            r["lmforge_numpy_per_doc_speedup_vs_tiktoken_numpy_per_doc"] = (
                tt_doc["seconds"] / lm_doc["seconds"]
            )
    print_table(
        ["vocab", "library", "MB/s", "seconds", "bytes/token", "lmforge speed-up", "ids"], rows
    )
    return out


def part_batch(vocabs: dict, ctx: dict) -> dict:
    threads_list = ctx["threads_list"]
    print(f"\n[2] encode_batch over all documents, threads {threads_list}", flush=True)
    out, rows = {}, []
    for name, spec in vocabs.items():
        per_t = {}
        for t in threads_list:
            print(f"  {name}, {t} thread(s) ...", flush=True)
            env = {
                "LMFORGE_NUM_THREADS": str(t),
                "RAYON_NUM_THREADS": str(t),
                "TOKENIZERS_PARALLELISM": "true",
            }
            per_t[str(t)] = run_measurement("batch", spec | {"threads": t}, env)
        base = per_t.get("1", {})
        for lib in [*spec["libs"], *(f for f in FLAT_LIBS if f in base)]:
            rate1 = base.get(lib, {}).get("mb_per_s")
            for t in threads_list:
                x = per_t[str(t)].get(lib, {})
                if "mb_per_s" not in x:
                    rows.append([name, lib, t, status_of(x) or status_of(per_t[str(t)]), "-", "-"])
                    continue
                eff = x["mb_per_s"] / (t * rate1) if rate1 else None
                x["efficiency"] = eff
                rows.append([name, lib, t, fmt(x["mb_per_s"]), fmt(eff, 2), check_text(x)])
        numpy = {}
        if "lmforge" in spec["libs"]:
            print(f"  {name}, encode_to_numpy at every thread count, interleaved ...", flush=True)
            spec_np = spec | {"threads_list": threads_list, "rounds": 3, "window_s": 1.0}
            numpy = run_measurement("numpy_scaling", spec_np, {})
        solo = independent_processes(spec, threads_list)
        for label, res in (("lmforge-numpy", numpy), ("1-thread processes", solo)):
            rate1 = res.get("1", {}).get("mb_per_s")
            for t in threads_list:
                x = res.get(str(t), {})
                if "mb_per_s" not in x:
                    rows.append([name, label, t, status_of(x) or status_of(res) or "-", "-", "-"])
                    continue
                x["efficiency"] = x["mb_per_s"] / (t * rate1) if rate1 else None
                rows.append(
                    [name, label, t, fmt(x["mb_per_s"]), fmt(x["efficiency"], 2), check_text(x)]
                )
        out[name] = per_t | {"lmforge-numpy": numpy, "independent_processes": solo}
    print_table(["vocab", "library", "threads", "MB/s", "efficiency", "ids"], rows)
    return out


def independent_processes(
    spec: dict, threads_list: list[int], slice_chars: int = 2_000_000, window_s: float = 3.0
) -> dict:
    """The machine's own ceiling for the thread scaling: ``t`` single-threaded processes started
    together (``child_solo``), each on its own slice; efficiency = mean rate / the lone rate."""
    from concurrent.futures import ThreadPoolExecutor

    out: dict[str, Any] = {}
    for t in threads_list:
        print(f"  {spec['vocab']}, {t} independent process(es) ...", flush=True)
        start_at = time.time() + 3.0 + 0.5 * t
        specs = [
            spec
            | {"index": i, "slice_chars": slice_chars, "start_at": start_at, "window_s": window_s}
            for i in range(t)
        ]
        with ThreadPoolExecutor(t) as pool:
            results = list(
                pool.map(lambda s: run_measurement("solo", s, single_thread_env()), specs)
            )
        rates = [r["mb_per_s"] for r in results if "mb_per_s" in r]
        if len(rates) < t:
            out[str(t)] = {"error": "a process failed", "results": results}
            continue
        out[str(t)] = {"mb_per_s": sum(rates), "per_process": rates}
    return out


def part_worst(vocabs: dict, ctx: dict) -> dict:
    timeout = ctx["worst_timeout"]
    print(
        f"\n[3] worst cases, {ctx['worst_chars']:,} characters each, single thread, "
        f"{timeout:g} s cap per child process",
        flush=True,
    )
    out, rows = {}, []
    for name, spec in vocabs.items():
        per_case: dict[str, dict] = {}
        # lmforge twice: through `encode` (a list of Python ints, as the others return) and
        # through `encode_to_numpy` (the encoder alone; building ints costs per token, and the
        # random cases have three times the tokens per byte of text).
        libs = [*spec["libs"], *(["lmforge-numpy"] if "lmforge" in spec["libs"] else [])]
        for case in WORST_CASES:
            per_case[case] = {}
            for lib in libs:
                print(f"  {name}, {case}, {lib} ...", flush=True)
                s = spec | {"lib": lib, "case": case, "chars": ctx["worst_chars"]}
                s["seed"] = ctx["seed"]
                # The fastest of a few fresh processes: on a shared machine one first call can
                # be slowed by tens of percent by the neighbours.
                runs = [
                    run_measurement("worst", s, single_thread_env(), timeout)
                    for _ in range(ctx["worst_repeats"])
                ]
                timed_runs = [r for r in runs if "seconds" in r]
                best = min(timed_runs, key=lambda r: r["seconds"]) if timed_runs else runs[0]
                best["first_call_seconds_all"] = [r["seconds"] for r in timed_runs]
                per_case[case][lib] = best
        for lib in libs:
            base = per_case["text"][lib]
            for case in WORST_CASES:
                x = per_case[case][lib]
                if "seconds" not in x:
                    rows.append([name, lib, case, "-", status_of(x), "-", "-", "-", "-"])
                    continue
                slow = None
                if "seconds" in base:
                    slow = (x["seconds"] / x["bytes"]) / (base["seconds"] / base["bytes"])
                    x["per_byte_vs_text"] = slow
                verdict = "-"
                if lib.startswith("lmforge") and slow is not None and case != "text":
                    x["within_target"] = slow <= WORST_TARGET
                    verdict = "yes" if x["within_target"] else "NO"
                ref_lib = spec["libs"][0]
                ref = per_case[case][ref_lib]
                ids = "reference" if lib == ref_lib else "-"
                if lib != ref_lib and "ids_sha256" in ref:
                    x["ids_equal_to"] = {ref_lib: x["ids_sha256"] == ref["ids_sha256"]}
                    ids = "identical" if x["ids_equal_to"][ref_lib] else f"DIFFER from {ref_lib}"
                row = [name, lib, case, f"{x['bytes']:,}", fmt(x["seconds"], 3)]
                rows.append(row + [fmt(x["mb_per_s"]), fmt_x(slow), verdict, ids])
        out[name] = per_case
    target = f"within {WORST_TARGET:.0f}x"
    headers = ["vocab", "library", "case", "bytes", "seconds", "MB/s", "per byte vs text"]
    print_table([*headers, target, "ids"], rows)
    return out


def part_tiny(vocabs: dict, ctx: dict) -> dict:
    n = len(ctx["strings"])
    print(f"\n[4] {n:,} short strings, encode_batch (all cores) and a loop of encode", flush=True)
    if not n:
        print("  the text is too short to draw short strings from")
        return {}
    out, rows = {}, []
    for name, spec in vocabs.items():
        print(f"  {name} ...", flush=True)
        r = run_measurement("tiny", spec | {"strings_path": ctx["strings_path"]}, {})
        out[name] = r
        for lib in spec["libs"]:
            x = r.get(lib, {})
            if "loop_seconds" not in x:
                rows.append([name, lib, status_of(r) or "failed", "-", "-", "-"])
                continue
            batch = fmt(x["batch_seconds"] * 1e3) if "batch_seconds" in x else "skipped"
            rows.append(
                [name, lib, batch, fmt(x["loop_seconds"] * 1e3), x["tokens"], check_text(x)]
            )
    print_table(["vocab", "library", "batch ms", "loop ms", "tokens", "ids"], rows)
    return out


def verify_token_file(spec: dict, r: dict, docs: list[str], skip_tiktoken: bool) -> dict:
    """Compare the token file's start with the first documents' ids (tiktoken's, else
    lmforge's ``encode``)."""
    import numpy as np

    size = r["out_bytes"]
    header = r.get("header") or {}
    sidecar = Path(spec["out_bin_path"] + ".json")
    if not header and sidecar.is_file():
        header = json.loads(sidecar.read_text(encoding="utf-8"))
    if header.get("dtype") in ("uint16", "uint32"):
        dtype = np.dtype("<u2" if header["dtype"] == "uint16" else "<u4")
    else:  # an int, a dict with "tokens", or one such dict per file; else the n_vocab rule
        ret = r.get("returned")
        stats = ret if isinstance(ret, list) else [ret]
        counts = [x.get("tokens") if isinstance(x, dict) else x for x in stats]
        ok = counts and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        tokens = sum(counts) if ok else None
        if tokens:
            itemsize = size // tokens if size % tokens == 0 else 0
        else:
            itemsize = 2 if r["n_vocab"] <= 1 << 16 else 4
        if itemsize not in (2, 4) or size % itemsize:
            return {"verified": False, "why": f"cannot tell the dtype ({size} bytes, {ret!r})"}
        dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    arr = np.fromfile(spec["out_bin_path"], dtype=dtype)
    if skip_tiktoken:
        ref_name, encode = "lmforge encode", load_lmforge(spec).encode
    else:
        enc = build_tiktoken(spec)
        ref_name = "tiktoken"

        def encode(text: str) -> list[int]:
            return enc.encode(text, allowed_special="all")

    eot = GPT2_EOT_ID if spec["vocab"] == "gpt2" else load_lmforge(spec).special_tokens[SPECIAL]
    expected: list[int] = []
    n_docs = min(VERIFY_DOCS, len(docs))
    for doc in docs[:n_docs]:
        expected += encode(doc) if doc.endswith(SPECIAL) else encode(doc) + [eot]
    got = arr[: len(expected)].tolist()
    result = {"tokens": int(arr.size), "dtype": dtype.name, "against": ref_name}
    if "n_tokens" in header and header["n_tokens"] != arr.size:
        result["header_n_tokens"] = header["n_tokens"]
    result |= {"documents_checked": n_docs, "verified": got == expected}
    if got != expected:
        pos = next(
            (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got)
        )
        result["first_difference"] = {
            "token": pos,
            "file": got[pos : pos + 5],
            "expected": expected[pos : pos + 5],
        }
    return result


def part_files(vocabs: dict, ctx: dict) -> dict:
    what = f"{ctx['files_path']}, {ctx['files_bytes'] / 1e6:.1f} MB"
    print(f"\n[5] encode_files on {what} (all cores)", flush=True)
    out, rows = {}, []
    for name, spec in vocabs.items():
        print(f"  {name} ...", flush=True)
        out_bin = str(Path(ctx["tmp"]) / f"{name}.bin")
        r = run_measurement(
            "files", spec | {"out_bin": out_bin, "files_path": ctx["files_path"]}, {}
        )
        out[name] = r
        if "seconds" not in r:
            rows.append([name, status_of(r), "-", "-", "-", "-"])
            if "skipped" in r:
                print(f"  {r['skipped']}")
            continue
        r["bytes"] = ctx["files_bytes"]
        r["mb_per_s"] = ctx["files_bytes"] / 1e6 / r["seconds"]
        r["check"] = verify_token_file(
            spec | {"out_bin_path": out_bin}, r, ctx["docs"], "tiktoken" not in spec["libs"]
        )
        check = r["check"]
        ok = ("ok vs " + check["against"]) if check.get("verified") else "MISMATCH"
        rows.append(
            [
                name,
                fmt(r["seconds"], 2),
                fmt(r["mb_per_s"]),
                fmt(r["peak_rss_mb"], 0),
                f"{check.get('tokens', 0):,}",
                f"{ok} ({check.get('documents_checked', 0)} docs)",
            ]
        )
        for leftover in (out_bin, out_bin + ".json"):
            Path(leftover).unlink(missing_ok=True)
    print_table(["vocab", "seconds", "MB/s", "peak RSS MB", "tokens", "first docs"], rows)
    return out


PART_FUNCS = {1: part_single, 2: part_batch, 3: part_worst, 4: part_tiny, 5: part_files}
PART_NAMES = {
    1: "single_thread",
    2: "thread_scaling",
    3: "worst_case",
    4: "short_strings",
    5: "encode_files",
}


def default_threads_list() -> list[int]:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = [1]
    while out[-1] * 2 <= n:
        out.append(out[-1] * 2)
    if out[-1] != n:
        out.append(n)
    return out


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="text, .xz or .gz")
    parser.add_argument("--max-bytes", type=int, default=50_000_000, help="0: the whole input")
    parser.add_argument("--vocab", default=",".join(VOCABS), help="comma-separated: gpt2,trained")
    parser.add_argument("--parts", default="1,2,3,4,5", help="measurements to run (1-5)")
    parser.add_argument("--threads-list", default=None, help="e.g. 1,2,4 (default: 1,2,4..nproc)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-gigatoken", action="store_true")
    parser.add_argument("--skip-tiktoken", action="store_true")
    parser.add_argument("--worst-timeout", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--worst-chars", type=int, default=1_000_000)
    parser.add_argument(
        "--worst-repeats", type=int, default=3, help="fresh processes per worst case (the fastest)"
    )
    parser.add_argument("--short-strings", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--files-whole-input",
        action="store_true",
        help="measurement 5 encodes --input itself (whole, maybe compressed), not the cut text",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--gpt2-dir", type=Path, default=GPT2_DIR, help="folder with encoder.json + merges.txt"
    )
    parser.add_argument("--tmp-dir", type=Path, default=None, help="for the decompressed text")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        return child_main(args)

    vocab_names = [v.strip() for v in args.vocab.split(",") if v.strip()]
    if not vocab_names or any(v not in VOCABS for v in vocab_names):
        parser.error(f"--vocab: choose from {', '.join(VOCABS)} (got {args.vocab!r})")
    try:
        parts = sorted(set(int_list(args.parts)))
        threads_list = int_list(args.threads_list) if args.threads_list else default_threads_list()
    except ValueError:
        parser.error("--parts and --threads-list take comma-separated integers")
    if not parts or any(p not in PARTS for p in parts):
        parser.error("--parts: choose from 1,2,3,4,5")
    if not threads_list or min(threads_list) < 1:
        parser.error("--threads-list: positive integers")
    if 1 not in threads_list:
        threads_list = [1, *threads_list]  # efficiency needs the 1-thread rate

    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        print(f"note: {msg}", flush=True)

    src = args.input.resolve()
    if not src.is_file():
        print(f"input {src} not found; nothing to benchmark (pass --input PATH).")
        return 0
    gpt2_dir = args.gpt2_dir
    encoder_json, merges_txt = gpt2_dir / "encoder.json", gpt2_dir / "merges.txt"
    if "gpt2" in vocab_names and not (encoder_json.is_file() and merges_txt.is_file()):
        note(f"GPT-2 files not found in {gpt2_dir}: the gpt2 vocab is skipped")
        vocab_names.remove("gpt2")
    if not vocab_names:
        print("no vocabulary to benchmark; nothing to do.")
        return 0

    try:
        import lmforge
        from lmforge import Tokenizer
        from lmforge.tokenizer import load_gpt2
    except ImportError as e:
        print(f"cannot import lmforge ({e}); build it first (pip install . or maturin develop).")
        return 1
    methods = {m: hasattr(Tokenizer, m) for m in MISSING_METHOD_EFFECT}
    for m, present in methods.items():
        if not present:
            note(f"lmforge has no Tokenizer.{m}: {MISSING_METHOD_EFFECT[m]}")

    libs = ["tiktoken", "lmforge", "hf", "gigatoken"]  # the first present library is the reference
    if args.skip_tiktoken:
        libs.remove("tiktoken")
    elif importlib.util.find_spec("tiktoken") is None:
        note("tiktoken is not installed: skipped (pip install '.[bench]')")
        libs.remove("tiktoken")
    if args.skip_hf:
        libs.remove("hf")
    elif importlib.util.find_spec("tokenizers") is None:
        note("Hugging Face tokenizers is not installed: skipped (pip install '.[bench]')")
        libs.remove("hf")
    if args.skip_gigatoken:
        libs.remove("gigatoken")
    elif importlib.util.find_spec("gigatoken") is None:
        note("Gigatoken is not installed: skipped (pip install gigatoken)")
        libs.remove("gigatoken")

    with tempfile.TemporaryDirectory(prefix="bench_encode-", dir=args.tmp_dir) as tmp:
        text_path = Path(tmp) / "text.txt"
        print(f"reading {src} (untimed) ...", flush=True)
        text = prepare_text(src, args.max_bytes, text_path)
        docs = split_documents(text)
        n_bytes = text_path.stat().st_size
        print(f"text: {n_bytes / 1e6:.1f} MB, {len(docs):,} documents", flush=True)
        strings = short_strings(text, args.short_strings, args.seed) if 4 in parts else []
        strings_path = Path(tmp) / "strings.json"
        strings_path.write_text(json.dumps(strings), encoding="utf-8")
        del text

        vocabs: dict[str, dict] = {}
        setup: dict[str, dict] = {}
        for name in vocab_names:
            spec: dict[str, Any] = {"vocab": name, "text_path": str(text_path)}
            info: dict[str, Any] = {}
            if name == "gpt2":
                spec |= {"encoder_json": str(encoder_json), "merges_txt": str(merges_txt)}
                info["tiktoken_from"] = "encoder.json"
                if methods["save_hf"] or "gigatoken" in libs:
                    tok = load_gpt2(encoder_json, merges_txt)
            else:
                print(
                    f"training {TRAINED_VOCAB_SIZE:,} tokens on the text (untimed) ...", flush=True
                )
                start = time.perf_counter()
                tok = Tokenizer.train(str(text_path), TRAINED_VOCAB_SIZE, progress=False)
                info["train_seconds"] = time.perf_counter() - start
                spec["lmforge_json"] = str(Path(tmp) / "trained.json")
                tok.save(spec["lmforge_json"])
                info["tiktoken_from"] = "to_tiktoken" if methods["to_tiktoken"] else "tok.vocab"
            spec_libs = list(libs)
            if "hf" in libs:
                if methods["save_hf"]:
                    spec["hf_json"] = str(Path(tmp) / f"{name}.hf.json")
                    tok.save_hf(spec["hf_json"])
                    info["hf_from"] = "save_hf"
                elif name == "gpt2":
                    info["hf_from"] = "GPT-2 files"
                else:
                    info["hf_from"] = None
                    spec_libs.remove("hf")
            if "gigatoken" in libs:
                if tok.pattern in GIGATOKEN_PATTERNS:
                    spec["tiktoken_file"] = str(Path(tmp) / f"{name}.tiktoken")
                    tok.save_tiktoken(spec["tiktoken_file"])
                    spec["pattern"], spec["eot_id"] = tok.pattern, tok.special_tokens[SPECIAL]
                    info["gigatoken_from"] = "save_tiktoken"
                else:
                    info["gigatoken_from"] = None
                    spec_libs.remove("gigatoken")
            spec["libs"] = spec_libs
            vocabs[name], setup[name] = spec, info

        ctx = {
            "tmp": tmp,
            "bytes": n_bytes,
            "docs": docs,
            "threads_list": threads_list,
            "worst_timeout": args.worst_timeout,
            "worst_chars": args.worst_chars,
            "worst_repeats": max(1, args.worst_repeats),
            "seed": args.seed,
            "strings": strings,
            "strings_path": str(strings_path),
            "files_path": str(text_path),
            "files_bytes": n_bytes,
        }
        if 5 in parts and args.files_whole_input:
            print(f"measuring {src} (untimed) ...", flush=True)
            ctx |= {"files_path": str(src), "files_bytes": uncompressed_size(src)}
        results = {}
        for p in parts:
            results[PART_NAMES[p]] = PART_FUNCS[p](vocabs, ctx)

    report = {
        "benchmark": "encode",
        "timestamp": now_utc().isoformat(timespec="seconds"),
        "input": str(src),
        "max_bytes": args.max_bytes,
        "bytes": n_bytes,
        "documents": len(docs),
        "short_strings": len(strings),
        "worst_chars": args.worst_chars,
        "worst_timeout_s": args.worst_timeout,
        "worst_repeats": args.worst_repeats,
        "threads_list": threads_list,
        "encode_files_input": "--input, whole" if args.files_whole_input else "the cut text",
        "special_tokens": [SPECIAL],
        **machine_info(),
        "versions": {
            "lmforge": getattr(lmforge, "__version__", None),
            "tiktoken": pkg_version("tiktoken"),
            "tokenizers": pkg_version("tokenizers"),
        },
        "lmforge_methods": methods,
        "notes": notes,
        "vocabs": {name: {"libraries": vocabs[name]["libs"], **setup[name]} for name in vocabs},
        "results": results,
    }
    out = args.out or default_out_path("encode")
    write_json(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
