"""Differential tests of the Rust pretokenizer scanners against Python's `regex` module.

The scanners (`rust/pretokenize/{gpt2,cl100k,o200k}.rs`) claim to split text exactly as
`regex.findall(PATTERN, text)` does. These tests hold them to it on arbitrary Unicode, on an
alphabet chosen to hit every alternative and backtracking case, on every code point in contexts
that tell its class apart, and on every line of the real corpora. They also check, against the
regex itself, the restart rule the streaming reader relies on.
"""

from __future__ import annotations

import sys

import pytest
import regex
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datafiles import read_shared_text
from lmforge._bpe import pretokenize

# The published patterns, as in rust/pretokenize/mod.rs.
PATTERNS = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "cl100k": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "o200k": (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
COMPILED = {name: regex.compile(src) for name, src in PATTERNS.items()}
NAMES = list(PATTERNS)


def reference(text: str, pattern: str) -> list[str]:
    return COMPILED[pattern].findall(text)


def check(text: str, pattern: str) -> None:
    got = pretokenize(text, pattern)
    want = reference(text, pattern)
    assert got == want, f"{pattern}: {text!r}"


# --- hypothesis: arbitrary Unicode and a tricky alphabet -----------------------------------------

any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)

# Every class and separator the scanners branch on, the common ones several times: whitespace
# (ASCII, U+001C which `\s` excludes, NEL, NBSP, LINE SEPARATOR, ideographic space), apostrophes,
# contraction letters of both cases and U+017F, letters of each case class, marks, numbers,
# punctuation and symbols, and U+212A KELVIN SIGN (which must not act as a `k`).
TRICKY_CHARS = list(
    "   \t\r\n\n\x0b\x0c\x1c\x85\xa0\u2028\u3000"
    "''\u2019sS\u017ftTreEvmMlLd"
    "aZ\u01c5\u02b0\u00e9\u00c9\u4e2d\u0301\u0903\u20dd"
    "07\u00b2\u0663\u2163.,!/-\u00bf\u00a3\U0001f600\u212a"
)
# Multi-character pieces that hit contractions and backtracking more often than chance would.
TRICKY_PIECES = TRICKY_CHARS + (
    "'s 'S '\u017f 't 're 'RE 'rE 've 'm 'll 'Ll 'd 'D 123 1234 ABC abc".split()
    + ["  ", " \n", "\n ", "\r\n", ".\n/", "\u0301\u0301", " \u0301"]
)
tricky_text = st.lists(st.sampled_from(TRICKY_PIECES), max_size=40).map("".join)


@pytest.mark.parametrize("pattern", NAMES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text)
def test_arbitrary_unicode(pattern: str, text: str) -> None:
    check(text, pattern)


@pytest.mark.parametrize("pattern", NAMES)
@settings(max_examples=1500, deadline=None)
@given(text=tricky_text)
@example(text="a  \u3000\n\t b")
@example(text="x'\u017f'S'Ll \u0301's")
@example(text="ABC\u02b0\u0301Def")
def test_tricky_alphabet(pattern: str, text: str) -> None:
    check(text, pattern)


# Long texts of the first 2,048 code points (ASCII and the two-byte characters: Latin-1, Greek,
# Cyrillic, Hebrew, Arabic, combining marks, NEL and NBSP), longer than the scanners' 64-byte
# windows, which GPT-2's scanner classifies two-byte characters in.
two_byte_text = st.text(
    st.characters(max_codepoint=0x7FF, exclude_categories=["Cs"]), min_size=60, max_size=400
)


@pytest.mark.parametrize("pattern", NAMES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=two_byte_text)
@example(text="\u00e9t\u00e9 " * 20 + "\u00a0\u00a0x\u0085 \u00b2\u00bd\u0663 \u0301\u00e9" * 5)
def test_long_two_byte_text(pattern: str, text: str) -> None:
    check(text, pattern)


# --- every code point ----------------------------------------------------------------------------

# Contexts around a code point `{0}` such that any two of the classes the scanners use (space,
# upper, lower, other letter, mark, number, other) split differently in at least one pattern;
# `test_contexts_tell_classes_apart` checks that claim. A newline ends each context, so one
# wrong class shows up as a different split of that context.
CONTEXTS = ["a{0}", "{0}Aa", " {0}{0}", "1{0}"]
REPRESENTATIVES = {
    "space": "\u3000",
    "upper": "\u00c9",
    "lower": "\u00e9",
    "other letter": "\u4e2d",
    "mark": "\u0301",
    "number": "\u0663",
    "other": "\u00bf",
}


def in_contexts(chars: str) -> str:
    return "".join(ctx.format(c) + "\n" for c in chars for ctx in CONTEXTS)


def test_contexts_tell_classes_apart() -> None:
    reps = list(REPRESENTATIVES.items())
    for i, (name1, c1) in enumerate(reps):
        for name2, c2 in reps[i + 1 :]:
            differs = any(
                [len(t) for t in reference(in_contexts(c1), p)]
                != [len(t) for t in reference(in_contexts(c2), p)]
                for p in NAMES
            )
            assert differs, f"contexts do not tell {name1} from {name2}"


ALL_CHARS = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


@pytest.mark.parametrize("pattern", NAMES)
def test_every_code_point(pattern: str) -> None:
    chunk = 1 << 16
    for start in range(0, len(ALL_CHARS), chunk):
        text = in_contexts(ALL_CHARS[start : start + chunk])
        got = pretokenize(text, pattern)
        want = reference(text, pattern)
        if got != want:
            # Point at the first differing pretoken rather than dumping megabytes.
            same = (i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w)
            k = next(same, min(len(got), len(want)))
            pytest.fail(
                f"{pattern}: pretoken {k}: got {got[k : k + 3]!r}, want {want[k : k + 3]!r}"
            )


# --- real corpora ---------------------------------------------------------------------------------


CORPORA = [
    "stories/valid.txt.xz",
    "tinystories-sample/train-head.txt",
    "tinystories-sample/valid-head.txt",
]


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("pattern", NAMES)
def test_corpus_lines(pattern: str, corpus: str) -> None:
    findall = COMPILED[pattern].findall
    for n, line in enumerate(read_shared_text(corpus).splitlines(keepends=True)):
        if pretokenize(line, pattern) != findall(line):
            pytest.fail(f"{pattern}: {corpus} line {n}: {line!r}")


# --- restart points -------------------------------------------------------------------------------


def restart_candidates(text: str) -> list[int]:
    """The rule of `classes::last_ascii_restart_point`, on characters instead of bytes."""
    return [
        p
        for p in range(1, len(text))
        if text[p - 1].isascii() and text[p - 1].isalnum() and text[p] in " \n"
    ]


restart_text = st.lists(
    st.sampled_from(TRICKY_PIECES + ["a ", "Z\n", "9 ", "x\n\n", "b  ", "abc 's"]), max_size=40
).map("".join)


@pytest.mark.parametrize("pattern", NAMES)
@settings(max_examples=800, deadline=None)
@given(text=restart_text)
@example(text="it 's a\n'S")
def test_restart_points(pattern: str, text: str) -> None:
    whole = reference(text, pattern)
    assert pretokenize(text, pattern) == whole
    for p in restart_candidates(text):
        # The rule is a property of the regex itself; the scanner must agree on both halves.
        assert reference(text[:p], pattern) + reference(text[p:], pattern) == whole, p
        assert pretokenize(text[:p], pattern) + pretokenize(text[p:], pattern) == whole, p


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
