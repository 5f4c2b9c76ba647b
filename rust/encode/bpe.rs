//! Merging one pretoken into tokens, by tiktoken's rule: repeatedly join the adjacent pair
//! whose concatenation is the lowest-ranked merged token, leftmost on ties, until no adjacent
//! pair forms a token.
//!
//! Short pieces (nearly all of natural text) use the direct loop, which is quadratic but tiny.
//! Long pieces go to backtracking BPE (`backtrack`), linear; this module's heap-based merge is
//! for vocabularies without its tables and is the reference the backtracking is tested against.
//! The heap-based merge (a 1 MB run of one letter is a single pretoken) keeps a linked list of
//! parts over the piece's offsets and their candidate joins in one bucket per rank (a vector
//! indexed by rank), with a min-heap over the distinct ranks pending (not over the many positions).
//! Each merge takes the leftmost candidate of the lowest rank and adds at most two new candidates;
//! a candidate is current iff its rank is still the one stored at its offset (lazy invalidation,
//! one array read). New candidates mostly arrive in position order, so a bucket is sorted only when
//! one arrives out of order; in the common case every step is O(1).
//!
//! A long piece costs what its memory traffic costs, so the per-offset state is three `u32`
//! arrays (12 bytes a byte), reused per thread; the candidates about to be taken are prefetched
//! (a rank's candidates are spread over the whole piece); and joins are looked up by the parts'
//! ids in the vocabulary's join table (`Vocab::joined`), with no per-piece memo to fill.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::prefetch::prefetch;
use crate::vocab::Vocab;

/// Pieces up to this many bytes use the direct loop; longer ones backtracking BPE when the
/// vocabulary has its tables (`Vocab::backtracks`), else the heap-based merge. On random
/// letters with GPT-2's ranks the direct loop is the faster up to 48 bytes (28 against 32
/// ns/byte at 48; 52 against 35 at 64).
const SHORT: usize = 48;

/// Pieces up to this many bytes (most pieces of random text) use the direct loop on arrays
/// of this size: a piece's fixed cost is then not setting 48-element arrays.
const TINY: usize = 8;

/// Appends the token ids of `piece` to `out`.
pub fn merge_piece(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    match piece {
        [] => {}
        [b] => out.push(vocab.byte_id(*b)),
        _ => {
            if let Some((_, id)) = vocab.merged(piece) {
                out.push(id);
                return;
            }
            if piece.len() <= TINY {
                merge_short::<TINY>(vocab, piece, out);
            } else if piece.len() <= SHORT {
                merge_short::<SHORT>(vocab, piece, out);
            } else if !vocab
                .backtracks()
                .is_some_and(|tables| tables.encode(piece, out))
            {
                merge_long(vocab, piece, out);
            }
        }
    }
}

