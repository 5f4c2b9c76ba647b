//! The BPE merge loop.
//!
//! Words (unique pretokens as symbol sequences, with counts) are merged in place. We keep the
//! count of every adjacent pair, an index from each pair to the words that contain it, and a
//! max-heap of pairs with lazy invalidation: a popped entry whose count is stale is pushed back
//! with its current count. A merge touches only the words that contain the merged pair, so a
//! whole run costs about the corpus's unique-pretoken length times a hash lookup, not a full
//! recount per merge.
//!
//! Order: most frequent pair first; among equal counts the lexicographically greatest pair of
//! byte strings `(bytes_left, bytes_right)` wins, as Python's `max` over such tuples would pick.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::error::Result;
use crate::progress::Bar;

use super::words::{Pair, Words};

/// The learned merges.
pub struct Merges {
    /// Bytes of every token, ids 0..=255 being the single bytes.
    pub token_bytes: Vec<Vec<u8>>,
    /// `(left, right)` ids of each merge; merge `i` creates token `256 + i`.
    pub merges: Vec<Pair>,
    /// True when the corpus ran out of pairs before `n_merges` were learned.
    pub exhausted: bool,
}

struct Entry {
    count: u64,
    pair: Pair,
    left: Arc<[u8]>,
    right: Arc<[u8]>,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| self.left.cmp(&other.left))
            .then_with(|| self.right.cmp(&other.right))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

type PairStats = (FxHashMap<Pair, u64>, FxHashMap<Pair, Vec<u32>>);

/// Counts every adjacent pair and indexes which words hold it (in parallel on the current pool).
fn index_pairs(words: &Words) -> PairStats {
    words
        .starts()
        .par_iter()
        .fold(PairStats::default, |(mut counts, mut index), &start| {
            let (count, symbols) = words.get(start);
            let mut pairs: Vec<Pair> = symbols.windows(2).map(|p| (p[0], p[1])).collect();
            for &pair in &pairs {
                *counts.entry(pair).or_insert(0) += count;
            }
            // A word is listed once per pair even when the pair repeats in it.
            pairs.sort_unstable();
            pairs.dedup();
            for pair in pairs {
                index.entry(pair).or_default().push(start);
            }
            (counts, index)
        })
        .reduce(PairStats::default, |(mut c1, mut i1), (c2, i2)| {
            for (k, v) in c2 {
                *c1.entry(k).or_insert(0) += v;
            }
            for (k, mut v) in i2 {
                i1.entry(k).or_default().append(&mut v);
            }
            (c1, i1)
        })
}

/// Merges with at least this many candidate words are applied in parallel.
const PARALLEL_WORDS: usize = 4096;

/// Adds `delta` to the count of `pair`, dropping pairs that reach zero.
#[inline]
fn apply_delta(counts: &mut FxHashMap<Pair, u64>, pair: Pair, delta: i128) {
    let c = counts.entry(pair).or_insert(0);
    // Exact: a word only ever loses pairs it holds, so no total goes below zero.
    debug_assert!(i128::from(*c) + delta >= 0);
    *c = u64::try_from(i128::from(*c) + delta).unwrap_or(0);
    if *c == 0 {
        counts.remove(&pair);
    }
}

type Appeared = Vec<(Pair, u32)>;

/// Merges `pair` in the words at `starts` (ascending, distinct) on the current pool. Returns the
/// net change of every pair count and, for each word, the new pairs that appeared in it.
fn merge_parallel(
    words: &mut Words,
    starts: &[u32],
    pair: Pair,
    new: u32,
) -> (FxHashMap<Pair, i128>, Appeared) {
    words
        .views_mut(starts)
        .into_par_iter()
        .fold(
            <(FxHashMap<Pair, i128>, Appeared)>::default,
            |(mut delta, mut appeared), mut w| {
                let (count, start) = (i128::from(w.count()), w.start);
                let first = appeared.len();
                w.merge(pair, new, |q, appears| {
                    *delta.entry(q).or_insert(0) += if appears { count } else { -count };
                    if appears && !appeared[first..].iter().any(|&(p, _)| p == q) {
                        appeared.push((q, start));
                    }
                });
                (delta, appeared)
            },
        )
        .reduce(Default::default, |(mut d1, mut a1), (d2, mut a2)| {
            for (q, d) in d2 {
                *d1.entry(q).or_insert(0) += d;
            }
            a1.append(&mut a2);
            (d1, a1)
        })
}

