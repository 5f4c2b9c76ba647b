//! Merging one pretoken into tokens, by tiktoken's rule: repeatedly join the adjacent pair
//! whose concatenation is the lowest-ranked merged token, leftmost on ties, until no adjacent
//! pair forms a token.
//!
//! Short pieces (nearly all of natural text) use the direct loop, which is quadratic but tiny.
//! Long pieces (a 1 MB run of one letter is a single pretoken) keep a linked list of parts and
//! their candidate joins in one bucket per rank, with a min-heap over the few distinct ranks (not
//! over the many positions). Each merge takes the leftmost candidate of the lowest rank and adds
//! at most two new candidates; an entry is checked against the current parts when taken (lazy
//! invalidation). New candidates mostly arrive in position order, so a bucket is sorted only when
//! one arrives out of order; in the common case every step is O(1).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::vocab::Vocab;

/// Pieces up to this many bytes use the direct loop.
const SHORT: usize = 48;

/// Appends the token ids of `piece` to `out`.
pub fn merge_piece(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    match piece {
        [] => {}
        [b] => out.push(vocab.byte_id(*b)),
        _ => {
            if let Some((_, id)) = vocab.merged(piece) {
                out.push(id);
            } else if piece.len() <= SHORT {
                merge_short(vocab, piece, out);
            } else {
                merge_long(vocab, piece, out);
            }
        }
    }
}

fn rank(vocab: &Vocab, bytes: &[u8]) -> u32 {
    vocab.merged(bytes).map_or(u32::MAX, |(rank, _)| rank)
}

fn push_part(vocab: &Vocab, part: &[u8], out: &mut Vec<u32>) {
    out.push(match part {
        [b] => vocab.byte_id(*b),
        // Every part is a byte or the result of a merge, so the lookup succeeds.
        _ => vocab.merged(part).map_or(u32::MAX, |(_, id)| id),
    });
}

/// The direct loop, on the stack: `bounds[i]..bounds[i + 1]` are the parts, `ranks[i]` the rank
/// of joining parts `i` and `i + 1`.
fn merge_short(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    let mut bounds = [0u8; SHORT + 1];
    let mut ranks = [u32::MAX; SHORT];
    let mut parts = piece.len();
    for (i, b) in bounds.iter_mut().enumerate().take(parts + 1) {
        *b = i as u8;
    }
    let rank_at = |bounds: &[u8], parts: usize, i: usize| {
        if i + 1 < parts {
            rank(vocab, &piece[bounds[i] as usize..bounds[i + 2] as usize])
        } else {
            u32::MAX
        }
    };
    for (i, r) in ranks.iter_mut().enumerate().take(parts) {
        *r = rank_at(&bounds, parts, i);
    }
    loop {
        let (mut best, mut r) = (0, u32::MAX);
        for (i, &candidate) in ranks[..parts].iter().enumerate() {
            if candidate < r {
                (best, r) = (i, candidate);
            }
        }
        if r == u32::MAX {
            break;
        }
        // Join parts `best` and `best + 1`.
        bounds.copy_within(best + 2..parts + 1, best + 1);
        ranks.copy_within(best + 2..parts, best + 1);
        parts -= 1;
        ranks[best] = rank_at(&bounds, parts, best);
        if best > 0 {
            ranks[best - 1] = rank_at(&bounds, parts, best - 1);
        }
    }
    for w in bounds[..parts + 1].windows(2) {
        push_part(vocab, &piece[w[0] as usize..w[1] as usize], out);
    }
}

/// Candidate joins of one rank: start offsets of their left parts. `items[read..]` are pending;
/// `sorted` says whether they are in increasing order.
#[derive(Default)]
struct Bucket {
    items: Vec<u32>,
    read: usize,
    sorted: bool,
}

/// Pending candidates by rank, taken lowest rank first and leftmost within a rank.
#[derive(Default)]
struct Candidates {
    buckets: FxHashMap<u32, Bucket>,
    ranks: BinaryHeap<Reverse<u32>>,
}

impl Candidates {
    fn push(&mut self, rank: u32, start: u32) {
        let bucket = self.buckets.entry(rank).or_default();
        if bucket.read == bucket.items.len() {
            bucket.items.clear();
            bucket.read = 0;
            bucket.sorted = true;
            self.ranks.push(Reverse(rank));
        } else if bucket.items.last().is_some_and(|&last| last > start) {
            bucket.sorted = false;
        }
        bucket.items.push(start);
    }

    /// The lowest-ranked, leftmost pending candidate.
    fn pop(&mut self) -> Option<(u32, u32)> {
        loop {
            let &Reverse(rank) = self.ranks.peek()?;
            let bucket = self.buckets.get_mut(&rank)?;
            if bucket.read == bucket.items.len() {
                self.ranks.pop();
                continue;
            }
            if !bucket.sorted {
                bucket.items[bucket.read..].sort_unstable();
                bucket.sorted = true;
            }
            let start = bucket.items[bucket.read];
            bucket.read += 1;
            return Some((rank, start));
        }
    }
}

