//! Hand-written scanner equivalent to GPT-2's pretokenization regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//!
//! The regex needs backtracking only in `\s+(?!\S)`, which gives back the last character of a
//! whitespace run that is followed by a non-space; everything else is a greedy run decided by the
//! class of the first one or two characters. So the scanner dispatches on the first byte (ASCII
//! fast path) and never looks back, which makes it several times faster than a regex engine.

use super::block::{bit, scan_windows, Block, HIGH};
use super::classes::{
    ascii_digit_lanes, ascii_letter_lanes, ascii_punct_lanes, class_at, class_run_end, first_lane,
    lane_is_non_ascii, load8, run_end, LETTER, NUMBER, PUNCT, SPACE,
};

/// Calls `f` with the byte range of every pretoken of `text` (they tile `text`), as
/// `regex.findall` would find them.
pub(crate) fn scan(text: &str, mut f: impl FnMut(usize, usize)) {
    // Each start bit depends on the byte after it, so it is exact below `valid - 1`.
    let starts = |blk: &Block, b: &[u8], i: usize| (starts(blk, b, i), blk.valid.saturating_sub(1));
    scan_windows::<true>(text, &mut f, starts, token_end);
}

/// The bitmap of pretoken starts in an ASCII window that begins at a pretoken start `i`.
///
/// Byte `j` continues the pretoken of byte `j - 1` when both are in the same class (letters,
/// digits, punctuation: the greedy runs), when `j - 1` is a space and `j` is not whitespace
/// (` ?X+`), or when both are whitespace and so is `j + 1` (`\s+(?!\S)` gives back the run's
/// last character, which then starts a pretoken of its own or joins the next word if it is a
/// space). Contractions are the exception, handled one apostrophe at a time: `'` starts a
/// contraction where it starts a pretoken (after a letter, digit or whitespace other than a
/// space), and the contraction ends its pretoken even before a letter.
#[inline(always)]
fn starts(blk: &Block, b: &[u8], i: usize) -> u64 {
    let (letter, digit, space, punct) = (blk.letter(), blk.digit, blk.space, blk.punct());
    let prev = |m: u64| m << 1;
    let same = (letter & prev(letter))
        | (digit & prev(digit))
        | (punct & prev(punct))
        | (space & prev(space) & (space >> 1));
    let mut cont = same | (prev(blk.blank) & !space);
    let mut apostrophes = blk.apostrophe & !prev(punct | blk.blank);
    while apostrophes != 0 {
        let a = apostrophes.trailing_zeros() as usize;
        apostrophes &= apostrophes - 1;
        let n = contraction(b, i + a);
        if n > 0 {
            cont |= bit(a + 1) | bit(a + n - 1);
            cont &= !bit(a + n);
        }
    }
    !cont | 1
}

/// End of the pretoken that starts at `i < b.len()`.
#[inline(always)]
fn token_end(b: &[u8], i: usize) -> usize {
    let b0 = b[i];
    if let Some(end) = ascii_token_end(b, i) {
        return end;
    }
    // Case-sensitive contractions come first in the alternation.
    if b0 == b'\'' {
        let n = contraction(b, i);
        if n > 0 {
            return i + n;
        }
    }
    // ` ?X+`: a single ASCII space joins a following letter, number or punctuation run.
    let (start, flag, len) = if b0 == b' ' && i + 1 < b.len() {
        let (flag, len) = class_at(b, i + 1);
        if flag & SPACE == 0 {
            (i + 1, flag, len)
        } else {
            (i, SPACE, 1)
        }
    } else {
        let (flag, len) = class_at(b, i);
        (i, flag, len)
    };
    let mask = if flag & LETTER != 0 {
        LETTER
    } else if flag & NUMBER != 0 {
        NUMBER
    } else if flag & PUNCT != 0 {
        PUNCT
    } else {
        return whitespace_end(b, i);
    };
    run_end(b, start + len, mask)
}

