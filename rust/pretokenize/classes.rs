//! Character classes shared by the scanners, and the ASCII restart rule.
//!
//! Every code point has exactly one class, stored as a one-bit flag so that a scanner tests
//! membership in a union of classes (`\p{L}`, `[^\s\p{L}\p{N}]`, ...) with one AND. ASCII bytes
//! are classified by a 128-entry table without decoding; only non-ASCII bytes are decoded and
//! binary-searched in the generated range table. The tables come from Python's `regex` module
//! (`tools/gen_unicode_tables.py`), the reference the scanners are tested against.

use super::block::{lanes_in, splat, HIGH};
use super::unicode_tables::{ASCII, RANGES};

/// Anything not in another class: punctuation, symbols, controls, unassigned code points.
pub(crate) const OTHER: u8 = 1 << 0;
/// What `regex`'s `\s` matches (not the same set as `str.isspace`: U+001C..U+001F are not in it).
pub(crate) const SPACE: u8 = 1 << 1;
/// `\p{Lu}` and `\p{Lt}`.
pub(crate) const UPPER: u8 = 1 << 2;
/// `\p{Ll}`.
pub(crate) const LOWER: u8 = 1 << 3;
/// `\p{Lm}` and `\p{Lo}`: letters without case, which o200k counts as both upper and lower.
pub(crate) const LETTER_OTHER: u8 = 1 << 4;
/// `\p{M}`: not a letter, so GPT-2 and cl100k treat marks like punctuation.
pub(crate) const MARK: u8 = 1 << 5;
/// `\p{N}`.
pub(crate) const NUMBER: u8 = 1 << 6;

/// `\p{L}`.
pub(crate) const LETTER: u8 = UPPER | LOWER | LETTER_OTHER;
/// `[^\s\p{L}\p{N}]`.
pub(crate) const PUNCT: u8 = OTHER | MARK;

/// The class flag of every code point of the Basic Multilingual Plane (64 KiB, built from
/// `RANGES` on first use): one load instead of a dozen steps of binary search for the non-ASCII
/// characters of nearly every text (curly quotes, dashes, accented letters, CJK).
fn bmp() -> &'static [u8; 0x10000] {
    static BMP: std::sync::OnceLock<Box<[u8; 0x10000]>> = std::sync::OnceLock::new();
    BMP.get_or_init(|| {
        let mut table = Box::new([OTHER; 0x10000]);
        table[..0x80].copy_from_slice(&ASCII);
        for (k, &r) in RANGES.iter().enumerate() {
            let start = (r >> 8) as usize;
            let end = RANGES.get(k + 1).map_or(0x10000, |&n| (n >> 8) as usize);
            if let Some(run) = table.get_mut(start..end.min(0x10000)) {
                run.fill(r as u8);
            }
        }
        table
    })
}

/// The class flag of a non-ASCII code point.
#[inline]
fn flag_of(cp: u32) -> u8 {
    if let Some(&flag) = bmp().get(cp as usize) {
        return flag;
    }
    flag_by_search(cp)
}

/// `flag_of` by binary search in `RANGES` (for code points beyond the BMP table).
fn flag_by_search(cp: u32) -> u8 {
    // RANGES starts at U+0080, so for cp >= 0x80 the partition point is at least 1.
    let idx = RANGES.partition_point(|&r| (r >> 8) <= cp);
    match idx.checked_sub(1).and_then(|k| RANGES.get(k)) {
        Some(&r) => r as u8,
        None => OTHER,
    }
}

/// The class flag and UTF-8 length of the character starting at byte `i` of `b`.
///
/// `b` must be the bytes of a `str` and `i < b.len()` a char boundary: the scanners only step by
/// lengths returned here, so both hold by construction.
#[inline(always)]
pub(crate) fn class_at(b: &[u8], i: usize) -> (u8, usize) {
    let b0 = b[i];
    if b0 < 0x80 {
        return (ASCII[b0 as usize], 1);
    }
    // Two-byte characters (Latin-1 and the other alphabets up to U+07FF) inline: random or
    // accented text has one every few bytes, and a call each was a tenth of its scan.
    if let (0xC2..=0xDF, Some(&b1)) = (b0, b.get(i + 1)) {
        return (two_byte_class(b0, b1), 2);
    }
    decode_class(b, i, b0)
}

/// The class flag of the two-byte character `b0 b1` (`b0` in 0xC2..=0xDF, `b1` a continuation
/// byte: U+0080..U+07FF).
#[inline(always)]
pub(crate) fn two_byte_class(b0: u8, b1: u8) -> u8 {
    bmp()[usize::from(b0 & 0x1F) << 6 | usize::from(b1 & 0x3F)]
}

/// The class flag of the three-byte character `b0 b1 b2` (`b0` in 0xE0..=0xEF, `b1` and `b2`
/// continuation bytes: U+0800..U+FFFF).
#[inline(always)]
pub(crate) fn three_byte_class(b0: u8, b1: u8, b2: u8) -> u8 {
    let cp = usize::from(b0 & 0x0F) << 12 | usize::from(b1 & 0x3F) << 6 | usize::from(b2 & 0x3F);
    bmp()[cp]
}