/// Learns up to `n_merges` merges from `words`, indexing pairs on `pool`. `check` runs every few
/// hundred merges and may stop the loop with an error (the Python bindings use it for Ctrl-C).
pub fn learn_merges(
    mut words: Words,
    n_merges: usize,
    pool: &rayon::ThreadPool,
    bar: &Bar,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Merges> {
    let mut token_bytes: Vec<Arc<[u8]>> = (0..=255u8).map(|b| Arc::from(vec![b])).collect();
    let (mut counts, mut index) = pool.install(|| index_pairs(&words));
    let entry = |count, pair: Pair, tb: &[Arc<[u8]>]| Entry {
        count,
        pair,
        left: tb[pair.0 as usize].clone(),
        right: tb[pair.1 as usize].clone(),
    };
    let mut heap: BinaryHeap<Entry> = counts
        .iter()
        .map(|(&p, &c)| entry(c, p, &token_bytes))
        .collect();
    let mut merges = Vec::with_capacity(n_merges);
    let mut new_pairs: Vec<Pair> = Vec::new();
    let mut touched: Vec<Pair> = Vec::new();
    while merges.len() < n_merges {
        let Some(top) = heap.pop() else { break };
        let current = counts.get(&top.pair).copied().unwrap_or(0);
        if current != top.count {
            if current > 0 {
                heap.push(entry(current, top.pair, &token_bytes));
            }
            continue;
        }
        let pair = top.pair;
        let new = token_bytes.len() as u32;
        token_bytes.push([&top.left[..], &top.right[..]].concat().into());
        merges.push(pair);
        touched.clear();
        // Words listed for `pair` that no longer hold it (the index is never pruned) report
        // nothing from `merge`.
        let mut list = index.remove(&pair).unwrap_or_default();
        if list.len() >= PARALLEL_WORDS && pool.current_num_threads() > 1 {
            list.sort_unstable();
            list.dedup();
            let (delta, appeared) = pool.install(|| merge_parallel(&mut words, &list, pair, new));
            for (q, d) in delta {
                apply_delta(&mut counts, q, d);
            }
            for (q, wi) in appeared {
                index.entry(q).or_default().push(wi);
                touched.push(q);
            }
        } else {
            for &wi in &list {
                let count = words.get(wi).0;
                new_pairs.clear();
                words.merge(wi, pair, new, |q, appears| {
                    if appears {
                        *counts.entry(q).or_insert(0) += count;
                        if !new_pairs.contains(&q) {
                            new_pairs.push(q);
                        }
                    } else {
                        apply_delta(&mut counts, q, -i128::from(count));
                    }
                });
                for &q in &new_pairs {
                    index.entry(q).or_default().push(wi);
                }
                touched.extend_from_slice(&new_pairs);
            }
        }
        // Only pairs holding `new` gained counts; all others only lost some, and their stale
        // heap entries are refreshed when popped.
        touched.sort_unstable();
        touched.dedup();
        for &q in &touched {
            if let Some(&c) = counts.get(&q) {
                heap.push(entry(c, q, &token_bytes));
            }
        }
        bar.inc(1);
        if merges.len() % 256 == 0 {
            check()?;
        }
    }
    let exhausted = merges.len() < n_merges;
    Ok(Merges {
        token_bytes: token_bytes.iter().map(|b| b.to_vec()).collect(),
        merges,
        exhausted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    fn words(list: &[(&str, u64)]) -> Words {
        let mut w = Words::with_capacity(list.len(), 0);
        for &(s, c) in list {
            w.push(s.as_bytes(), c).unwrap();
        }
        w
    }

    fn learn(list: &[(&str, u64)], n: usize) -> Vec<(String, String)> {
        let m = learn_merges(words(list), n, &pool(), &Bar::hidden(), &mut || Ok(())).unwrap();
        let s = |id: u32| String::from_utf8(m.token_bytes[id as usize].clone()).unwrap();
        m.merges.iter().map(|&(a, b)| (s(a), s(b))).collect()
    }

    #[test]
    fn most_frequent_then_greatest_pair() {
        // "ab" x3 vs "cd" x3: tie, ("c","d") > ("a","b").
        assert_eq!(
            learn(&[("ab", 3), ("cd", 3)], 2),
            [("c".into(), "d".into()), ("a".into(), "b".into())]
        );
        // Right byte decides when the left bytes are equal.
        assert_eq!(
            learn(&[("ab", 1), ("ac", 1)], 1),
            [("a".into(), "c".into())]
        );
    }

    #[test]
    fn overlapping_pairs_count_twice_and_merge_left_to_right() {
        // "aaa": (a,a) counted twice; merging gives [aa, a], then (aa, a).
        assert_eq!(
            learn(&[("aaa", 1)], 5),
            [("a".into(), "a".into()), ("aa".into(), "a".into())]
        );
    }

    #[test]
    fn parallel_merges_equal_serial_ones() {
        // Enough distinct words that the first merges take the parallel path.
        let mut state = 12345u64;
        let mut list = Vec::new();
        for i in 0..3 * PARALLEL_WORDS {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 2 + (state >> 60) as usize;
            let word: String = (0..len)
                .map(|j| b"aabbcab"[(i + j * 3 + (state >> 33) as usize) % 7] as char)
                .collect();
            list.push((format!("{word}{i}"), 1 + (state >> 62)));
        }
        let list: Vec<(&str, u64)> = list.iter().map(|(s, c)| (s.as_str(), *c)).collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            learn_merges(words(&list), 300, &pool, &Bar::hidden(), &mut || Ok(()))
                .unwrap()
                .merges
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn stops_when_pairs_run_out() {
        let m = learn_merges(
            words(&[("ab", 1)]),
            10,
            &pool(),
            &Bar::hidden(),
            &mut || Ok(()),
        )
        .unwrap();
        assert_eq!(m.merges.len(), 1);
        assert!(m.exhausted);
    }
}
