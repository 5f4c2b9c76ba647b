//! Hand-written scanner equivalent to cl100k_base's pretokenization regex
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
//!
//! Each alternative is decided by the first one or two characters, except the whitespace ones:
//! `\s*[\r\n]+` backtracks to the last `\r`/`\n` of the whitespace run, and `\s+(?!\S)` gives
//! back the last character of a run followed by a non-space. The scanner measures the run once
//! and derives both, so it never rescans; ASCII bytes skip UTF-8 decoding.

use super::block::{bit, low_bits, scan_windows, Block, HIGH};
use super::classes::{
    ascii_digit_lanes, ascii_letter_lanes, ascii_punct_lanes, class_at, class_run_end,
    contraction_ci, first_lane, lane_is_non_ascii, load8, run_end, LETTER, NUMBER, PUNCT, SPACE,
};

/// Calls `f` with the byte range of every pretoken of `text` (they tile `text`), as
/// `regex.findall` would find them.
pub(crate) fn scan(text: &str, mut f: impl FnMut(usize, usize)) {
    scan_windows::<false>(text, &mut f, starts, token_end);
}

/// The bitmap of pretoken starts in an ASCII window that begins at a pretoken start `i`, and the
/// bound below which its bits are exact.
#[inline(always)]
fn starts(blk: &Block, b: &[u8], i: usize) -> (u64, u32) {
    let shared = Shared::new(blk, blk.newline);
    let letter = blk.letter();
    let mut cont = shared.cont | (letter & (shared.lead | letter) << 1);
    // `(?i:'s|'t|'re|'ve|'m|'ll|'d)` where an apostrophe starts a pretoken and a letter follows
    // (the letters are already joined to it, as by `[^\r\n\p{L}\p{N}]?\p{L}+`): the
    // contraction ends the pretoken even before a letter.
    let mut apostrophes = blk.apostrophe & !cont & letter >> 1;
    while apostrophes != 0 {
        let a = apostrophes.trailing_zeros() as usize;
        apostrophes &= apostrophes - 1;
        let n = contraction_ci(b, i + a);
        if n > 0 {
            cont &= !bit(a + n);
        }
    }
    (!cont | 1, shared.limit)
}

/// What cl100k and o200k windows have in common: every continuation bit except those of
/// letters, the characters that may lead a letter run, and the exactness bound.
pub(crate) struct Shared {
    /// Digits, punctuation and whitespace that continue the pretoken of the byte before.
    pub cont: u64,
    /// `[^\r\n\p{L}\p{N}]` bytes that start a pretoken: a letter run may take one as its first
    /// character.
    pub lead: u64,
    /// Start bits below this are exact.
    pub limit: u32,
}

impl Shared {
    /// `absorbable` are the bytes a punctuation run takes after it: `[\r\n]` (cl100k) or
    /// `[\r\n/]` (o200k).
    ///
    /// The rules, for an ASCII window starting at a pretoken start (the regex never looks
    /// behind, so the text before the window does not matter):
    /// - a punctuation run (`[^\s\p{L}\p{N}]+`) continues, as does a punctuation byte after a
    ///   space (` ?`), which always starts a pretoken (it ends a whitespace run followed by a
    ///   non-space); after the run, the bytes of `absorbable` from its first newline on join it;
    /// - digits continue digits (groups of three are not tracked: a run of four or more bounds
    ///   the window before it, and the general path splits it);
    /// - a whitespace run, apart from what a punctuation run absorbed, is one pretoken up to its
    ///   last newline (`\s*[\r\n]+`); after that (or if it has none) it continues except that
    ///   a last byte that is not a newline, before a non-space, starts a pretoken of its own
    ///   (`\s+(?!\S)` gives it back), which is then a lead;
    /// - a punctuation byte that starts a pretoken is a lead (unless absorbed).
    #[inline(always)]
    pub fn new(blk: &Block, absorbable: u64) -> Shared {
        let prev = |m: u64| m << 1;
        let (digit, space, newline, blank) = (blk.digit, blk.space, blk.newline, blk.blank);
        let punct = blk.punct();
        // Absorbed: from a newline right after punctuation up to the end of the absorbable run.
        // Within a run, every seed but the first is already reached, so a doubling fill (not a
        // carry, which would need one seed per run) propagates them.
        let mut absorbed = newline & prev(punct);
        let mut m = absorbable;
        for k in [1, 2, 4, 8, 16, 32] {
            absorbed |= (absorbed << k) & m;
            m &= m << k;
        }
        let free_punct = punct & !absorbed;
        let free_space = space & !absorbed;
        let lead = ((space & !newline) | (punct & !prev(free_punct | blank))) & !absorbed;
        let punct_cont = punct & prev(free_punct | blank);
        // Whitespace bytes from which a newline is reachable within the run (doubling fill down).
        let mut reach = newline;
        let mut m = space;
        for k in [1, 2, 4, 8, 16, 32] {
            reach |= (reach >> k) & m;
            m &= m >> k;
        }
        let after_last_newline = prev(newline) & !reach;
        let last_before_non_space = space & !newline & !(space >> 1);
        let space_cont =
            free_space & prev(free_space) & !after_last_newline & !last_before_non_space;
        let cont = punct_cont | absorbed | space_cont | (digit & prev(digit));
        // Exact below: `valid - 1` (a bit may depend on the next byte); the start of a trailing
        // whitespace run, plus one (its bits depend on newlines further on); the first run of
        // four digits, plus one.
        let mut limit = blk.valid - 1;
        let trailing = space | !low_bits(blk.valid);
        limit = limit.min(64 - trailing.leading_ones() + 1);
        let four = digit & prev(digit) & prev(prev(digit)) & prev(prev(prev(digit)));
        if four != 0 {
            limit = limit.min(four.trailing_zeros() - 3 + 1);
        }
        Shared { cont, lead, limit }
    }
}

