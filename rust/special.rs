//! Special tokens: strings such as `<|endoftext|>` that stand for one id and are never merged.
//!
//! Text is split on special tokens *before* pretokenization, so no pretoken and no merge ever
//! spans one. Occurrences are found with Aho-Corasick in leftmost-longest mode: when special
//! tokens overlap (say `<|a|>` and `<|a|><|b|>`), the longest match at the leftmost position wins.
//! tiktoken leaves this order unspecified; we fix it so training and encoding are reproducible.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::error::{Error, Result};

/// A piece of text between special tokens, or the index of a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Special(usize),
}

/// The special tokens of a tokenizer and their matcher.
#[derive(Debug, Clone)]
pub struct Specials {
    tokens: Vec<String>,
    matcher: Option<AhoCorasick>,
    /// Finds every occurrence, overlapping ones included (for `overlaps`).
    every: Option<AhoCorasick>,
    max_len: usize,
}

impl Specials {
    /// Builds the matcher. Empty or duplicate tokens are errors.
    pub fn new(tokens: Vec<String>) -> Result<Self> {
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(Error::InvalidArgument(
                    "special tokens must be non-empty strings".into(),
                ));
            }
            if tokens[..i].contains(t) {
                return Err(Error::InvalidArgument(format!(
                    "special token {t:?} is given twice"
                )));
            }
        }
        let build = |kind| {
            if tokens.is_empty() {
                return Ok(None);
            }
            AhoCorasickBuilder::new()
                .match_kind(kind)
                .build(&tokens)
                .map(Some)
                .map_err(|e| Error::InvalidArgument(format!("special tokens: {e}")))
        };
        let matcher = build(MatchKind::LeftmostLongest)?;
        let every = build(MatchKind::Standard)?;
        let max_len = tokens.iter().map(String::len).max().unwrap_or(0);
        Ok(Specials {
            tokens,
            matcher,
            every,
            max_len,
        })
    }

    /// Length in bytes of the longest special token (0 when there are none).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Calls `f` with the pieces of `text` in order: the (non-empty) text between special
    /// tokens and the special tokens themselves.
    pub fn split<'a>(&self, text: &'a str, mut f: impl FnMut(Segment<'a>)) {
        let Some(matcher) = &self.matcher else {
            if !text.is_empty() {
                f(Segment::Text(text));
            }
            return;
        };
        let mut last = 0;
        for m in matcher.find_iter(text) {
            if m.start() > last {
                f(Segment::Text(&text[last..m.start()]));
            }
            f(Segment::Special(m.pattern().as_usize()));
            last = m.end();
        }
        if last < text.len() {
            f(Segment::Text(&text[last..]));
        }
    }

    /// Whether any occurrence of a special token in `bytes`, counting overlapping and shadowed
    /// ones, strictly contains position `p` (starts before it and ends after it). Looks only at
    /// the `max_len` bytes on either side of `p`.
    pub fn overlaps(&self, bytes: &[u8], p: usize) -> bool {
        let Some(every) = &self.every else {
            return false;
        };
        let lo = p.saturating_sub(self.max_len - 1);
        let hi = (p + self.max_len - 1).min(bytes.len());
        every
            .find_overlapping_iter(&bytes[lo..hi])
            .any(|m| lo + m.start() < p && p < lo + m.end())
    }

    /// Byte ranges `(start, end)` of the special-token occurrences in `bytes`.
    pub fn find_all(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        match &self.matcher {
            None => Vec::new(),
            Some(m) => m.find_iter(bytes).map(|m| (m.start(), m.end())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &Specials, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.split(text, |seg| match seg {
            Segment::Text(t) => out.push(t.to_string()),
            Segment::Special(i) => out.push(format!("<{i}>")),
        });
        out
    }

    #[test]
    fn longest_overlapping_special_wins() {
        let s = Specials::new(vec!["<|a|>".into(), "<|a|><|b|>".into()]).unwrap();
        assert_eq!(pieces(&s, "x<|a|><|b|>y<|a|>"), ["x", "<1>", "y", "<0>"]);
    }

    #[test]
    fn overlaps_sees_every_occurrence_near_p() {
        let s = Specials::new(vec!["<|a|>".into(), "|>x".into()]).unwrap();
        let text = b"ab <|a|>x cd";
        assert!(s.overlaps(text, 5)); // inside <|a|>
        assert!(s.overlaps(text, 8)); // inside the shadowed "|>x"
        assert!(!s.overlaps(text, 3)); // at the start of <|a|>
        assert!(!s.overlaps(text, 9));
        assert!(!Specials::new(vec![]).unwrap().overlaps(text, 5));
    }

    #[test]
    fn rejects_empty_and_duplicate() {
        assert!(Specials::new(vec!["".into()]).is_err());
        assert!(Specials::new(vec!["<s>".into(), "<s>".into()]).is_err());
    }

    #[test]
    fn no_specials_passes_text_through() {
        let s = Specials::new(vec![]).unwrap();
        assert_eq!(pieces(&s, "abc"), ["abc"]);
        assert!(pieces(&s, "").is_empty());
    }
}
