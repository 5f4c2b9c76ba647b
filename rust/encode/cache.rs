//! A per-thread cache of pretoken -> token ids.
//!
//! Most pretokens recur (" the", ",", " and"), so merging each occurrence again would waste the
//! encoder's time. Each thread owns a table of short pretokens (`ShortKey`, at most 15 bytes)
//! and their ids (at most four). An entry is 32 bytes, aligned so that a pair of slots `2k`,
//! `2k + 1` is one cache line. A pretoken is looked for in its own slot (the hashed one) and,
//! only when that fails, in the other slot of its pair; a miss puts the new entry in its own
//! slot and moves the one there to the other slot, dropping what that held, and a hit in the
//! other slot swaps the two. So two recurring pretokens whose hashes collide both stay (a
//! direct-mapped table that simply overwrote missed 45,000 pretokens a pass over 20 MB of
//! stories that it had seen before, this 8,000: text 7% faster). No lock is
//! taken on the hot path, memory is fixed (8 MiB per thread), and the table belongs to one
//! tokenizer at a time (a thread that switches tokenizers starts its table afresh).
//!
//! The table is larger than the core's L2 cache and the text and ids stream through that cache
//! too, so a lookup often waits on memory. Pretokens therefore go through a short pipeline
//! (`Pipeline`): each is hashed and its entry prefetched when the scanner finds it, and looked
//! up `DEPTH` pretokens later, by when the entry has arrived (+16% on English prose).
//!
//! (A two-way table that looked in both slots on every lookup measured slower: which slot hits
//! is a branch the core cannot predict. Here the hot path looks in one, and the other only on
//! the way to a miss, which is rare and costly anyway.)
//!
//! The table lives in a mapping of its own advised huge pages (`hugepages::ZeroedArray`): two
//! page faults instead of 1,024 when a thread first uses it, and no page-table walk per lookup.

use std::cell::RefCell;

use super::sink::push_ids;
use crate::hugepages::{Zeroable, ZeroedArray};
use crate::prefetch::prefetch;
use crate::shortkey::ShortKey;

/// log2 of the number of entries: 2^18 of 32 bytes, 8 MiB a thread. With two slots per line
/// this measured 6–10% faster than 2^17 on English prose (fewer pretokens merged again); while
/// the table was direct-mapped, 2^18 was no faster.
const BITS: u32 = 18;
const SLOTS: usize = 1 << BITS;
/// Most ids an entry holds.
const MAX_IDS: usize = 4;

/// Where an entry's id count is kept: the top four bits of its key, which are zero in every
/// `ShortKey` (its length byte is at most 15).
const COUNT_SHIFT: u32 = 124;
const KEY_MASK: u128 = !(0xF << COUNT_SHIFT);

/// A pretoken's key (with its id count in the top bits) and its ids, unused ones 0. A key of 0
/// is empty: a `ShortKey` of a non-empty pretoken has a non-zero length byte.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Entry {
    key: u128,
    ids: [u32; MAX_IDS],
}

// SAFETY: an `Entry` is integers only; all zeros is the empty entry.
unsafe impl Zeroable for Entry {}

/// One thread's table.
pub struct PieceCache {
    owner: u64,
    /// Fixed-size, so that an index masked to `SLOTS` needs no bounds check.
    entries: ZeroedArray<Entry, SLOTS>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache {
        owner: 0,
        entries: ZeroedArray::new(),
    });
}

/// Runs `f` with this thread's cache, emptied first if it belonged to another tokenizer.
pub fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if cache.owner != owner {
            cache.entries.clear();
            cache.owner = owner;
        }
        f(&mut cache)
    })
}

/// How many pretokens a `Pipeline` holds back: their entries are fetched while the ones before
/// them are copied out.
pub const DEPTH: usize = 16;

/// A pretoken held back in a `Pipeline` (32 bytes): its key, the slot of its entry and where it
/// starts; it ends where its key's length says. Key 0 is a pretoken too long to cache, which
/// ends at `slot`; key 0 with `slot == start` is nothing.
#[derive(Clone, Copy, Default)]
struct Held {
    key: u128,
    slot: usize,
    start: usize,
}

/// Pretokens whose entries have been prefetched: a ring of `DEPTH`, the oldest at `head`.
pub struct Pipeline {
    ring: [Held; DEPTH],
    head: usize,
}

impl Pipeline {
    pub fn new() -> Self {
        Pipeline {
            ring: [Held::default(); DEPTH],
            head: 0,
        }
    }
}

impl PieceCache {
    /// `encode`, `DEPTH` pretokens late: this pretoken is hashed and its entry prefetched now,
    /// and the oldest one held back is encoded. `finish` encodes the rest.
    #[inline(always)]
    pub fn encode_later(
        &mut self,
        pipe: &mut Pipeline,
        text: &[u8],
        start: usize,
        end: usize,
        out: &mut Vec<u32>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        // An empty pretoken (a custom regex may match the empty string) has key 0 and is held
        // as nothing.
        let (key, slot) = match ShortKey::new(text, start, end) {
            Some(key) if key.0 != 0 => {
                let slot = key.slot(BITS) & (SLOTS - 1);
                prefetch(&self.entries[slot]);
                (key.0, slot)
            }
            _ => (0, end),
        };
        let new = Held { key, slot, start };
        let oldest = std::mem::replace(&mut pipe.ring[pipe.head % DEPTH], new);
        pipe.head = pipe.head.wrapping_add(1);
        self.encode_keyed(text, oldest, out, merge);
    }