/// The direct loop, on the stack: `ids[i]` are the parts' token ids, `ranks[i]` and
/// `joined[i]` the rank and id of joining parts `i` and `i + 1` (`u32::MAX`: they form no token).
/// Joins are looked up by the parts' ids (`Vocab::joined`), one probe of one table each.
fn merge_short<const N: usize>(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    let mut ids = [0u32; N];
    let mut ranks = [u32::MAX; N];
    let mut joined = [u32::MAX; N];
    let mut parts = piece.len().min(N);
    for (i, &b) in piece.iter().take(parts).enumerate() {
        ids[i] = vocab.byte_id(b);
    }
    for i in 0..parts.saturating_sub(1) {
        if let Some((rank, id)) = vocab.merged_pair(piece[i], piece[i + 1]) {
            (ranks[i], joined[i]) = (rank, id);
        }
    }
    let join = |a: u32, b: u32| vocab.joined(a, b).unwrap_or((u32::MAX, u32::MAX));
    loop {
        // Slots from `parts - 1` on hold no join, so a tiny piece scans and shifts its whole
        // arrays: fixed-length loops, where `copy_within` was three `memmove` calls a merge.
        let scan = if N <= TINY { N } else { parts };
        let (mut best, mut r) = (0, u32::MAX);
        for (i, &candidate) in ranks[..scan].iter().enumerate() {
            if candidate < r {
                (best, r) = (i, candidate);
            }
        }
        if r == u32::MAX {
            break;
        }
        // Join parts `best` and `best + 1`.
        ids[best] = joined[best];
        if N <= TINY {
            for j in 1..N - 1 {
                if j > best {
                    ids[j] = ids[j + 1];
                    ranks[j] = ranks[j + 1];
                    joined[j] = joined[j + 1];
                }
            }
        } else {
            ids.copy_within(best + 2..parts, best + 1);
            ranks.copy_within(best + 2..parts, best + 1);
            joined.copy_within(best + 2..parts, best + 1);
        }
        parts -= 1;
        (ranks[best], joined[best]) = if best + 1 < parts {
            join(ids[best], ids[best + 1])
        } else {
            (u32::MAX, u32::MAX)
        };
        if best > 0 {
            (ranks[best - 1], joined[best - 1]) = join(ids[best - 1], ids[best]);
        }
    }
    if N <= TINY {
        // Element by element: a call to `memcpy` costs more than a few stores.
        out.reserve(N);
        for &id in &ids[..parts] {
            out.push(id);
        }
    } else {
        out.extend_from_slice(&ids[..parts]);
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

/// Pending candidates by rank, taken lowest rank first and leftmost within a rank. `buckets` is
/// indexed by rank; `used` lists the ranks whose bucket was filled during this piece, so the
/// buckets can be emptied (and trimmed) for the next one.
#[derive(Default)]
struct Candidates {
    buckets: Vec<Bucket>,
    ranks: BinaryHeap<Reverse<u32>>,
    used: Vec<u32>,
}

impl Candidates {
    fn push(&mut self, rank: u32, start: u32) {
        let bucket = &mut self.buckets[rank as usize];
        if bucket.read == bucket.items.len() {
            bucket.items.clear();
            bucket.read = 0;
            bucket.sorted = true;
            self.ranks.push(Reverse(rank));
            self.used.push(rank);
        } else if bucket.items.last().is_some_and(|&last| last > start) {
            bucket.sorted = false;
        }
        bucket.items.push(start);
    }

    /// The lowest-ranked, leftmost pending candidate, and the one `AHEAD` places after it in its
    /// bucket (likely taken soon, so worth fetching into the cache now).
    fn pop(&mut self) -> Option<(u32, u32, Option<u32>)> {
        loop {
            let &Reverse(rank) = self.ranks.peek()?;
            let bucket = &mut self.buckets[rank as usize];
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
            let ahead = bucket.items.get(bucket.read + AHEAD).copied();
            return Some((rank, start, ahead));
        }
    }

    /// Empties every bucket, keeping at most `KEEP` slots of each.
    fn reset(&mut self) {
        self.ranks.clear();
        for rank in self.used.drain(..) {
            let bucket = &mut self.buckets[rank as usize];
            bucket.items.clear();
            bucket.items.shrink_to(KEEP);
            bucket.read = 0;
        }
        self.used.shrink_to(KEEP);
    }
}

/// What a thread keeps between long pieces, so that a piece allocates nothing once the buffers
/// have grown; after each piece they are trimmed to `KEEP` elements.
#[derive(Default)]
struct Scratch {
    next: Vec<u32>,
    ids: Vec<u32>,
    joins: Vec<u32>,
    counts: Vec<u32>,
    candidates: Candidates,
}

impl Scratch {
    fn trim(&mut self) {
        for v in [&mut self.next, &mut self.ids, &mut self.joins] {
            v.clear();
            v.shrink_to(KEEP);
        }
        self.candidates.reset();
    }
}

const KEEP: usize = 1 << 16;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// How many candidates ahead of the one taken to fetch into the cache: a rank's candidates lie
/// all over a long piece, so without this nearly every one taken is a cache miss.
const AHEAD: usize = 8;

/// The long-piece version. Parts are identified by their start offset `s`: `next[s]` is the start
/// of the next part (`n` at the end), `ids[s]` the part's token id and `joins[s]` the rank of
/// joining it with its successor (`NONE` when they form no token, at the last part, and at
/// offsets inside a part). The slot `next[e]` of a part's last byte `e`, unused when the part is
/// longer than a byte, holds the part's start, so the part before `s` is found from `next[s - 1]`
/// without a fourth array (its memory, not its arithmetic, is what a long piece costs).
///
/// A candidate `(rank, s)` is current iff `joins[s] == rank`. The joined bytes at a given `s`
/// only ever grow (the part or its successor absorbs its neighbour), so each rank appears at `s`
/// at most once and a stale candidate never matches again.
pub fn merge_long(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>) {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        merge_long_with(vocab, piece, out, &mut scratch);
        scratch.trim();
    });
}