/// End of the pretoken at `i` when it starts with ASCII and ` ?\p{L}+`, ` ?\p{N}+` or
/// ` ?[^\s\p{L}\p{N}]+` matches there (other than at a `'`, which may start a contraction);
/// `None` sends the caller to the general path.
///
/// This is the shape of almost every pretoken of English prose (` word`, `word`, `,`, `.`), so
/// it reads eight bytes once and classifies them together instead of one character at a time.
#[inline(always)]
fn ascii_token_end(b: &[u8], i: usize) -> Option<usize> {
    let x = load8(b, i)?;
    let b0 = x as u8;
    // The optional leading space is lane 0; the run's class is that of the lane after it.
    let space = usize::from(b0 == b' ');
    let c = (x >> (8 * space)) as u8;
    let (lanes, mask) = if c.is_ascii_alphabetic() {
        (ascii_letter_lanes(x), LETTER)
    } else if c.is_ascii_digit() {
        (ascii_digit_lanes(x), NUMBER)
    } else if c.is_ascii() && ascii_punct_lanes(u64::from(c)) & 0x80 != 0 && b0 != b'\'' {
        (ascii_punct_lanes(x), PUNCT)
    } else {
        return None;
    };
    // Lane 0 belongs to the pretoken if it is the space; lane `space` is in the class.
    let stop = !(lanes | (space as u64) << 7) & HIGH;
    if stop == 0 {
        return Some(match mask {
            LETTER => class_run_end(b, i + 8, ascii_letter_lanes, LETTER),
            NUMBER => class_run_end(b, i + 8, ascii_digit_lanes, NUMBER),
            _ => class_run_end(b, i + 8, ascii_punct_lanes, PUNCT),
        });
    }
    let k = first_lane(stop);
    Some(if lane_is_non_ascii(x, k) {
        run_end(b, i + k, mask)
    } else {
        i + k
    })
}

/// `'s|'t|'re|'ve|'m|'ll|'d` (case-sensitive) at `i`, as a byte length (0: none).
#[inline]
fn contraction(b: &[u8], i: usize) -> usize {
    match (b.get(i + 1), b.get(i + 2)) {
        (Some(b's' | b't' | b'm' | b'd'), _) => 2,
        (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
        _ => 0,
    }
}

/// `\s+(?!\S)|\s+` at `i`, where `b[i]` is whitespace.
#[inline]
fn whitespace_end(b: &[u8], i: usize) -> usize {
    let (_, first_len) = class_at(b, i);
    let mut last = i; // start of the last whitespace character of the run
    let mut end = i + first_len;
    while end < b.len() {
        let (flag, len) = class_at(b, end);
        if flag & SPACE == 0 {
            // Followed by a non-space: give it back, unless the run is a single character
            // (then `\s+` takes it alone).
            return if last > i { last } else { end };
        }
        last = end;
        end += len;
    }
    end
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
        // Expected values are from `regex.findall(GPT2_PATTERN, text)` (regex 2026.5.9).
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("Hello world", &["Hello", " world"]),
            (
                "I'm he's they'll we'd",
                &["I", "'m", " he", "'s", " they", "'ll", " we", "'d"],
            ),
            ("I'M HE'S", &["I", "'", "M", " HE", "'", "S"]),
            ("'sa ''s", &["'s", "a", " ''", "s"]),
            ("a  b", &["a", " ", " b"]),
            ("a   \n b", &["a", "   \n", " b"]),
            ("a\n\nb", &["a", "\n", "\n", "b"]),
            ("a\nb", &["a", "\n", "b"]),
            ("end  ", &["end", "  "]),
            ("x \t1", &["x", " ", "\t", "1"]),
            (" 123 4", &[" 123", " 4"]),
            ("a!!? b", &["a", "!!?", " b"]),
            ("e\u{301}t\u{e9}", &["e", "\u{301}", "t\u{e9}"]),
            ("\u{a0}x", &["\u{a0}", "x"]),
            ("a\u{3000}\u{3000}b", &["a", "\u{3000}", "\u{3000}", "b"]),
            ("  ", &["  "]),
            (" ", &[" "]),
            (
                "\u{4e2d}\u{6587} \u{5b57}",
                &["\u{4e2d}\u{6587}", " \u{5b57}"],
            ),
            ("\u{1c}a", &["\u{1c}", "a"]),
            ("x\u{85}y", &["x", "\u{85}", "y"]),
            ("  'll", &[" ", " '", "ll"]),
            ("it'\u{17f}", &["it", "'", "\u{17f}"]),
            ("don't'", &["don", "'t", "'"]),
            ("x  \n\n", &["x", "  \n\n"]),
            ("a1b2", &["a", "1", "b", "2"]),
            (" \u{301}a", &[" \u{301}", "a"]),
        ];
        for (text, expect) in cases {
            assert_eq!(split(text), *expect, "{text:?}");
        }
    }
}
