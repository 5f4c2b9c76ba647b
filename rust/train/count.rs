//! Counting unique pretokens over a corpus, in parallel.
//!
//! Each rayon worker counts the chunks it takes into its own hash map keyed by the pretoken
//! text, and the maps are summed at the end. Memory grows with the number of *unique*
//! pretokens, never with corpus size: the corpus streams through in chunks (`corpus.rs`).
//! Counts are u64 (a 100 GB corpus overflows u32 counts of frequent pretokens).

use std::path::PathBuf;

use rayon::prelude::*;

use crate::corpus::{check_file, ChunkReader, Cutter, Utf8Policy};
use crate::error::{Error, Result};
use crate::pretokenize::Pattern;
use crate::progress::Bar;
use crate::special::{Segment, Specials};

type Map = hashbrown::HashMap<Box<str>, u64, rustc_hash::FxBuildHasher>;

/// Bytes per chunk handed to one worker: large enough to amortise scheduling, small enough that
/// a few per thread stay cheap in memory.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Unique pretokens of a corpus and how often each occurs.
#[derive(Default, Debug, Clone)]
pub struct PretokenCounts {
    map: Map,
    /// Input bytes counted so far.
    pub bytes: u64,
}

impl PretokenCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct pretokens.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total number of pretokens counted.
    pub fn total(&self) -> u64 {
        self.map.values().sum()
    }

    /// The distinct pretokens and their counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.map.iter().map(|(k, &v)| (&**k, v))
    }

    /// Adds the pretokens of one text (special tokens are skipped); `bytes` is left to the caller.
    pub fn add_text(&mut self, text: &str, pattern: &Pattern, specials: &Specials) {
        specials.split(text, |seg| {
            if let Segment::Text(t) = seg {
                pattern.for_each(t, |p| match self.map.get_mut(p) {
                    Some(c) => *c += 1,
                    None => {
                        self.map.insert(p.into(), 1);
                    }
                });
            }
        });
    }

    /// Adds all counts of `other`.
    pub fn merge(&mut self, mut other: PretokenCounts) {
        if other.map.len() > self.map.len() {
            std::mem::swap(self, &mut other);
        }
        for (k, v) in other.map {
            *self.map.entry(k).or_insert(0) += v;
        }
        self.bytes += other.bytes;
    }

    /// Counts `texts` in parallel on the current rayon pool; each text is a separate document.
    pub fn add_texts(&mut self, texts: &[String], pattern: &Pattern, specials: &Specials) {
        let counted = texts
            .par_iter()
            .fold(PretokenCounts::new, |mut acc, t| {
                acc.add_text(t, pattern, specials);
                acc.bytes += t.len() as u64;
                acc
            })
            .reduce(PretokenCounts::new, |mut a, b| {
                a.merge(b);
                a
            });
        self.merge(counted);
    }

    /// Streams `paths` in chunks and counts them in parallel on the current rayon pool.
    pub fn add_files(
        &mut self,
        paths: &[PathBuf],
        pattern: &Pattern,
        specials: &Specials,
        policy: Utf8Policy,
        bar: &Bar,
    ) -> Result<()> {
        let cutter = Cutter { pattern, specials };
        let mut readers = Vec::with_capacity(paths.len());
        for p in paths {
            readers.push(ChunkReader::open(p, cutter, policy, CHUNK_BYTES)?);
        }
        let counted = readers
            .into_iter()
            .flatten()
            .par_bridge()
            .try_fold(PretokenCounts::new, |mut acc, chunk| {
                let chunk = chunk?;
                acc.add_text(&chunk.text, pattern, specials);
                acc.bytes += chunk.bytes; // input bytes, before any U+FFFD replacement
                bar.inc(chunk.bytes);
                Ok::<_, Error>(acc)
            })
            .try_reduce(PretokenCounts::new, |mut a, b| {
                a.merge(b);
                Ok(a)
            })?;
        self.merge(counted);
        Ok(())
    }
}

/// Total size in bytes of `paths`, checking each is a readable file.
pub fn total_size(paths: &[PathBuf]) -> Result<u64> {
    paths.iter().map(|p| check_file(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_skips_specials() {
        let pattern = Pattern::new("gpt2").unwrap();
        let specials = Specials::new(vec!["<|endoftext|>".into()]).unwrap();
        let mut c = PretokenCounts::new();
        c.add_texts(
            &["a b a<|endoftext|>a".into(), " b".into()],
            &pattern,
            &specials,
        );
        let mut got: Vec<_> = c.iter().map(|(k, v)| (k.to_string(), v)).collect();
        got.sort();
        assert_eq!(got, [(" a".into(), 1), (" b".into(), 2), ("a".into(), 2)]);
        assert_eq!(c.total(), 5);
    }
}
