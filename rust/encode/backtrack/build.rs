//! Building the backtracking tables from a vocabulary, once, in `Vocab::new`.
//!
//! Each merged token's bytes are encoded by the rank rule (a small quadratic loop: tokens are
//! short), which says whether the token encodes to itself and, if it does, which two tokens its
//! last merge joined: its split, the edge of the merge tree that `Backtracks::is_valid_pair`
//! walks down. Tokens that do not encode to themselves can never be output, so they are left
//! out of the trie. The validity walk orders merges by rank, which is only right when every
//! split's parts rank below the token; if any does not, there are no tables and the encoder
//! keeps the heap-based merge.

use super::{Backtracks, NONE};
use crate::encode::trie::Trie;
use crate::vocab::Vocab;

impl Backtracks {
    /// The tables for `vocab`, or `None` when its merge trees are not rank-ordered (or it is too
    /// large to number its tokens in `u32`).
    pub fn build(vocab: &Vocab) -> Option<Backtracks> {
        let n = u32::try_from(256 + vocab.merges().len())
            .ok()
            .filter(|&n| n < NONE)?;
        let mut ids: Vec<u32> = (0..=255u8).map(|b| vocab.byte_id(b)).collect();
        ids.extend((0..n - 256).map(|r| vocab.merge_result(r)));
        let mut lens = Vec::with_capacity(n as usize);
        let mut splits: Vec<(u32, u32)> = (0..256).map(|b| (b, b)).collect();
        splits.resize(n as usize, (NONE, NONE));
        let mut encoder = TokenEncoder::default();
        for k in 0..n {
            let bytes = vocab.token_bytes(ids[k as usize])?;
            lens.push(u32::try_from(bytes.len()).ok()?);
            if k < 256 {
                continue;
            }
            if let Some((left, right)) = encoder.last_merge(vocab, &ids, bytes) {
                if left >= k || right >= k {
                    return None;
                }
                splits[k as usize] = (left, right);
            }
        }
        let entries = (0..n)
            .filter(|&k| splits[k as usize].0 != NONE)
            .filter_map(|k| Some((vocab.token_bytes(ids[k as usize])?, k)))
            .collect();
        let trie = Trie::new(entries);
        let shorter = (0..n as usize)
            .map(|k| {
                let bytes = vocab.token_bytes(ids[k]).unwrap_or_default();
                trie.prefixes(bytes)
                    .take_while(|&(_, len)| len < bytes.len())
                    .last()
                    .map_or(NONE, |(value, _)| value)
            })
            .collect();
        Some(Backtracks {
            trie,
            ids,
            lens,
            splits,
            shorter,
        })
    }
}

/// The rank rule on one token's bytes, with its buffers kept from token to token.
#[derive(Default)]
struct TokenEncoder {
    /// Parts, as token numbers (`k`: byte `b` is `b`, merge `r` is `256 + r`).
    parts: Vec<u32>,
    /// `joins[i]`: the number of the token that parts `i` and `i + 1` form, or `NONE`.
    joins: Vec<u32>,
}

impl TokenEncoder {
    /// The two parts the last merge joined, if `bytes` (two or more) encodes to one token.
    fn last_merge(&mut self, vocab: &Vocab, ids: &[u32], bytes: &[u8]) -> Option<(u32, u32)> {
        let join = |a: u32, b: u32| {
            vocab
                .joined(ids[a as usize], ids[b as usize])
                .map_or(NONE, |(rank, _)| rank.saturating_add(256))
        };
        self.parts.clear();
        self.parts.extend(bytes.iter().map(|&b| u32::from(b)));
        self.joins.clear();
        self.joins
            .extend(self.parts.windows(2).map(|w| join(w[0], w[1])));
        let mut last = None;
        // Lowest number first, leftmost on ties (`min_by_key` keeps the first minimum).
        while let Some((i, &k)) = (self.joins.iter().enumerate())
            .min_by_key(|&(_, &k)| k)
            .filter(|&(_, &k)| k != NONE)
        {
            last = Some((self.parts[i], self.parts[i + 1]));
            self.parts[i] = k;
            self.parts.remove(i + 1);
            self.joins.remove(i);
            if i + 1 < self.parts.len() {
                self.joins[i] = join(k, self.parts[i + 1]);
            }
            if i > 0 {
                self.joins[i - 1] = join(self.parts[i - 1], k);
            }
        }
        (self.parts.len() == 1).then_some(last).flatten()
    }
}
