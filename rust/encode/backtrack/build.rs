//! Building the backtracking tables from a vocabulary, once, in `Vocab::new`.
//!
//! Each merged token needs to know whether its bytes encode to itself by the rank rule and, if
//! they do, which two tokens the last merge joined: its split, the edge of the merge tree that
//! `stands` walks down. In rank order, a token's own merge is checked first with that same walk
//! (nearly always the answer); only when it fails are the token's bytes encoded in full (a small
//! quadratic loop: tokens are short). Tokens that do not encode to themselves can never be
//! output, so they are left out of the trie. The walk orders merges by rank, which is only
//! right when every split's parts rank below the token; if any does not, there are no tables
//! and the encoder keeps the heap-based merge.

use rustc_hash::FxHashMap;

use super::{pairs, stands, Backtracks, Pairs, Token, NONE, SMALL};
use crate::encode::trie::Trie;
use crate::vocab::Vocab;

impl Backtracks {
    /// The tables for `vocab`, or `None` when its merge trees are not rank-ordered (or it is too
    /// large to number its tokens in 21 bits, `pairs::NUMBER_BITS`).
    pub fn build(vocab: &Vocab) -> Option<Backtracks> {
        let n = u32::try_from(256 + vocab.merges().len())
            .ok()
            .filter(|&n| n <= 1 << pairs::NUMBER_BITS)?;
        let mut ids: Vec<u32> = (0..=255u8).map(|b| vocab.byte_id(b)).collect();
        ids.extend((0..n - 256).map(|r| vocab.merge_result(r)));
        let bytes = ids
            .iter()
            .map(|&id| vocab.token_bytes(id))
            .collect::<Option<Vec<&[u8]>>>()?;
        let splits = splits(vocab, &ids, &bytes)?;
        let entries = (0..n)
            .filter(|&k| splits[k as usize].0 != NONE)
            .map(|k| (bytes[k as usize], k))
            .collect();
        let (trie, prefixes) = Trie::new(entries);
        let mut shorter = vec![NONE; n as usize];
        for (k, prefix) in prefixes {
            shorter[k as usize] = prefix;
        }
        let tokens = (bytes.iter().zip(&splits).zip(shorter))
            .map(|((b, &split), shorter)| {
                let len = u32::try_from(b.len()).ok()?;
                Some(Token {
                    len,
                    shorter,
                    split,
                })
            })
            .collect::<Option<Vec<Token>>>()?;
        let pairs: Vec<(u32, u32, u32)> = (256..n)
            .filter(|&k| splits[k as usize].0 != NONE)
            .map(|k| (splits[k as usize].0, splits[k as usize].1, k))
            .collect();
        let pairs = Pairs::new(&pairs)?;
        let small = small_pairs(&tokens);
        Some(Backtracks {
            trie,
            ids,
            tokens,
            pairs,
            small,
        })
    }
}

/// The validity bits of the pairs of tokens numbered below `SMALL` (`Backtracks::small`;
/// pairs with a token that does not encode to itself, never placed, stay 0). Those tokens'
/// merge trees stay below `SMALL`, so the walks need only the joins among them: a dense
/// `SMALL × SMALL` table (512 KiB, for this build only) makes the 2^18 walks take a few
/// milliseconds, where the hashed table of all joins took ~20 (GPT-2's ranks).
fn small_pairs(tokens: &[Token]) -> Box<[u64]> {
    let s = SMALL as usize;
    // The token that `x`, `y` form, capped at `SMALL`: the walk only asks whether it is below a
    // limit of at most `SMALL` (or forms at all).
    let mut joins = vec![u16::MAX; s * s];
    for (k, t) in tokens.iter().enumerate().skip(256) {
        let (a, b) = (t.split.0 as usize, t.split.1 as usize);
        if t.split.0 != NONE && a < s && b < s {
            joins[a * s + b] = k.min(s) as u16;
        }
    }
    let join = |x: u32, y: u32| {
        let c = joins[x as usize * s + y as usize];
        (c != u16::MAX).then_some(u32::from(c))
    };
    let split = |t: u32| tokens[t as usize].split;
    let placed = |t: &u32| tokens[*t as usize].split.0 != NONE;
    let small = SMALL.min(tokens.len() as u32);
    let mut bits = vec![0u64; s * s / 64].into_boxed_slice();
    for a in (0..small).filter(placed) {
        for b in (0..small).filter(placed) {
            if stands(join, split, a, b, NONE) {
                let bit = a as usize * s + b as usize;
                bits[bit / 64] |= 1 << (bit % 64);
            }
        }
    }
    bits
}

/// Each token's split (`(NONE, NONE)`: it does not encode to itself), or `None` if a split's
/// part ranks at or after the token. Most tokens are checked in one walk: a token encodes to
/// itself by its own merge `(l, r)` if `l` and `r` do and BPE on their bytes reaches `l`, `r`
/// before the merge's own rank (`stands`). Only the others are encoded in full.
fn splits(vocab: &Vocab, ids: &[u32], bytes: &[&[u8]]) -> Option<Vec<(u32, u32)>> {
    let mut number = vec![NONE; usize::try_from(vocab.n_vocab()).ok()?];
    for (k, &id) in ids.iter().enumerate() {
        *number.get_mut(id as usize)? = k as u32;
    }
    let mut splits: Vec<(u32, u32)> = (0..256).map(|b| (b, b)).collect();
    let mut encoder = TokenEncoder::default();
    // The splits found so far, as the walk's joins (as in encoding, the splits are all the
    // joins it needs, and it only counts joins ranked below `k`, all of them known by then).
    let mut joins: FxHashMap<u64, u32> = FxHashMap::default();
    joins.reserve(vocab.merges().len());
    for (r, &(l, right)) in vocab.merges().iter().enumerate() {
        let k = 256 + r as u32;
        let (l, right) = (number[l as usize], number[right as usize]);
        let known = |t: u32| t < k && splits[t as usize].0 != NONE;
        let join = |x: u32, y: u32| joins.get(&(u64::from(x) << 32 | u64::from(y))).copied();
        let split = if known(l) && known(right) && stands(join, |t| splits[t as usize], l, right, k)
        {
            Some((l, right))
        } else {
            encoder.last_merge(vocab, ids, bytes[k as usize])
        };
        match split {
            Some((a, b)) if a >= k || b >= k => return None,
            Some((a, b)) => {
                splits.push((a, b));
                joins.insert(u64::from(a) << 32 | u64::from(b), k);
            }
            None => splits.push((NONE, NONE)),
        }
    }
    Some(splits)
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
