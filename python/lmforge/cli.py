"""The ``lmforge`` command. Parses arguments, calls the library, prints; holds no logic."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lmforge import __version__


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from lmforge.quickstart import run_quickstart

    print(f"lmforge {__version__} quickstart: training a tokenizer on the bundled stories sample")
    r = run_quickstart(Path(args.out), vocab_size=args.vocab_size, progress=not args.no_progress)
    print(
        f"trained vocab {r.vocab_size} on {r.corpus_bytes / 1e6:.1f} MB in {r.train_seconds:.2f} s"
    )
    print(f"compression: {r.bytes_per_token:.2f} bytes per token on the sample corpus")
    print("tokens: " + " | ".join(repr(t)[1:-1] for t in r.sample_tokens))
    print(f"saved {r.tokenizer_path}")
    print(f"encoded the corpus into {r.n_tokens:,} tokens: {r.tokens_path} (+ .json header)")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer

    specials = [] if args.no_special_tokens else (args.special_token or ["<|endoftext|>"])
    tok = Tokenizer.train(
        args.inputs,
        args.vocab_size,
        special_tokens=specials,
        pattern=args.pattern,
        num_threads=args.threads,
        progress=not args.no_progress,
        errors=args.errors,
    )
    tok.save(args.out)
    info = tok.train_info
    print(
        f"trained {len(tok)} tokens ({info['merges']} merges) on {info['bytes'] / 1e6:.1f} MB, "
        f"{info['unique_pretokens']} unique pretokens; saved {args.out}"
    )
    return 0


def _cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    tf = tok.encode_files(
        args.inputs,
        args.out,
        append_eot=not args.no_eot,
        dtype=args.dtype,
        num_threads=args.threads,
        progress=not args.no_progress,
    )
    n_bytes = sum(source["bytes"] for source in tf.header.sources)
    print(
        f"wrote {len(tf):,} {tf.header.dtype} tokens from {n_bytes / 1e6:.1f} MB "
        f"({len(tf) / max(n_bytes, 1):.3f} tokens/byte) to {tf.path}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmforge",
        description="Train byte-level BPE tokenizers and language models from scratch.",
    )
    p.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train on the bundled sample corpus and show the result")
    q.add_argument("--out", default="lmforge-quickstart", help="output folder")
    q.add_argument("--vocab-size", type=int, default=4096)
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.set_defaults(func=_cmd_quickstart)

    tok = sub.add_parser("tokenizer", help="train tokenizers and encode text with them")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    t.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, required=True, help="bytes + merges + specials")
    t.add_argument(
        "--special-token",
        action="append",
        metavar="TOK",
        help="a special token (repeatable; default <|endoftext|>)",
    )
    t.add_argument("--no-special-tokens", action="store_true", help="train without specials")
    t.add_argument("--pattern", default="gpt2", help="gpt2, cl100k, o200k or a regex")
    t.add_argument("--out", default="tokenizer.json", help="where to save the tokenizer")
    t.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")
    t.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="what to do with invalid UTF-8",
    )
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(func=_cmd_tokenizer_train)

    e = tsub.add_parser("encode", help="encode text files into a token file for training")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    e.add_argument("--tokenizer", default="tokenizer.json", help="the tokenizer to encode with")
    e.add_argument("--out", required=True, help="the token file (its header goes to OUT.json)")
    e.add_argument("--no-eot", action="store_true", help="append no end-of-text id per document")
    e.add_argument(
        "--dtype",
        choices=["uint16", "uint32"],
        default=None,
        help="id type (default: uint16 when the vocabulary fits, else uint32)",
    )
    e.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=_cmd_tokenizer_encode)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmforge`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, TypeError) as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
