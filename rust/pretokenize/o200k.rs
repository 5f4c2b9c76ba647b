//! Hand-written scanner equivalent to o200k_base's pretokenization regex (`O200K_PATTERN`).
//!
//! The word alternatives are `P?A*B+C?` and `P?A+B*C?` with P = `[^\r\n\p{L}\p{N}]`,
//! A = `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, B = `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` and C the optional
//! case-insensitive contraction. A and B overlap (Lm, Lo, marks) and a mark is also a P, so the
//! regex backtracks; rather than emulate backtracking, `word1_end` computes in one pass over the
//! A-run where the backtracking would settle (see its comments). The remaining alternatives are
//! cl100k's, with `/` allowed after a punctuation run.

use super::block::{bit, lanes_in, scan_windows, Block, HIGH};
use super::cl100k::{ascii_digits_end, ascii_run_end, digits_end, whitespace_end, Shared};
use super::classes::{
    ascii_punct_lanes, class_at, class_run_end, contraction_ci, first_lane, lane_is_non_ascii,
    load8, run_end, LETTER, LETTER_OTHER, LOWER, MARK, NUMBER, PUNCT, SPACE, UPPER,
};

/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`.
const A: u8 = UPPER | LETTER_OTHER | MARK;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`.
const B: u8 = LOWER | LETTER_OTHER | MARK;
/// The characters in both A and B.
const AB: u8 = A & B;

/// Calls `f` with the byte range of every pretoken of `text` (they tile `text`), as
/// `regex.findall` would find them.
pub(crate) fn scan(text: &str, mut f: impl FnMut(usize, usize)) {
    scan_windows::<false>(text, &mut f, starts, token_end);
}

/// The bitmap of pretoken starts in an ASCII window that begins at a pretoken start `i`, and the
/// bound below which its bits are exact.
///
/// In ASCII a word is `[A-Z]*[a-z]*` (not empty), so a letter continues the letter before it
/// unless it is uppercase after lowercase; its first letter may take a lead (see `Shared`).
/// A contraction after a word (an apostrophe after a letter, unless that letter ended a
/// contraction) joins it and ends it, even before a letter.
#[inline(always)]
fn starts(blk: &Block, b: &[u8], i: usize) -> (u64, u32) {
    let shared = Shared::new(blk, blk.newline | blk.slash);
    let (upper, lower) = (blk.upper, blk.lower);
    let letter = upper | lower;
    let prev = |m: u64| m << 1;
    let mut cont = shared.cont
        | (letter & prev(letter) & !(upper & prev(lower)))
        | (letter & prev(shared.lead));
    let mut apostrophes = blk.apostrophe & prev(letter) & letter >> 1;
    let mut after_contraction = usize::MAX;
    while apostrophes != 0 {
        let a = apostrophes.trailing_zeros() as usize;
        apostrophes &= apostrophes - 1;
        if a == after_contraction {
            continue;
        }
        let n = contraction_ci(b, i + a);
        if n > 0 {
            cont |= bit(a) | bit(a + 1) | bit(a + n - 1);
            cont &= !bit(a + n);
            after_contraction = a + n;
        }
    }
    (!cont | 1, shared.limit)
}

