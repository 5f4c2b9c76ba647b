//! The corpus as the merge loop sees it: every unique pretoken as a sequence of token ids with
//! its count, packed into one `u32` arena.
//!
//! Each word is `[len, count_lo, count_hi, symbols...]`, with room for its initial length
//! (merges only shorten it). A word is named by its offset, so visiting it during a merge is one
//! cache miss instead of two (a `Vec` header, then its heap buffer): the merge loop is bound by
//! exactly those misses.

use crate::error::{Error, Result};

/// A pair of adjacent token ids.
pub type Pair = (u32, u32);

const HEADER: usize = 3;

/// All words, packed.
pub struct Words {
    data: Vec<u32>,
    starts: Vec<u32>,
}

impl Words {
    pub fn with_capacity(words: usize, symbols: usize) -> Self {
        Words {
            data: Vec::with_capacity(symbols + HEADER * words),
            starts: Vec::with_capacity(words),
        }
    }

    /// Appends a word made of `bytes` (one symbol per byte) occurring `count` times.
    pub fn push(&mut self, bytes: &[u8], count: u64) -> Result<()> {
        let start = u32::try_from(self.data.len())
            .ok()
            .filter(|&s| s as usize + HEADER + bytes.len() <= u32::MAX as usize)
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "the corpus has more unique pretoken bytes than the trainer's 32-bit \
                     arena can index (4 G); train on a sample"
                        .into(),
                )
            })?;
        self.starts.push(start);
        self.data.push(bytes.len() as u32);
        self.data.push(count as u32);
        self.data.push((count >> 32) as u32);
        self.data.extend(bytes.iter().map(|&b| u32::from(b)));
        Ok(())
    }

    /// Offsets of all words, in insertion order.
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Count and current symbols of the word at `start`.
    #[inline]
    pub fn get(&self, start: u32) -> (u64, &[u32]) {
        let s = start as usize;
        let len = self.data[s] as usize;
        let count = u64::from(self.data[s + 1]) | u64::from(self.data[s + 2]) << 32;
        (count, &self.data[s + HEADER..s + HEADER + len])
    }

    /// Disjoint mutable views of the words at `starts`, which must be ascending and distinct.
    pub fn views_mut(&mut self, starts: &[u32]) -> Vec<WordMut<'_>> {
        let total = self.data.len();
        let mut rest: &mut [u32] = &mut self.data;
        let mut base = 0;
        let mut views = Vec::with_capacity(starts.len());
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(total, |&next| next as usize);
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start as usize - base);
            let (data, tail) = tail.split_at_mut(end - start as usize);
            views.push(WordMut { start, data });
            rest = tail;
            base = end;
        }
        views
    }

    /// Merges `pair` into `new` in the word at `start`; see `merge_symbols`.
    #[inline]
    pub fn merge(&mut self, start: u32, pair: Pair, new: u32, on_pair: impl FnMut(Pair, bool)) {
        let s = start as usize;
        let len = self.data[s] as usize;
        let symbols = &mut self.data[s + HEADER..s + HEADER + len];
        self.data[s] = merge_symbols(symbols, pair, new, on_pair) as u32;
    }
}

/// Mutable access to one word, for merging many words in parallel (see `Words::views_mut`).
pub struct WordMut<'a> {
    /// The word's offset, its name in the pair index.
    pub start: u32,
    /// The word's header and symbols (and possibly unused space after them).
    data: &'a mut [u32],
}

impl WordMut<'_> {
    #[inline]
    pub fn count(&self) -> u64 {
        u64::from(self.data[1]) | u64::from(self.data[2]) << 32
    }

    /// Merges `pair` into `new`; see `merge_symbols`.
    #[inline]
    pub fn merge(&mut self, pair: Pair, new: u32, on_pair: impl FnMut(Pair, bool)) {
        let len = self.data[0] as usize;
        let symbols = &mut self.data[HEADER..HEADER + len];
        self.data[0] = merge_symbols(symbols, pair, new, on_pair) as u32;
    }
}

