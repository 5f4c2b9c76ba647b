//! Hand-written scanner equivalent to GPT-2's pretokenization regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//!
//! The regex needs backtracking only in `\s+(?!\S)`, which gives back the last character of a
//! whitespace run that is followed by a non-space; everything else is a greedy run decided by the
//! class of the first one or two characters. So the scanner dispatches on the first byte (ASCII
//! fast path) and never looks back, which makes it several times faster than a regex engine.

use super::classes::{class_at, run_end, LETTER, NUMBER, PUNCT, SPACE};

/// Calls `f` with every pretoken of `text` (they tile `text`), as `regex.findall` would.
pub(crate) fn scan<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let end = token_end(b, i);
        f(&text[i..end]);
        i = end;
    }
}

/// End of the pretoken that starts at `i < b.len()`.
#[inline(always)]
fn token_end(b: &[u8], i: usize) -> usize {
    let b0 = b[i];
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
        scan(text, |p| v.push(p));
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
