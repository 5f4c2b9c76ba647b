//! A per-thread cache of pretoken -> token ids.
//!
//! Most pretokens recur (" the", ",", " and"), so merging each occurrence again would waste the
//! encoder's time. Each thread owns a direct-mapped table of short pretokens (`ShortKey`, at
//! most 15 bytes) and their ids (at most four); a collision simply overwrites. An entry is 32
//! bytes, aligned so that it never straddles two cache lines: a lookup is one line. No lock is
//! taken on the hot path, memory is fixed (4 MiB per thread), and the table belongs to one
//! tokenizer at a time (a thread that switches tokenizers starts its table afresh).
//!
//! (A two-way set-associative table of the same size, and looking pretokens up in batches with
//! their entries prefetched first, both measured slower: the core overlaps the independent
//! lookups of consecutive pretokens on its own.)

use std::cell::RefCell;

use super::sink::Sink;
use crate::shortkey::ShortKey;

/// log2 of the number of entries.
const BITS: u32 = 17;
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

/// One thread's table.
pub struct PieceCache {
    owner: u64,
    entries: Box<[Entry]>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache {
        owner: 0,
        entries: vec![Entry::default(); 1 << BITS].into_boxed_slice(),
    });
}

/// Runs `f` with this thread's cache, emptied first if it belonged to another tokenizer.
pub fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if cache.owner != owner {
            cache.entries.fill(Entry::default());
            cache.owner = owner;
        }
        f(&mut cache)
    })
}

impl PieceCache {
    /// Appends the ids of the pretoken `text[start..end]` to `sink`, from the table or by
    /// `merge` (whose result is then remembered when it is short enough).
    #[inline(always)]
    pub fn encode(
        &mut self,
        text: &[u8],
        start: usize,
        end: usize,
        sink: &mut Sink<'_>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        let Some(key) = ShortKey::new(text, start, end) else {
            merge(&text[start..end], sink.vec());
            sink.sync();
            return;
        };
        let slot = key.slot(BITS);
        let entry = &self.entries[slot];
        if entry.key & KEY_MASK == key.0 {
            sink.push(&entry.ids, (entry.key >> COUNT_SHIFT) as usize);
        } else {
            self.miss(slot, key.0, &text[start..end], sink, merge);
        }
    }

    #[inline(never)]
    fn miss(
        &mut self,
        slot: usize,
        key: u128,
        piece: &[u8],
        sink: &mut Sink<'_>,
        merge: impl Fn(&[u8], &mut Vec<u32>),
    ) {
        let out = sink.vec();
        let start = out.len();
        merge(piece, out);
        let ids = &out[start..];
        if (1..=MAX_IDS).contains(&ids.len()) {
            let entry = &mut self.entries[slot];
            entry.key = key | (ids.len() as u128) << COUNT_SHIFT;
            entry.ids = [0; MAX_IDS];
            entry.ids[..ids.len()].copy_from_slice(ids);
        }
        sink.sync();
    }
}
