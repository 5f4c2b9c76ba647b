//! Pretokenization: splitting text into the pieces that BPE merges never cross.
//!
//! The three published patterns (GPT-2, cl100k, o200k) each have a hand-written scanner that is
//! exactly equivalent to the regex (shown by differential tests against Python's `regex` module on
//! arbitrary Unicode and on real corpora), because a regex engine with look-ahead is the slowest
//! part of a BPE pipeline. Any other regex goes through `fancy_regex`, slower but general.
//!
//! The scanners also know their *restart points*: positions where the text can be cut into two
//! pieces that pretokenize, separately, to exactly the pretokens of the whole. Streaming readers
//! cut there, so memory stays bounded on files without document separators.

mod block;
mod cl100k;
mod classes;
mod gpt2;
mod o200k;
mod unicode_tables;

use crate::error::{Error, Result};

/// GPT-2's published pretokenization regex.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// cl100k_base's published pretokenization regex (GPT-3.5/4).
pub const CL100K_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// o200k_base's published pretokenization regex (GPT-4o).
pub const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// A pretokenization rule: a named published pattern with its scanner, or a custom regex.
#[derive(Debug, Clone)]
pub enum Pattern {
    Gpt2,
    Cl100k,
    O200k,
    /// Any other regex; matches are pretokens, text between matches is dropped (as `re.findall`).
    Regex {
        source: String,
        regex: Box<fancy_regex::Regex>,
    },
}

impl Pattern {
    /// `"gpt2"`, `"cl100k"`, `"o200k"` (or their full regex text) select a scanner; any other
    /// string is compiled as a regex.
    pub fn new(name_or_regex: &str) -> Result<Self> {
        match name_or_regex {
            "gpt2" | GPT2_PATTERN => Ok(Pattern::Gpt2),
            "cl100k" | "cl100k_base" | CL100K_PATTERN => Ok(Pattern::Cl100k),
            "o200k" | "o200k_base" | O200K_PATTERN => Ok(Pattern::O200k),
            "" => Err(Error::InvalidArgument(
                "the pretokenization pattern is empty; use \"gpt2\", \"cl100k\", \"o200k\" or a regex"
                    .into(),
            )),
            source => {
                let regex = fancy_regex::Regex::new(source).map_err(|e| Error::InvalidPattern {
                    pattern: source.to_string(),
                    message: e.to_string(),
                })?;
                Ok(Pattern::Regex {
                    source: source.to_string(),
                    regex: Box::new(regex),
                })
            }
        }
    }

    /// The short name of a built-in pattern, or the regex source of a custom one.
    pub fn name(&self) -> &str {
        match self {
            Pattern::Gpt2 => "gpt2",
            Pattern::Cl100k => "cl100k",
            Pattern::O200k => "o200k",
            Pattern::Regex { source, .. } => source,
        }
    }

    /// The regex this pattern is equivalent to.
    pub fn regex_source(&self) -> &str {
        match self {
            Pattern::Gpt2 => GPT2_PATTERN,
            Pattern::Cl100k => CL100K_PATTERN,
            Pattern::O200k => O200K_PATTERN,
            Pattern::Regex { source, .. } => source,
        }
    }