    /// Encodes the pretokens `pipe` still holds, and empties it.
    pub fn finish(
        &mut self,
        pipe: &mut Pipeline,
        text: &[u8],
        out: &mut Vec<u32>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        for k in 0..DEPTH {
            let held = std::mem::take(&mut pipe.ring[pipe.head.wrapping_add(k) % DEPTH]);
            self.encode_keyed(text, held, out, &merge);
        }
    }

    #[inline(always)]
    fn encode_keyed(
        &mut self,
        text: &[u8],
        Held { key, slot, start }: Held,
        out: &mut Vec<u32>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        if key == 0 {
            if start < slot {
                merge(&text[start..slot], out);
            }
            return;
        }
        let entry = &self.entries[slot & (SLOTS - 1)];
        if entry.key & KEY_MASK == key {
            push_ids(out, &entry.ids, (entry.key >> COUNT_SHIFT) as usize);
        } else {
            let end = start + (key >> 120) as usize;
            self.miss(slot, key, &text[start..end], out, merge);
        }
    }

    #[inline(never)]
    fn miss(
        &mut self,
        slot: usize,
        key: u128,
        piece: &[u8],
        out: &mut Vec<u32>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        let slot = slot & (SLOTS - 1);
        let other = self.entries[slot ^ 1];
        if other.key & KEY_MASK == key {
            push_ids(out, &other.ids, (other.key >> COUNT_SHIFT) as usize);
            self.entries[slot ^ 1] = self.entries[slot];
            self.entries[slot] = other;
            return;
        }
        let start = out.len();
        merge(piece, out);
        let ids = &out[start..];
        if (1..=MAX_IDS).contains(&ids.len()) {
            if self.entries[slot].key != 0 {
                self.entries[slot ^ 1] = self.entries[slot];
            }
            let entry = &mut self.entries[slot];
            entry.key = key | (ids.len() as u128) << COUNT_SHIFT;
            entry.ids = [0; MAX_IDS];
            entry.ids[..ids.len()].copy_from_slice(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A stand-in for the merge: one id per piece, a hash of its bytes.
    fn id_of(piece: &[u8]) -> u32 {
        piece
            .iter()
            .fold(7u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
    }

    /// `pieces` (byte ranges of `text`) through the cache, and how many were merged.
    fn run(cache: &mut PieceCache, text: &[u8], pieces: &[(usize, usize)]) -> (Vec<u32>, usize) {
        let merges = Cell::new(0);
        let merge = |piece: &[u8], out: &mut Vec<u32>| {
            merges.set(merges.get() + 1);
            out.push(id_of(piece));
        };
        let mut out = Vec::new();
        let mut pipe = Pipeline::new();
        for &(start, end) in pieces {
            cache.encode_later(&mut pipe, text, start, end, &mut out, merge);
        }
        cache.finish(&mut pipe, text, &mut out, merge);
        (out, merges.get())
    }

    #[test]
    fn two_pretokens_of_one_slot_both_stay_cached() {
        let slot_of = |s: &[u8]| ShortKey::new(s, 0, s.len()).map(|k| k.slot(BITS) & (SLOTS - 1));
        let mut by_slot = std::collections::HashMap::new();
        let mut pair = None;
        'search: for a in b'a'..=b'z' {
            for b in b'a'..=b'z' {
                for c in b'a'..=b'z' {
                    let word = vec![a, b, c];
                    if let Some(other) = by_slot.insert(slot_of(&word), word.clone()) {
                        pair = Some((other, word));
                        break 'search;
                    }
                }
            }
        }
        let (x, y) = pair.expect("17,576 keys in 262,144 slots collide (~590 pairs)");
        let text = [x.clone(), y.clone()].concat();
        let pieces: Vec<(usize, usize)> = (0..40).map(|i| [(0, 3), (3, 6)][i % 2]).collect();
        let mut cache = PieceCache {
            owner: 0,
            entries: ZeroedArray::new(),
        };
        let (ids, merges) = run(&mut cache, &text, &pieces);
        assert_eq!(merges, 2, "each merged once, then both cached");
        let want: Vec<u32> = (0..20).flat_map(|_| [id_of(&x), id_of(&y)]).collect();
        assert_eq!(ids, want);
        // A third pretoken of the same slot pushes out the one used least recently.
        let letters = || b'a'..=b'z';
        let z = letters()
            .flat_map(|a| letters().flat_map(move |b| letters().map(move |c| [a, b, c])))
            .flat_map(|abc| letters().flat_map(move |d| letters().map(move |e| [abc, [d, e, 0]])))
            .map(|[abc, de]| [&abc[..], &de[..2]].concat())
            .find(|w| slot_of(w) == slot_of(&x))
            .expect("a third key of that slot among 11.9 million (~45 expected)");
        let text = [x, y, z].concat();
        let (_, merges) = run(&mut cache, &text, &[(6, text.len()), (3, 6), (0, 3)]);
        assert_eq!(
            merges, 2,
            "z is new and x (older than y) was dropped for it"
        );
    }
}
