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

mod classes;
mod cl100k;
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
    pub fn for_each<'a>(&self, text: &'a str, f: impl FnMut(&'a str)) {
        match self {
            Pattern::Gpt2 => gpt2::scan(text, f),
            Pattern::Cl100k => cl100k::scan(text, f),
            Pattern::O200k => o200k::scan(text, f),
            Pattern::Regex { regex, .. } => {
                let mut f = f;
                for m in regex.find_iter(text) {
                    match m {
                        Ok(m) => f(m.as_str()),
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