#[inline(never)]
fn decode_class(b: &[u8], i: usize, b0: u8) -> (u8, usize) {
    // Valid UTF-8 guarantees the continuation bytes exist; `get` keeps a corrupt slice from
    // panicking (it then classifies as OTHER and advances one byte).
    let cont = |k: usize| b.get(i + k).map_or(0, |&x| (x & 0x3F) as u32);
    let (cp, len) = if b0 >= 0xF0 {
        (
            ((b0 as u32 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        )
    } else if b0 >= 0xE0 {
        (((b0 as u32 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else if b0 >= 0xC0 {
        (((b0 as u32 & 0x1F) << 6) | cont(1), 2)
    } else {
        return (OTHER, 1);
    };
    (flag_of(cp), len)
}

/// End of the run of characters whose class is in `mask`, starting at byte `i`.
#[inline(always)]
pub(crate) fn run_end(b: &[u8], mut i: usize, mask: u8) -> usize {
    while i < b.len() {
        let (flag, len) = class_at(b, i);
        if flag & mask == 0 {
            break;
        }
        i += len;
    }
    i
}

/// `[A-Za-z]` lanes: setting bit 5 maps `A-Z` onto `a-z` and every other ASCII byte outside it.
#[inline(always)]
pub(crate) const fn ascii_letter_lanes(x: u64) -> u64 {
    lanes_in(x | splat(0x20), b'a', b'z')
}

/// `[0-9]` lanes.
#[inline(always)]
pub(crate) const fn ascii_digit_lanes(x: u64) -> u64 {
    lanes_in(x, b'0', b'9')
}

/// `[\t\n\x0b\x0c\r ]` lanes: ASCII `\s`.
#[inline(always)]
pub(crate) const fn ascii_space_lanes(x: u64) -> u64 {
    lanes_in(x, 0x09, 0x0D) | lanes_in(x, b' ', b' ')
}

/// ASCII `[^\s\p{L}\p{N}]` lanes: ASCII bytes that are not letters, digits or spaces.
#[inline(always)]
pub(crate) const fn ascii_punct_lanes(x: u64) -> u64 {
    !(x | ascii_letter_lanes(x) | ascii_digit_lanes(x) | ascii_space_lanes(x)) & HIGH
}

/// Loads the eight bytes at `i` as little-endian lanes (lane 0 is `b[i]`), if there are eight.
#[inline(always)]
pub(crate) fn load8(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*chunk))
}

/// Lane index of the lowest lane whose high bit is set in `stop` (8 if none).
#[inline(always)]
pub(crate) const fn first_lane(stop: u64) -> usize {
    (stop.trailing_zeros() / 8) as usize
}

/// Whether lane `k < 8` of `x` holds a non-ASCII byte.
#[inline(always)]
pub(crate) const fn lane_is_non_ascii(x: u64, k: usize) -> bool {
    (x >> (8 * k)) & 0x80 != 0
}

/// End of the run of characters of class `mask` continuing at `i`, where `lanes` gives the
/// ASCII members of that class.
///
/// ASCII bytes are read eight at a time: prose is mostly short ASCII words, and finding a word's
/// end with one `trailing_zeros` replaces a byte loop whose exit branch mispredicts on every
/// word. Only when the ASCII run stops at a non-ASCII byte does the general path take over.
#[inline(always)]
pub(crate) fn class_run_end(b: &[u8], mut i: usize, lanes: impl Fn(u64) -> u64, mask: u8) -> usize {
    loop {
        let Some(x) = load8(b, i) else {
            // Fewer than eight bytes left: one at a time.
            return run_end(b, i, mask);
        };
        let stop = !lanes(x) & HIGH;
        if stop != 0 {
            let k = first_lane(stop);
            return if lane_is_non_ascii(x, k) {
                run_end(b, i + k, mask)
            } else {
                i + k
            };
        }
        i += 8;
    }
}

/// Byte length of the case-insensitive contraction (`(?i:'s|'t|'re|'ve|'m|'ll|'d)`) at `i`, if any.
///
/// `regex`'s IGNORECASE uses simple case folding, under which the only non-ASCII character that
/// matches one of these letters is U+017F LATIN SMALL LETTER LONG S (folds to `s`).
#[inline]
pub(crate) fn contraction_ci(b: &[u8], i: usize) -> usize {
    if b.get(i) != Some(&b'\'') {
        return 0;
    }
    let lower = |k: usize| b.get(i + k).map(|c| c | 0x20);
    match lower(1) {
        Some(b's' | b't' | b'm' | b'd') => 2,
        Some(b'r' | b'v') if lower(2) == Some(b'e') => 3,
        Some(b'l') if lower(2) == Some(b'l') => 3,
        // U+017F is C5 BF in UTF-8; `| 0x20` above cannot produce it from another letter.
        _ if b.get(i + 1) == Some(&0xC5) && b.get(i + 2) == Some(&0xBF) => 3,
        _ => 0,
    }
}

/// The largest restart point `p` with `0 < p <= limit` and `p < text.len()`: `text[p - 1]` is an
/// ASCII letter or digit and `text[p]` is `' '` or `'\n'`.
///
/// Why this is safe for GPT-2, cl100k and o200k: no pretoken of these patterns contains an ASCII
/// alphanumeric followed by whitespace (letters and digits end a pretoken before any space; a
/// space only ever starts one), so the whole text has a pretoken boundary at `p`. Every
/// alternative decides where a pretoken ends by looking at most at the character after it, and
/// here that character is a space, which stops letter, digit and contraction runs exactly as the
/// end of the text does; so `text[..p]` scans to the same pretokens. Scanning is left to right,
/// so `text[p..]` gives the rest.
pub(crate) fn last_ascii_restart_point(text: &[u8], limit: usize) -> Option<usize> {
    // p < text.len() so that text[p] exists; p <= limit.
    let hi = limit.min(text.len().checked_sub(1)?);
    let mut end = hi + 1; // search text[..end] for the space at p
    while let Some(p) = memchr::memrchr2(b' ', b'\n', &text[..end]) {
        if p == 0 {
            return None;
        }
        if text[p - 1].is_ascii_alphanumeric() {
            return Some(p);
        }
        end = p;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes() {
        for (i, &flag) in ASCII.iter().enumerate() {
            let c = i as u8;
            let expect = if c.is_ascii_uppercase() {
                UPPER
            } else if c.is_ascii_lowercase() {
                LOWER
            } else if c.is_ascii_digit() {
                NUMBER
            } else if matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
                SPACE
            } else {
                OTHER
            };
            assert_eq!(flag, expect, "byte {i:#04x}");
        }
    }

    #[test]
    fn non_ascii_classes() {
        let cases = [
            ('\u{0085}', SPACE),
            ('\u{00A0}', SPACE),
            ('\u{001C}', OTHER),
            ('\u{3000}', SPACE),
            ('\u{2028}', SPACE),
            ('\u{180E}', OTHER),
            ('\u{200B}', OTHER),
            ('é', LOWER),
            ('É', UPPER),
            ('ǅ', UPPER),
            ('ſ', LOWER),
            ('ʰ', LETTER_OTHER),
            ('中', LETTER_OTHER),
            ('\u{0301}', MARK),
            ('\u{0903}', MARK),
            ('²', NUMBER),
            ('Ⅻ', NUMBER),
            ('٣', NUMBER),
            ('😀', OTHER),
            ('𝐀', UPPER),
            ('\u{10FFFF}', OTHER),
            ('\u{E0100}', MARK),
        ];
        for (ch, expect) in cases {
            let s = ch.to_string();
            assert_eq!(class_at(s.as_bytes(), 0), (expect, s.len()), "{ch:?}");
        }
    }

    /// The BMP table agrees with the binary search on every code point it holds.
    #[test]
    fn bmp_table_matches_ranges() {
        for cp in 0x80..0x10000u32 {
            assert_eq!(flag_of(cp), flag_by_search(cp), "U+{cp:04X}");
        }
        for (i, &flag) in ASCII.iter().enumerate() {
            assert_eq!(bmp()[i], flag);
        }
    }

    #[test]
    fn ranges_are_sorted() {
        assert!(RANGES.windows(2).all(|w| (w[0] >> 8) < (w[1] >> 8)));
        assert_eq!(RANGES[0] >> 8, 0x80);
        for r in RANGES {
            assert_eq!((r as u8).count_ones(), 1);
        }
    }

    #[test]
    fn contractions() {
        let cases = [
            ("'s", 2),
            ("'S", 2),
            ("'ſ", 3),
            ("'re", 3),
            ("'rE", 3),
            ("'r", 0),
            ("'LL", 3),
            ("'l", 0),
            ("'x", 0),
            ("'", 0),
            ("s", 0),
            ("'\u{212A}", 0),
        ];
        for (s, n) in cases {
            assert_eq!(contraction_ci(s.as_bytes(), 0), n, "{s:?}");
        }
    }

    #[test]
    fn restart_point_basics() {
        let t = b"ab cd\nef";
        assert_eq!(last_ascii_restart_point(t, 100), Some(5));
        assert_eq!(last_ascii_restart_point(t, 4), Some(2));
        assert_eq!(last_ascii_restart_point(t, 1), None);
        assert_eq!(last_ascii_restart_point(b"a  b", 100), Some(1));
        assert_eq!(last_ascii_restart_point(b"a ", 100), Some(1));
        assert_eq!(last_ascii_restart_point(b"a", 100), None);
        assert_eq!(last_ascii_restart_point(b"", 100), None);
        assert_eq!(last_ascii_restart_point(b" a", 100), None);
        assert_eq!(last_ascii_restart_point(b"!! ", 100), None);
    }
}