    /// Calls `f` with every pretoken of `text`, in order.
    ///
    /// For the built-in patterns the pretokens tile `text` exactly. A custom regex that fails
    /// at run time (e.g. backtracking limit) stops the scan at that point.
    #[inline]
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        self.for_each_range(text, |start, end| f(&text[start..end]));
    }

    /// `for_each` with each pretoken as its byte range `start, end` of `text` (char
    /// boundaries): what the encoder wants, without a slice (and its boundary checks) per
    /// pretoken.
    #[inline(always)]
    pub fn for_each_range(&self, text: &str, f: impl FnMut(usize, usize)) {
        match self {
            Pattern::Gpt2 => gpt2::scan(text, f),
            Pattern::Cl100k => cl100k::scan(text, f),
            Pattern::O200k => o200k::scan(text, f),
            Pattern::Regex { regex, .. } => {
                let mut f = f;
                for m in regex.find_iter(text) {
                    match m {
                        Ok(m) => f(m.start(), m.end()),
                        Err(_) => break,
                    }
                }
            }
        }
    }

    /// All pretokens of `text` (convenience for tests and small inputs).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        self.for_each(text, |p| out.push(p));
        out
    }

    /// The largest restart point `p <= limit` of `text` with `p > 0`, if the pattern has any.
    ///
    /// Pretokenizing `text[..p]` and `text[p..]` separately gives exactly the pretokens of
    /// `text`, whatever follows `text` (the caller may not have read it yet). Custom regexes have
    /// no known restart points and return `None`.
    pub fn last_restart_point(&self, text: &[u8], limit: usize) -> Option<usize> {
        match self {
            Pattern::Gpt2 | Pattern::Cl100k | Pattern::O200k => {
                classes::last_ascii_restart_point(text, limit)
            }
            Pattern::Regex { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces that exercise every alternative of the three patterns, including the backtracking
    /// ones, plus words followed by spaces and newlines to create restart points.
    const PIECES: &[&str] = &[
        " ",
        " ",
        "  ",
        "\t",
        "\r",
        "\n",
        "\r\n",
        "\x0b",
        "\u{85}",
        "\u{a0}",
        "\u{3000}",
        "'",
        "'s",
        "'S",
        "'\u{17f}",
        "'ll",
        "'Re",
        "'d",
        "a",
        "Z",
        "abc",
        "ABC",
        "\u{1c5}",
        "\u{2b0}",
        "\u{e9}",
        "\u{c9}",
        "\u{4e2d}",
        "\u{301}",
        "\u{903}",
        "0",
        "1234",
        "\u{663}",
        "\u{b2}",
        ".",
        "!?",
        "/",
        "\u{bf}",
        "\u{1f600}",
        "a ",
        "Z\n",
        "9 ",
        "x\n\n",
        "b  ",
        "q\t",
    ];

    /// A small deterministic PRNG (xorshift64*), enough to drive property tests without a dep.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }

        fn text(&mut self) -> String {
            let n = self.below(30);
            (0..n).map(|_| PIECES[self.below(PIECES.len())]).collect()
        }
    }

    fn patterns() -> [Pattern; 3] {
        [Pattern::Gpt2, Pattern::Cl100k, Pattern::O200k]
    }

    fn is_candidate(b: &[u8], p: usize) -> bool {
        p > 0 && p < b.len() && b[p - 1].is_ascii_alphanumeric() && matches!(b[p], b' ' | b'\n')
    }

    #[test]
    fn pretokens_tile_the_text() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let text = rng.text();
            for pattern in patterns() {
                let pieces = pattern.split(&text);
                assert!(pieces.iter().all(|p| !p.is_empty()), "{text:?}");
                assert_eq!(pieces.concat(), text, "{}", pattern.name());
            }
        }
    }

    /// The scanners against `fancy_regex` running the published regexes. Its Unicode tables are
    /// not Python's (the reference, see tests/tokenizer/test_pretokenize.py), but on `PIECES`,
    /// old and stable characters all, both engines agree.
    #[test]
    fn scanners_match_fancy_regex() {
        let mut rng = Rng(0x5EED_1234_ABCD_0042);
        for pattern in patterns() {
            let regex = fancy_regex::Regex::new(pattern.regex_source()).expect("published regex");
            for _ in 0..1000 {
                let text = rng.text();
                let want: Vec<&str> = regex
                    .find_iter(&text)
                    .map(|m| m.expect("no backtrack limit on short text").as_str())
                    .collect();
                assert_eq!(pattern.split(&text), want, "{}: {text:?}", pattern.name());
            }
        }
    }

    /// Texts longer than the scanners' 64-byte windows, mostly ASCII, so that the window path
    /// (and its hand-over to the general path at non-ASCII bytes) is exercised.
    #[test]
    fn long_texts_match_fancy_regex() {
        let words = [
            "the", " cat", "'s", "'ll", "'re", " 42", "12345", ",", ".", "...", " ", "\n",
        ];
        let mut rng = Rng(0xFACE_B00C_0DDB_A110);
        for pattern in patterns() {
            match_fancy_regex(&pattern, &mut rng, &words, 300, 40, 4);
        }
    }

    /// Long texts dense in characters of two and three bytes of every class (letters of both
    /// cases and without case, numbers, punctuation, marks, format characters, whitespace),
    /// among ASCII of every class and a few four-byte characters: GPT-2's windows classify
    /// characters of two and three bytes themselves, and stop at non-ASCII whitespace, four-byte
    /// characters and characters cut by a window's end.
    #[test]
    fn long_multi_byte_texts_match_fancy_regex() {
        let words = [
            "\u{e9}",
            "\u{c9}",
            "\u{df}",
            "\u{3a9}",
            "\u{436}",
            "\u{5d0}",
            "\u{2b0}",
            "\u{b5}",
            "\u{aa}",
            "\u{b2}",
            "\u{bd}",
            "\u{663}",
            "\u{6f4}",
            "\u{a7}",
            "\u{ab}",
            "\u{bf}",
            "\u{d7}",
            "\u{301}",
            "\u{5b0}",
            "\u{a0}",
            "\u{85}",
            "\u{80}",
            "\u{9f}",
            "a",
            "Zq",
            " ",
            "  ",
            "\n",
            "\t",
            "'",
            "'s",
            "'ll",
            "7",
            "42",
            ".",
            "!",
            "\u{2019}",
            "\u{4e2d}",
            "\u{1f600}",
            " \u{e9}t\u{e9}",
            "na\u{ef}ve",
            "\u{201c}",
            "\u{201d}",
            "\u{2014}",
            "\u{2026}",
            "\u{3002}",
            "\u{ff0c}",
            "\u{3042}",
            "\u{915}\u{94d}",
            "\u{d55c}",
            "\u{966}",
            "\u{2160}",
            "\u{2460}",
            "\u{2070}",
            "\u{2071}",
            "\u{903}",
            "\u{20d0}",
            "\u{200b}",
            "\u{feff}",
            "\u{2003}",
            "\u{3000}",
            "\u{2028}",
            "\u{205f}",
            "\u{202f}",
            " \u{201c}Hi,\u{201d}",
        ];
        let mut rng = Rng(0x2B17_E5C4_A7A1_0F00);
        for pattern in patterns() {
            match_fancy_regex(&pattern, &mut rng, &words, 1500, 30, 8);
        }
    }

    /// A character of two or three bytes at every byte offset of the first windows, the last
    /// bytes of a window included (where the character is cut by the window's end), after runs
    /// of each class.
    #[test]
    fn multi_byte_characters_at_every_window_offset() {
        let fillers = ["a", " ", "1", ".", "ab ", "'s", "\n "];
        let chars = [
            "\u{e9}", "\u{b2}", "\u{a7}", "\u{a0}", "\u{85}", "\u{301}", "\u{436}", "\u{201c}",
            "\u{4e2d}", "\u{2160}", "\u{20d0}", "\u{200b}", "\u{3000}", "\u{2028}",
        ];
        for pattern in patterns() {
            let regex = fancy_regex::Regex::new(pattern.regex_source()).expect("published regex");
            for filler in fillers {
                for c in chars {
                    for k in 0..140 {
                        let head: String = filler.chars().cycle().take(k).collect();
                        let text = format!("{head}{c}{filler}{c}{c}x {c}");
                        let want: Vec<&str> = regex
                            .find_iter(&text)
                            .map(|m| m.expect("no backtrack limit on short text").as_str())
                            .collect();
                        assert_eq!(pattern.split(&text), want, "{}: {text:?}", pattern.name());
                    }
                }
            }
        }
    }

    /// Long mostly-ASCII texts with the shapes the cl100k and o200k fast paths decide on their
    /// own: mixed-case words, leading characters before words, digit runs, punctuation runs
    /// followed by newlines and slashes, case-insensitive contractions; with non-ASCII pieces
    /// next to them so that every hand-over to the general path is exercised.
    #[test]
    fn long_cased_texts_match_fancy_regex() {
        let words = [
            "the",
            " Cat",
            "HTML",
            "Parser",
            "iPhone",
            "DON",
            "Z",
            "ab",
            "xyzzyxyzzyx",
            "ABCDEFGHIJK",
        ];
        let mut rng = Rng(0xC1_100C_0200_0C0D);
        for pattern in [Pattern::Cl100k, Pattern::O200k] {
            match_fancy_regex(&pattern, &mut rng, &words, 3000, 10, 6);
        }
    }

    /// `count` texts of `min_pieces` or more pieces, one in `tricky_every` from `PIECES` and the
    /// rest from `words`, must split exactly as fancy_regex splits them.
    fn match_fancy_regex(
        pattern: &Pattern,
        rng: &mut Rng,
        words: &[&str],
        count: usize,
        min_pieces: usize,
        tricky_every: usize,
    ) {
        let regex = fancy_regex::Regex::new(pattern.regex_source()).expect("published regex");
        for _ in 0..count {
            let n = min_pieces + rng.below(2 * min_pieces + 40);
            let text: String = (0..n)
                .map(|_| {
                    if rng.below(tricky_every) == 0 {
                        PIECES[rng.below(PIECES.len())]
                    } else {
                        words[rng.below(words.len())]
                    }
                })
                .collect();
            let want: Vec<&str> = regex
                .find_iter(&text)
                .map(|m| m.expect("no backtrack limit on short text").as_str())
                .collect();
            assert_eq!(pattern.split(&text), want, "{}: {text:?}", pattern.name());
        }
    }

    #[test]
    fn restart_points_split_cleanly() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let mut checked = 0;
        for _ in 0..3000 {
            let text = rng.text();
            let b = text.as_bytes();
            for pattern in patterns() {
                let whole = pattern.split(&text);
                for p in (1..b.len()).filter(|&p| is_candidate(b, p)) {
                    let mut parts = pattern.split(&text[..p]);
                    parts.extend(pattern.split(&text[p..]));
                    assert_eq!(parts, whole, "{} cut at {p}: {text:?}", pattern.name());
                    checked += 1;
                }
            }
            // The function returns the largest candidate at or below every limit.
            for limit in 0..=b.len() + 1 {
                let want = (1..=limit.min(b.len())).rev().find(|&p| is_candidate(b, p));
                assert_eq!(
                    Pattern::Gpt2.last_restart_point(b, limit),
                    want,
                    "limit {limit}: {text:?}"
                );
            }
        }
        assert!(
            checked > 1000,
            "too few restart points exercised: {checked}"
        );
    }

    #[test]
    fn names_and_sources() {
        for (name, source) in [
            ("gpt2", GPT2_PATTERN),
            ("cl100k", CL100K_PATTERN),
            ("o200k", O200K_PATTERN),
        ] {
            let by_name = Pattern::new(name).expect("built-in name");
            let by_source = Pattern::new(source).expect("built-in source");
            assert_eq!(by_name.name(), name);
            assert_eq!(by_source.name(), name);
            assert_eq!(by_name.regex_source(), source);
        }
        assert!(Pattern::new("").is_err());
        assert!(
            Pattern::last_restart_point(&Pattern::new(r"\w+").expect("regex"), b"a b", 9).is_none()
        );
    }
}