/// The long-piece version. Parts are identified by their start offset; `next[s]` is the start of
/// the part after the one starting at `s` (`n` at the end). A candidate `(rank, s)` proposes
/// joining the part at `s` with its successor; it is current iff `s` still starts a part with a
/// successor and their join still has that rank.
fn merge_long(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    let n = piece.len();
    let mut next: Vec<u32> = (1..=n as u32).collect();
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    // The token id of each part, and a memo of (left id, right id) -> (rank, id) of their join:
    // long pieces repeat the same few pairs, so most lookups skip hashing the joined bytes.
    let mut ids: Vec<u32> = piece.iter().map(|&b| vocab.byte_id(b)).collect();
    let mut memo: FxHashMap<u64, (u32, u32)> = FxHashMap::default();
    let mut join = |next: &[u32], ids: &[u32], s: usize| -> (u32, u32) {
        let m = next[s] as usize;
        if m >= n {
            return (u32::MAX, u32::MAX);
        }
        let key = u64::from(ids[s]) << 32 | u64::from(ids[m]);
        *memo.entry(key).or_insert_with(|| {
            vocab
                .merged(&piece[s..next[m] as usize])
                .unwrap_or((u32::MAX, u32::MAX))
        })
    };
    let mut candidates = Candidates::default();
    for s in 0..n {
        let (r, _) = join(&next, &ids, s);
        if r != u32::MAX {
            candidates.push(r, s as u32);
        }
    }
    while let Some((r, s)) = candidates.pop() {
        let s = s as usize;
        if !alive[s] {
            continue;
        }
        let (current, id) = join(&next, &ids, s);
        if current != r {
            continue;
        }
        // Join the part at `s` with its successor `m`.
        let m = next[s] as usize;
        alive[m] = false;
        ids[s] = id;
        next[s] = next[m];
        if (next[s] as usize) < n {
            prev[next[s] as usize] = s as u32;
        }
        for candidate in [Some(s), (s > 0).then(|| prev[s] as usize)]
            .into_iter()
            .flatten()
        {
            let (r, _) = join(&next, &ids, candidate);
            if r != u32::MAX {
                candidates.push(r, candidate as u32);
            }
        }
    }
    let mut s = 0;
    while s < n {
        out.push(ids[s]);
        s = next[s] as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary with merges over {a, b}: (a,a), (a,b), (aa,aa), (b,a), (ab,ab), (aa,b).
    fn vocab() -> Vocab {
        let mut tokens: FxHashMap<u32, Vec<u8>> =
            (0..=255u8).map(|b| (u32::from(b), vec![b])).collect();
        let merges: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"a"),
            (b"a", b"b"),
            (b"aa", b"aa"),
            (b"b", b"a"),
            (b"ab", b"ab"),
            (b"aa", b"b"),
        ];
        let mut pairs = Vec::new();
        for (i, (l, r)) in merges.iter().enumerate() {
            tokens.insert(256 + i as u32, [*l, *r].concat());
            pairs.push((l.to_vec(), r.to_vec()));
        }
        Vocab::new(tokens, pairs, vec![]).unwrap()
    }

    /// The textbook loop, as plain as it gets.
    fn reference(vocab: &Vocab, piece: &[u8]) -> Vec<u32> {
        let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
        loop {
            let best = (0..parts.len().saturating_sub(1))
                .map(|i| (rank(vocab, &[&parts[i][..], &parts[i + 1][..]].concat()), i))
                .filter(|&(r, _)| r != u32::MAX)
                .min();
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend(right);
        }
        let mut out = Vec::new();
        for p in parts {
            push_part(vocab, &p, &mut out);
        }
        out
    }

    #[test]
    fn long_and_short_merges_agree_with_the_reference() {
        let v = vocab();
        let mut state = 7u64;
        for len in 2..200 {
            for _ in 0..5 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        [b'a', b'a', b'b', b'c'][(state >> 62) as usize]
                    })
                    .collect();
                let expected = reference(&v, &piece);
                let mut long = Vec::new();
                merge_long(&v, &piece, &mut long);
                assert_eq!(long, expected, "{:?}", String::from_utf8_lossy(&piece));
                if len <= SHORT {
                    let mut short = Vec::new();
                    merge_short(&v, &piece, &mut short);
                    assert_eq!(short, expected, "{:?}", String::from_utf8_lossy(&piece));
                }
            }
        }
    }

    #[test]
    fn repeated_letters() {
        let v = vocab();
        let mut out = Vec::new();
        merge_piece(&v, &[b'a'; 1001], &mut out);
        // (a,a) then (aa,aa): 250 "aaaa" tokens and one "a".
        assert_eq!(out.len(), 251);
        assert_eq!(out[..250], [258; 250]);
        assert_eq!(out[250], u32::from(b'a'));
    }
}