/// Replaces every non-overlapping `(a, b)` in `symbols`, left to right, by `new`, reporting each
/// adjacent pair that disappears (`on_pair(pair, false)`) or appears (`on_pair(pair, true)`).
/// Returns the new length; the merged word is `symbols[..len]`.
///
/// Only pairs touching a merge site change; the rest map one-to-one onto themselves and are not
/// reported. Between two adjacent merge sites (`a b a b`), the pair `(b, a)` is removed once (as
/// the left pair of the second site) and `(new, new)` added once.
pub fn merge_symbols(
    symbols: &mut [u32],
    (a, b): Pair,
    new: u32,
    mut on_pair: impl FnMut(Pair, bool),
) -> usize {
    let n = symbols.len();
    let (mut read, mut write) = (0, 0);
    // The old symbol before `read`: `symbols[read - 1]` may already be overwritten.
    let mut last_old: Option<u32> = None;
    while read < n {
        if read + 1 < n && symbols[read] == a && symbols[read + 1] == b {
            let next_merges = read + 3 < n && symbols[read + 2] == a && symbols[read + 3] == b;
            if let Some(x) = last_old {
                on_pair((x, a), false);
            }
            on_pair((a, b), false);
            if write > 0 {
                on_pair((symbols[write - 1], new), true);
            }
            if read + 2 < n && !next_merges {
                let y = symbols[read + 2];
                on_pair((b, y), false);
                on_pair((new, y), true);
            }
            symbols[write] = new;
            last_old = Some(b);
            read += 2;
        } else {
            last_old = Some(symbols[read]);
            symbols[write] = symbols[read];
            read += 1;
        }
        write += 1;
    }
    write
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn arena_round_trips_words() {
        let mut w = Words::with_capacity(2, 5);
        w.push(b"abc", 7).unwrap();
        w.push(b"de", 1 << 40).unwrap();
        let starts = w.starts().to_vec();
        assert_eq!(w.get(starts[0]), (7, &[97, 98, 99][..]));
        assert_eq!(w.get(starts[1]), (1 << 40, &[100, 101][..]));
        w.merge(starts[0], (97, 98), 300, |_, _| ());
        assert_eq!(w.get(starts[0]).1, &[300, 99]);
        let mut views = w.views_mut(&starts);
        assert_eq!(views[1].count(), 1 << 40);
        views[1].merge((100, 101), 301, |_, _| ());
        assert_eq!(w.get(starts[1]), (1 << 40, &[301][..]));
    }

    #[test]
    fn merge_reports_exactly_the_changed_pairs() {
        // Every word over {0, 1, 2} up to length 7, every pair: the reported removals and
        // additions must equal the multiset difference of all old and all new pairs.
        fn pairs(s: &[u32]) -> Vec<Pair> {
            s.windows(2).map(|p| (p[0], p[1])).collect()
        }
        for len in 0..=7u32 {
            for code in 0..3u32.pow(len) {
                let word: Vec<u32> = (0..len).map(|i| code / 3u32.pow(i) % 3).collect();
                for pair in [(0, 0), (0, 1), (1, 0)] {
                    let mut merged = word.clone();
                    let mut delta: FxHashMap<Pair, i64> = FxHashMap::default();
                    let n = merge_symbols(&mut merged, pair, 9, |q, appears| {
                        *delta.entry(q).or_insert(0) += if appears { 1 } else { -1 };
                    });
                    merged.truncate(n);
                    let mut expected: FxHashMap<Pair, i64> = FxHashMap::default();
                    for q in pairs(&word) {
                        *expected.entry(q).or_insert(0) -= 1;
                    }
                    for q in pairs(&merged) {
                        *expected.entry(q).or_insert(0) += 1;
                    }
                    delta.retain(|_, d| *d != 0);
                    expected.retain(|_, d| *d != 0);
                    assert_eq!(delta, expected, "{word:?} {pair:?}");
                    let occurrences = word.len() - n;
                    assert_eq!(merged.iter().filter(|&&s| s == 9).count(), occurrences);
                }
            }
        }
    }
}