/// End of the pretoken that starts at `i < b.len()`.
#[inline(always)]
fn token_end(b: &[u8], i: usize) -> usize {
    if let Some(end) = ascii_token_end(b, i) {
        return end;
    }
    let b0 = b[i];
    let (flag, len) = class_at(b, i);
    // `P?`: greedy, so the word alternatives are tried with the prefix first, then without.
    let is_prefix = flag & (LETTER | NUMBER) == 0 && b0 != b'\r' && b0 != b'\n';
    let is_word_char = flag & (LETTER | MARK) != 0;
    if is_prefix && i + len < b.len() {
        if let Some(end) = word1_end(b, i + len) {
            return end;
        }
    }
    if is_word_char {
        if let Some(end) = word1_end(b, i) {
            return end;
        }
    }
    if is_prefix && i + len < b.len() {
        if let Some(end) = word2_end(b, i + len) {
            return end;
        }
    }
    if is_word_char {
        if let Some(end) = word2_end(b, i) {
            return end;
        }
    }
    if flag & NUMBER != 0 {
        return digits_end(b, i + len);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
    if flag & PUNCT != 0 {
        return newlines_slashes_end(b, run_end(b, i + len, PUNCT));
    }
    if b0 == b' ' && i + 1 < b.len() {
        let (nflag, nlen) = class_at(b, i + 1);
        if nflag & PUNCT != 0 {
            return newlines_slashes_end(b, run_end(b, i + 1 + nlen, PUNCT));
        }
    }
    debug_assert!(flag & SPACE != 0);
    whitespace_end(b, i, len)
}

/// End of the pretoken at `i` when it starts with ASCII and is a word (with or without a leading
/// character), a digit group or a punctuation run, and ASCII bytes decide where it ends; `None`
/// sends the caller to the general path.
///
/// These are almost all the pretokens of English prose (` word`, `Word`, `,`, `.`), so the eight
/// bytes at `i` are loaded once and classified together instead of one character at a time.
#[inline(always)]
fn ascii_token_end(b: &[u8], i: usize) -> Option<usize> {
    let x = load8(b, i)?;
    let (b0, b1) = (x as u8, (x >> 8) as u8);
    if b0.is_ascii_alphabetic() {
        return ascii_word_end(b, i, x, 0);
    }
    if b0.is_ascii_digit() {
        return ascii_digits_end(x, i);
    }
    if b0 >= 0x80 || b0 == b'\r' || b0 == b'\n' || b1 >= 0x80 {
        return None;
    }
    // `P?` then a word: `b0` is neither a letter, a digit, `\r` nor `\n`.
    if b1.is_ascii_alphabetic() {
        return ascii_word_end(b, i, x, 1);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n/]*` (no word can start at `b0` or `b1`).
    let punct = ascii_punct_lanes(x);
    let lead = if punct & 0x80 != 0 {
        0
    } else if b0 == b' ' && punct & 0x8000 != 0 {
        1
    } else {
        return None;
    };
    Some(newlines_slashes_end(
        b,
        ascii_run_end(b, i, x, punct, lead, PUNCT),
    ))
}

/// `A*B+C?|A+B*C?` from lane `lead` (0 or 1, an ASCII letter) of `x = b[i..i + 8]`, lanes below
/// `lead` being the `P?` prefix, if ASCII bytes decide where the word ends.
///
/// For ASCII, A is `[A-Z]` and B is `[a-z]`: the word is an uppercase run followed by a
/// lowercase run (either may be empty, not both), then an optional contraction.
#[inline(always)]
fn ascii_word_end(b: &[u8], i: usize, x: u64, lead: usize) -> Option<usize> {
    let (upper, lower) = (lanes_in(x, b'A', b'Z'), lanes_in(x, b'a', b'z'));
    let prefix = (lead as u64) << 7;
    let a = first_lane(!(upper | prefix) & HIGH);
    if a == 8 {
        return None;
    }
    // The lanes below `a`, whose high bits count as lowercase for the B-run's end.
    let before = HIGH & ((1u64 << (8 * a)) - 1);
    let stop = !(lower | before) & HIGH;
    let end = if stop == 0 {
        class_run_end(b, i + 8, |y| lanes_in(y, b'a', b'z'), B)
    } else {
        let k = first_lane(stop);
        if lane_is_non_ascii(x, k) {
            // A non-ASCII character may continue either run (marks, Lm, Lo, letters).
            return None;
        }
        i + k
    };
    Some(end + contraction_ci(b, end))
}

/// `A*B+C?` at `s`.
#[inline]
fn word1_end(b: &[u8], s: usize) -> Option<usize> {
    // A* takes the whole A-run s..a, then gives characters back until B+ can start: at `a` if a
    // lowercase letter follows the run, else at the run's last A∩B character (Lm, Lo, mark).
    // In the second case B+ ends right after that character, because what follows is uppercase
    // (or ends the A-run and is not lowercase).
    let mut a = s;
    let mut last_ab_end = None;
    while a < b.len() {
        let (flag, len) = class_at(b, a);
        if flag & A == 0 {
            break;
        }
        a += len;
        if flag & AB != 0 {
            last_ab_end = Some(a);
        }
    }
    let end = if a < b.len() && class_at(b, a).0 & LOWER != 0 {
        run_end(b, a, B)
    } else {
        last_ab_end?
    };
    Some(end + contraction_ci(b, end))
}

/// `A+B*C?` at `s`.
#[inline]
fn word2_end(b: &[u8], s: usize) -> Option<usize> {
    let a = run_end(b, s, A);
    if a == s {
        return None;
    }
    let end = run_end(b, a, B);
    Some(end + contraction_ci(b, end))
}

/// `[\r\n/]*` at `i`.
#[inline]
fn newlines_slashes_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b'\r' | b'\n' | b'/') {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::scan;

    fn split(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        scan(text, |start, end| v.push(&text[start..end]));
        v
    }

    #[test]
    fn tricky_cases() {
        // Expected values are from `regex.findall(O200K_PATTERN, text)` (regex 2026.5.9).
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("Hello world", &["Hello", " world"]),
            ("HelloWorld", &["Hello", "World"]),
            ("HELLO world", &["HELLO", " world"]),
            ("HTMLParser", &["HTMLParser"]),
            ("iPhone", &["i", "Phone"]),
            ("I'M we'LL they're", &["I'M", " we'LL", " they're"]),
            ("DON'T'S", &["DON'T", "'S"]),
            ("x's's", &["x's", "'s"]),
            ("abc'\u{17f}", &["abc'\u{17f}"]),
            ("\u{301}'s", &["\u{301}'s"]),
            ("a\u{301}b", &["a\u{301}b"]),
            ("A\u{301}B", &["A\u{301}", "B"]),
            ("\u{1c4}\u{1c5}\u{1c6}", &["\u{1c4}\u{1c5}\u{1c6}"]),
            ("AB\u{2b0}c", &["AB\u{2b0}c"]),
            ("AB\u{2b0}", &["AB\u{2b0}"]),
            ("\u{4e2d}\u{6587}Abc", &["\u{4e2d}\u{6587}Abc"]),
            ("A\u{2b0}\u{2b0}", &["A\u{2b0}\u{2b0}"]),
            ("A\u{2b0}'sB", &["A\u{2b0}'s", "B"]),
            ("\u{301}\u{301}", &["\u{301}\u{301}"]),
            (" \u{301}", &[" \u{301}"]),
            ("\u{301}A", &["\u{301}", "A"]),
            ("A\u{301}", &["A\u{301}"]),
            (".\u{301}A", &[".\u{301}", "A"]),
            (" AB", &[" AB"]),
            ("\tAbc", &["\tAbc"]),
            ("(A", &["(A"]),
            ("\nA", &["\n", "A"]),
            ("12345", &["123", "45"]),
            ("x.\n/\n//y", &["x", ".\n/\n//", "y"]),
            ("a/b", &["a", "/b"]),
            (" ./\n", &[" ./\n"]),
            ("a \n \n  b", &["a", " \n \n", " ", " b"]),
            ("x  y", &["x", " ", " y"]),
            ("x \u{301}y", &["x", " \u{301}y"]),
            ("1ABc", &["1", "ABc"]),
            ("'S", &["'S"]),
            ("a'sB", &["a's", "B"]),
            ("\u{250}A", &["\u{250}", "A"]),
            ("A\u{250}", &["A\u{250}"]),
            ("ABCdEF", &["ABCd", "EF"]),
            ("\u{1d43}B", &["\u{1d43}", "B"]),
            ("\u{2160}\u{2161}", &["\u{2160}\u{2161}"]),
            (
                "\u{1d400}\u{1d401}\u{1d41c}",
                &["\u{1d400}\u{1d401}\u{1d41c}"],
            ),
        ];
        for (text, expect) in cases {
            assert_eq!(split(text), *expect, "{text:?}");
        }
    }
}