/// End of the pretoken that starts at `i < b.len()`.
#[inline(always)]
fn token_end(b: &[u8], i: usize) -> usize {
    if let Some(end) = ascii_token_end(b, i) {
        return end;
    }
    let b0 = b[i];
    if b0 == b'\'' {
        let n = contraction_ci(b, i);
        if n > 0 {
            return i + n;
        }
    }
    let (flag, len) = class_at(b, i);
    if flag & LETTER != 0 {
        return run_end(b, i + len, LETTER);
    }
    if flag & NUMBER != 0 {
        return digits_end(b, i + len);
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`: any other character except \r and \n may lead a letter run.
    let next = if i + len < b.len() {
        Some(class_at(b, i + len))
    } else {
        None
    };
    if b0 != b'\r' && b0 != b'\n' {
        if let Some((nflag, nlen)) = next {
            if nflag & LETTER != 0 {
                return run_end(b, i + len + nlen, LETTER);
            }
        }
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    if flag & PUNCT != 0 {
        return newlines_end(b, run_end(b, i + len, PUNCT));
    }
    if b0 == b' ' {
        if let Some((nflag, nlen)) = next {
            if nflag & PUNCT != 0 {
                return newlines_end(b, run_end(b, i + len + nlen, PUNCT));
            }
        }
    }
    whitespace_end(b, i, len)
}

/// End of the pretoken at `i` when it starts with ASCII and is a letter run (with or without a
/// leading character), a digit group or a punctuation run; `None` sends the caller to the
/// general path.
///
/// These are almost all the pretokens of English prose (` word`, `word`, `,`, `.`), so the eight
/// bytes at `i` are loaded once and classified together instead of one character at a time.
#[inline(always)]
fn ascii_token_end(b: &[u8], i: usize) -> Option<usize> {
    let x = load8(b, i)?;
    let (b0, b1) = (x as u8, (x >> 8) as u8);
    if b0.is_ascii_alphabetic() {
        return Some(ascii_letters_end(b, i, x, 0));
    }
    if b0.is_ascii_digit() {
        return ascii_digits_end(x, i);
    }
    if b0 >= 0x80 || b0 == b'\r' || b0 == b'\n' || b1 >= 0x80 {
        return None;
    }
    if b0 == b'\'' {
        let n = contraction_ci(b, i);
        if n > 0 {
            return Some(i + n);
        }
    }
    // `[^\r\n\p{L}\p{N}]?\p{L}+`: `b0` is neither a letter, a digit, `\r` nor `\n`.
    if b1.is_ascii_alphabetic() {
        return Some(ascii_letters_end(b, i, x, 1));
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let punct = ascii_punct_lanes(x);
    let lead = if punct & 0x80 != 0 {
        0
    } else if b0 == b' ' && punct & 0x8000 != 0 {
        1
    } else {
        return None;
    };
    Some(newlines_end(b, ascii_run_end(b, i, x, punct, lead, PUNCT)))
}

/// End of the run of class `mask` whose ASCII lanes in `x = b[i..i + 8]` are `lanes`, where lanes
/// below `lead` (0 or 1) belong to the pretoken whatever their class.
#[inline(always)]
pub(crate) fn ascii_run_end(
    b: &[u8],
    i: usize,
    x: u64,
    lanes: u64,
    lead: usize,
    mask: u8,
) -> usize {
    let stop = !(lanes | (lead as u64) << 7) & HIGH;
    if stop == 0 {
        return match mask {
            LETTER => class_run_end(b, i + 8, ascii_letter_lanes, LETTER),
            _ => class_run_end(b, i + 8, ascii_punct_lanes, PUNCT),
        };
    }
    let k = first_lane(stop);
    if lane_is_non_ascii(x, k) {
        run_end(b, i + k, mask)
    } else {
        i + k
    }
}

/// `\p{L}+` from lane `lead` of `x = b[i..i + 8]` (an ASCII letter) to its end.
#[inline(always)]
fn ascii_letters_end(b: &[u8], i: usize, x: u64, lead: usize) -> usize {
    ascii_run_end(b, i, x, ascii_letter_lanes(x), lead, LETTER)
}

/// `\p{N}{1,3}` at `i`, where `x = b[i..i + 8]` starts with an ASCII digit, if its end is
/// decided by ASCII bytes.
#[inline(always)]
pub(crate) fn ascii_digits_end(x: u64, i: usize) -> Option<usize> {
    let k = first_lane(!ascii_digit_lanes(x) & HIGH);
    if k >= 3 {
        Some(i + 3)
    } else if lane_is_non_ascii(x, k) {
        None
    } else {
        Some(i + k)
    }
}

/// `\p{N}{1,3}` after its first digit, which ends at `i`.
#[inline]
pub(crate) fn digits_end(b: &[u8], mut i: usize) -> usize {
    for _ in 0..2 {
        if i >= b.len() {
            break;
        }
        let (flag, len) = class_at(b, i);
        if flag & NUMBER == 0 {
            break;
        }
        i += len;
    }
    i
}

/// `[\r\n]*` at `i`.
#[inline]
fn newlines_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

/// `\s*[\r\n]+|\s+(?!\S)|\s+` at `i`, where `b[i]` starts a whitespace character of `len` bytes.
///
/// Shared with o200k, which has the same whitespace alternatives.
#[inline]
pub(crate) fn whitespace_end(b: &[u8], i: usize, len: usize) -> usize {
    let mut last_newline_end = 0; // just after the last \r or \n of the run (0: none yet)
    let mut last = i; // start of the last whitespace character of the run
    let mut end = i + len;
    loop {
        if b[last] == b'\r' || b[last] == b'\n' {
            last_newline_end = last + 1;
        }
        if end >= b.len() {
            break;
        }
        let (flag, next_len) = class_at(b, end);
        if flag & SPACE == 0 {
            break;
        }
        last = end;
        end += next_len;
    }
    if last_newline_end > 0 {
        // `\s*` backtracks until `[\r\n]+` matches: at the run's last newline.
        last_newline_end
    } else if end < b.len() && last > i {
        // `(?!\S)` fails at the run's end, holds one character earlier.
        last
    } else {
        end
    }
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
        // Expected values are from `regex.findall(CL100K_PATTERN, text)` (regex 2026.5.9).
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("Hello world", &["Hello", " world"]),
            ("I'M HE'S we'Ll", &["I", "'M", " HE", "'S", " we", "'Ll"]),
            ("it'\u{17f}", &["it", "'\u{17f}"]),
            ("'sa 'x", &["'s", "a", " '", "x"]),
            ("12345 1", &["123", "45", " ", "1"]),
            ("a  b", &["a", " ", " b"]),
            ("a \n b", &["a", " \n", " b"]),
            ("a \n \n  b", &["a", " \n \n", " ", " b"]),
            ("a\r\n\r\nb", &["a", "\r\n\r\n", "b"]),
            ("x\n\ty", &["x", "\n", "\ty"]),
            ("x\t\ty", &["x", "\t", "\ty"]),
            ("(abc)", &["(abc", ")"]),
            ("..abc", &["..", "abc"]),
            ("a.\n\nb", &["a", ".\n\n", "b"]),
            (" .\r\n", &[" .\r\n"]),
            ("\u{301}abc", &["\u{301}abc"]),
            ("e\u{301}", &["e", "\u{301}"]),
            ("\u{3000}\u{4e2d}", &["\u{3000}\u{4e2d}"]),
            ("\na", &["\n", "a"]),
            ("  ", &["  "]),
            ("a  1", &["a", " ", " ", "1"]),
            ("\u{85}\u{a0}x", &["\u{85}", "\u{a0}x"]),
            ("x \u{2029} y", &["x", " \u{2029}", " y"]),
            ("\u{2029}a", &["\u{2029}a"]),
            ("'\n", &["'\n"]),
            ("x'\u{212a}", &["x", "'\u{212a}"]),
            ("1'S", &["1", "'S"]),
            ("\u{1c}\u{1d}a", &["\u{1c}\u{1d}", "a"]),
            (" !\n\n/x", &[" !\n\n", "/x"]),
        ];
        for (text, expect) in cases {
            assert_eq!(split(text), *expect, "{text:?}");
        }
    }
}
