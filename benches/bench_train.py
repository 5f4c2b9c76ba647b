"""Side-by-side BPE training benchmark: lmforge vs Hugging Face tokenizers and rustbpe (not a test).

What it measures, per trainer: the wall-clock time of the train call alone (interpreter start and
imports excluded), the peak RSS of the whole trainer process, and the vocab size reached. Each
trainer runs in its own fresh subprocess (this script re-invoked with ``--child``), so the peak
RSS is that trainer's only (read with ``os.wait4`` once the child exits).

Both trainers read the same plain-text file. A compressed input (``.xz``/``.gz``) is decompressed
once, untimed, into a temporary file; ``--repeat-input K`` writes K concatenated copies of the text
there (e.g. the 220 MB stories corpus x5 for a ~1 GB corpus). Both train byte-level BPE with the
GPT-2 pretokenization pattern and ``<|endoftext|>`` as the special token. rustbpe (nanochat's
trainer, ``pip install rustbpe``) has no special tokens and takes an iterator of strings: it gets
the documents between the ``<|endoftext|>`` separators, read from the same file in 1 MB chunks
inside the timed call, and trains one token fewer (the others count the special token in
``vocab_size``), so all three learn the same number of merges.

    python benches/bench_train.py [--input PATH] [--vocab-size 32000] [--threads N]
        [--repeat-input K] [--trainers lmforge,hf] [--skip-hf] [--out PATH.json]

Results: a table on stdout and a JSON file in ``benches/results/``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import lzma
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    REPO,
    current_rss_mb,
    default_out_path,
    emit_result,
    machine_info,
    now_utc,
    parse_result,
    print_table,
    run_child,
    write_json,
)

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "stories" / "train.txt.xz"
SPECIAL = "<|endoftext|>"
TRAINERS = ("lmforge", "hf", "rustbpe")


# --- child side: one trainer, timed -------------------------------------------------------------


def train_lmforge(path: str, vocab_size: int, threads: int | None) -> dict:
    import lmforge
    from lmforge import Tokenizer

    kwargs = {} if threads is None else {"num_threads": threads}
    rss_before = current_rss_mb()
    start = time.perf_counter()
    tok = Tokenizer.train(
        [path], vocab_size, special_tokens=(SPECIAL,), pattern="gpt2", progress=False, **kwargs
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "vocab": len(tok.vocab),
        "rss_before_train_mb": rss_before,
        "version": getattr(lmforge, "__version__", None),
    }


def train_hf(path: str, vocab_size: int, threads: int | None) -> dict:
    # Threads: RAYON_NUM_THREADS, set by the parent in this process's environment.
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=0,
    )
    rss_before = current_rss_mb()
    start = time.perf_counter()
    tok.train([path], trainer)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "vocab": tok.get_vocab_size(),
        "rss_before_train_mb": rss_before,
        "version": tokenizers.__version__,
    }


def train_rustbpe(path: str, vocab_size: int, threads: int | None) -> dict:
    # Threads: RAYON_NUM_THREADS, set by the parent in this process's environment.
    import rustbpe

    from lmforge._bpe import GPT2_PATTERN

    def documents():  # the text between separators, as lmforge and HF split it
        rest = ""
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(1 << 20):
                parts = (rest + chunk).split(SPECIAL)
                rest = parts.pop()
                yield from parts
        if rest:
            yield rest

    tok = rustbpe.Tokenizer()
    rss_before = current_rss_mb()
    start = time.perf_counter()
    tok.train_from_iterator(documents(), vocab_size - 1, pattern=GPT2_PATTERN)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "vocab": tok.vocab_size + 1,  # + the special token the others count
        "rss_before_train_mb": rss_before,
        "version": importlib.metadata.version("rustbpe"),
    }


def child_main(args: argparse.Namespace) -> int:
    train = {"lmforge": train_lmforge, "hf": train_hf, "rustbpe": train_rustbpe}[args.child]
    try:
        result = train(args.child_path, args.vocab_size, args.threads)
    except ImportError as e:
        emit_result({"error": f"cannot import the {args.child} trainer: {e}"})
        return 1
    except Exception as e:  # noqa: BLE001 -- any failure goes to the parent as a result
        emit_result({"error": f"{type(e).__name__}: {e}"})
        return 1
    emit_result(result)
    return 0


# --- parent side --------------------------------------------------------------------------------


def prepare_corpus(src: Path, repeat: int, tmp_dir: Path) -> Path:
    """A plain-text file holding ``repeat`` copies of ``src``'s text (``src`` itself if it is
    plain text and ``repeat`` is 1). Untimed."""
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(src.suffix)
    if opener is None and repeat == 1:
        return src
    opener = opener or open
    out = tmp_dir / (src.stem if src.suffix in (".xz", ".gz") else src.name)
    print(f"preparing {out} from {src} ({repeat} x the text, untimed) ...", flush=True)
    with open(out, "wb") as dst:
        for _ in range(repeat):
            with opener(src, "rb") as f:
                shutil.copyfileobj(f, dst, 1 << 20)
    return out


def run_trainer(name: str, corpus: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    cmd += ["--child-path", str(corpus), "--vocab-size", str(args.vocab_size)]
    env = dict(os.environ)
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
        env["RAYON_NUM_THREADS"] = str(args.threads)
    print(f"training {name} ...", flush=True)
    code, stdout, peak_rss_mb = run_child(cmd, env)
    result = parse_result(stdout) or {"error": f"child exited with code {code} and no result"}
    result["exit_code"] = code
    result["peak_rss_mb"] = peak_rss_mb
    if "error" in result:
        print(f"  {name} FAILED: {result['error']}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="text, .xz or .gz")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=None, help="default: the trainers' own")
    parser.add_argument("--repeat-input", type=int, default=1, metavar="K")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated")
    parser.add_argument("--skip-hf", action="store_true", help="drop hf from --trainers")
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="for the decompressed corpus")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--child-path", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        return child_main(args)

    names = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if args.skip_hf:
        names = [t for t in names if t != "hf"]
    unknown = [t for t in names if t not in TRAINERS]
    if unknown or not names:
        parser.error(f"--trainers: choose from {', '.join(TRAINERS)} (got {args.trainers!r})")
    if args.repeat_input < 1:
        parser.error("--repeat-input must be >= 1")
    src = args.input.resolve()
    if not src.is_file():
        print(f"input {src} not found; nothing to benchmark (pass --input PATH).")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_train-", dir=args.tmp_dir) as tmp:
        corpus = prepare_corpus(src, args.repeat_input, Path(tmp))
        n_bytes = corpus.stat().st_size
        print(f"corpus: {n_bytes / 1e6:.1f} MB", end="")
        if args.repeat_input > 1:
            print(f" ({args.repeat_input} concatenated copies of {src.name})", end="")
        print(f"; vocab_size {args.vocab_size}; threads {args.threads or 'default'}", flush=True)
        results = {name: run_trainer(name, corpus, args) for name in names}

    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed", f"{r['peak_rss_mb']:.0f}", "-", "-"])
            continue
        r["mb_per_s"] = n_bytes / 1e6 / r["seconds"]
        rss = f"{r['peak_rss_mb']:.0f}"
        rows.append([name, f"{r['seconds']:.2f}", rss, r["vocab"], f"{r['mb_per_s']:.1f}"])
    print()
    print_table(["trainer", "wall s", "peak RSS MB", "vocab", "MB/s"], rows)

    ratios = {}
    lm = results.get("lmforge", {})
    for peer in ("hf", "rustbpe"):
        other = results.get(peer, {})
        if "seconds" in lm and "seconds" in other:
            speedup = other["seconds"] / lm["seconds"]
            rss = lm["peak_rss_mb"] / other["peak_rss_mb"]
            ratios |= {f"speedup_vs_{peer}": speedup, f"rss_ratio_vs_{peer}": rss}
            print(
                f"\nlmforge vs {peer}: {speedup:.2f}x the speed ({peer} time / lmforge time), "
                f"{rss:.2f}x the peak RSS (lmforge / {peer})"
            )

    report = {
        "benchmark": "train",
        "timestamp": now_utc().isoformat(timespec="seconds"),
        "input": str(src),
        "bytes": n_bytes,
        "repeat_input": args.repeat_input,
        "vocab_size": args.vocab_size,
        "threads": args.threads,
        "special_tokens": [SPECIAL],
        "pattern": "gpt2",
        **machine_info(),
        "versions": {name: r.get("version") for name, r in results.items()},
        "results": results,
        "ratios": ratios,
    }
    out = args.out or default_out_path("train")
    write_json(out, report)
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