const NONE: u32 = u32::MAX;

fn merge_long_with(vocab: &Vocab, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
    let n = piece.len();
    let Scratch {
        next,
        ids,
        joins,
        counts,
        candidates,
    } = scratch;
    next.clear();
    next.extend(1..=n as u32);
    ids.clear();
    ids.extend(piece.iter().map(|&b| vocab.byte_id(b)));
    joins.clear();
    joins.extend(
        piece
            .windows(2)
            .map(|w| vocab.merged_pair(w[0], w[1]).map_or(NONE, |(r, _)| r)),
    );
    joins.push(NONE);
    let ranks = vocab.merges().len();
    if candidates.buckets.len() < ranks {
        candidates.buckets.resize_with(ranks, Bucket::default);
    }
    // Size each bucket for its first candidates before filling it (no regrowing and copying).
    // `counts` is all zeros between pieces.
    if counts.len() < ranks {
        counts.resize(ranks, 0);
    }
    for &r in joins.iter().filter(|&&r| r != NONE) {
        counts[r as usize] += 1;
    }
    for &r in joins.iter().filter(|&&r| r != NONE) {
        let count = std::mem::take(&mut counts[r as usize]);
        if count > 0 {
            candidates.buckets[r as usize].items.reserve(count as usize);
        }
    }
    for (s, &r) in joins.iter().enumerate() {
        if r != NONE {
            candidates.push(r, s as u32);
        }
    }
    // The rank of joining the part at `s` with its successor.
    let join = |next: &[u32], ids: &[u32], s: usize| -> u32 {
        let m = next[s] as usize;
        if m >= n {
            return NONE;
        }
        let after = next[m] as usize;
        let joined = if after == s + 2 {
            // Two single bytes: the vocabulary's two-byte table is smaller, so likelier cached.
            vocab.merged_pair(piece[s], piece[s + 1])
        } else {
            vocab.joined(ids[s], ids[m])
        };
        joined.map_or(NONE, |(r, _)| r)
    };
    while let Some((r, s, ahead)) = candidates.pop() {
        if let Some(a) = ahead {
            let a = a as usize;
            prefetch(&joins[a]);
            prefetch(&next[a]);
            prefetch(&ids[a]);
            if a > 0 {
                prefetch(&next[a - 1]);
            }
        }
        let s = s as usize;
        if joins[s] != r {
            continue;
        }
        // Join the part at `s` with its successor `m..after`; `after - 1` becomes the last byte
        // of the part at `s`.
        let m = next[s] as usize;
        let after = next[m];
        joins[m] = NONE;
        ids[s] = vocab.merge_result(r);
        next[s] = after;
        next[after as usize - 1] = s as u32;
        joins[s] = join(next, ids, s);
        if joins[s] != NONE {
            candidates.push(joins[s], s as u32);
        }
        if s > 0 {
            // `s - 1` is either a one-byte part (its `next` is `s`) or the last byte of a longer
            // one (its `next` slot holds that part's start).
            let q = next[s - 1] as usize;
            let p = if q == s { s - 1 } else { q };
            joins[p] = join(next, ids, p);
            if joins[p] != NONE {
                candidates.push(joins[p], p as u32);
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
    use rustc_hash::FxHashMap;

    use super::*;

    fn rank(vocab: &Vocab, bytes: &[u8]) -> u32 {
        vocab.merged(bytes).map_or(u32::MAX, |(rank, _)| rank)
    }

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
            out.push(match p[..] {
                [b] => vocab.byte_id(b),
                _ => vocab.merged(&p).map_or(u32::MAX, |(_, id)| id),
            });
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
                if len <= TINY {
                    let mut tiny = Vec::new();
                    merge_short::<TINY>(&v, &piece, &mut tiny);
                    assert_eq!(tiny, expected, "{:?}", String::from_utf8_lossy(&piece));
                }
                if len <= SHORT {
                    let mut short = Vec::new();
                    merge_short::<SHORT>(&v, &piece, &mut short);
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
