//! Counting unique pretokens over a corpus, in parallel.
//!
//! Each rayon worker counts the chunks it takes into its own hash map keyed by the pretoken
//! text, and the maps are summed at the end. Memory grows with the number of *unique*
//! pretokens, never with corpus size: the corpus streams through in chunks (`corpus.rs`).
//! Counts are u64 (a 100 GB corpus overflows u32 counts of frequent pretokens).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::ahead::Inputs;
use crate::corpus::{check_file, Chunk, ChunkReader, Cutter, Utf8Policy};
use crate::error::Result;
use crate::pool::Pool;
use crate::pretokenize::Pattern;
use crate::progress::Bar;
use crate::shortkey::{FoldHasher, ShortKey};
use crate::special::{Segment, Specials};

type LongHasher = rustc_hash::FxBuildHasher;

/// Size of the hot-pretoken cache: 2^12 slots of 32 bytes, 128 KiB.
const HOT_BITS: u32 = 12;
const HOT_SLOTS: usize = 1 << HOT_BITS;

type ShortMap = hashbrown::HashMap<ShortKey, u64, std::hash::BuildHasherDefault<FoldHasher>>;

/// Bytes per chunk handed to one worker: large enough to amortise scheduling, small enough that
/// a few per thread stay cheap in memory.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Unique pretokens of a corpus and how often each occurs.
#[derive(Default, Debug, Clone)]
pub struct PretokenCounts {
    short: ShortMap,
    long: hashbrown::HashMap<Box<[u8]>, u64, LongHasher>,
    /// Input bytes counted so far.
    pub bytes: u64,
}

impl PretokenCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct pretokens.
    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of pretokens counted.
    pub fn total(&self) -> u64 {
        self.short.values().chain(self.long.values()).sum()
    }

    /// Calls `f` with every distinct pretoken (as UTF-8 bytes) and its count, in no order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], u64)) {
        for (k, &v) in &self.short {
            let (bytes, len) = k.to_bytes();
            f(&bytes[..len], v);
        }
        for (k, &v) in &self.long {
            f(k, v);
        }
    }

    /// Counts a pretoken longer than a `ShortKey`.
    fn add_long(&mut self, pretoken: &[u8]) {
        match self.long.get_mut(pretoken) {
            Some(c) => *c += 1,
            None => {
                self.long.insert(pretoken.into(), 1);
            }
        }
    }

    /// Adds the pretokens of one text (special tokens are skipped); `bytes` is left to the caller.
    ///
    /// Pretoken frequencies are Zipfian: a few thousand distinct pretokens make up most of the
    /// text. A small direct-mapped cache of counts, which stays in L2, absorbs those, so the big
    /// map (megabytes, a cache miss per lookup) is touched mostly by rarer pretokens.
    pub fn add_text(&mut self, text: &str, pattern: &Pattern, specials: &Specials) {
        let mut hot = vec![(ShortKey(0), 0u64); HOT_SLOTS];
        let bytes = text.as_bytes();
        specials.split(text, |seg| {
            if let Segment::Text(t) = seg {
                let base = t.as_ptr() as usize - text.as_ptr() as usize;
                pattern.for_each(t, |p| {
                    let start = base + (p.as_ptr() as usize - t.as_ptr() as usize);
                    let end = start + p.len();
                    let Some(key) = ShortKey::new(bytes, start, end) else {
                        self.add_long(&bytes[start..end]);
                        return;
                    };
                    let slot = &mut hot[key.slot(HOT_BITS)];
                    if slot.0 == key {
                        slot.1 += 1;
                    } else {
                        let (old, n) = std::mem::replace(slot, (key, 1));
                        if n > 0 {
                            *self.short.entry(old).or_insert(0) += n;
                        }
                    }
                });
            }
        });
        for (key, n) in hot {
            if n > 0 {
                *self.short.entry(key).or_insert(0) += n;
            }
        }
    }

    /// Adds all counts of `other`.
    pub fn merge(&mut self, mut other: PretokenCounts) {
        if other.len() > self.len() {
            std::mem::swap(self, &mut other);
        }
        for (k, v) in other.short {
            *self.short.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.long {
            *self.long.entry(k).or_insert(0) += v;
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

    /// Streams `paths` in chunks and counts them on every thread of the current rayon pool.
    pub fn add_files(
        &mut self,
        paths: &[PathBuf],
        pattern: &Pattern,
        specials: &Specials,
        policy: Utf8Policy,
        progress: bool,
    ) -> Result<()> {
        let bar = Bar::new(progress, "pretokenize", Some(total_size(paths)?), true);
        let cutter = Cutter { pattern, specials };
        // A chunk per thread and the one being read, at most; larger ones are not kept.
        let spare = Pool::new(rayon::current_num_threads() + 1, 4 * CHUNK_BYTES);
        // Each input opened as the readers reach it; compressed ones among the next few are
        // decompressed ahead on threads of their own (`ahead`), not one at a time under the lock.
        let mut inputs = Inputs::new(paths, rayon::current_num_threads());
        let spare = &spare;
        let chunks = paths.iter().enumerate().flat_map(move |(i, path)| {
            let chunks: Box<dyn Iterator<Item = Result<Chunk>> + Send> = match inputs.open(i) {
                Ok(input) => Box::new(ChunkReader::new(path, input, cutter, CHUNK_BYTES, spare)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            chunks
        });
        // One accumulator per thread, pulling chunks from a shared reader: memory is one map and
        // one chunk per thread, however many chunks the corpus has.
        let source = Mutex::new(chunks);
        let stop = AtomicBool::new(false);
        let parts: Vec<Result<PretokenCounts>> = rayon::broadcast(|_| {
            let mut acc = PretokenCounts::new();
            while !stop.load(Ordering::Relaxed) {
                let next = match source.lock() {
                    Ok(mut chunks) => chunks.next(),
                    Err(_) => None, // another worker panicked; rayon re-raises it
                };
                let Some(chunk) = next else { break };
                let size = chunk.as_ref().map_or(0, |c| c.bytes.len() as u64);
                let text = match chunk.and_then(|c| c.decode(policy)) {
                    Ok(text) => text,
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                acc.add_text(&text, pattern, specials);
                spare.give(text.into_bytes());
                acc.bytes += size; // input bytes, before any U+FFFD replacement
                bar.inc(size);
            }
            Ok(acc)
        });
        bar.finish();
        let parts = parts.into_iter().collect::<Result<Vec<_>>>()?;
        let merging = Bar::new(progress, "count", None, false);
        let counted = parts
            .into_par_iter()
            .reduce(PretokenCounts::new, |mut a, b| {
                a.merge(b);
                merging.inc(1);
                a
            });
        merging.finish();
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
        let long = "a".repeat(40);
        c.add_texts(std::slice::from_ref(&long), &pattern, &specials);
        let mut got = Vec::new();
        c.for_each(|k, v| got.push((k.to_vec(), v)));
        got.sort();
        let want = [(b" a".to_vec(), 1), (b" b".to_vec(), 2), (b"a".to_vec(), 2)];
        assert_eq!(got[..3], want);
        assert_eq!(got[3], (long.into_bytes(), 1));
        assert_eq!(c.total(), 6);
        assert_eq!(c.len(), 4);
    }
}
