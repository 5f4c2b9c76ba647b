//! A per-thread cache of pretoken -> token ids.
//!
//! Most pretokens recur (" the", ",", " and"), so merging each occurrence again would waste the
//! encoder's time. Each thread owns a direct-mapped table of short pretokens (`ShortKey`, at most
//! 15 bytes) and their ids (at most three); a collision simply overwrites. No lock is taken on
//! the hot path, memory is fixed (4 MiB per thread), and the table belongs to one tokenizer at a
//! time (a thread that switches tokenizers starts its table afresh).

use std::cell::RefCell;

use crate::shortkey::ShortKey;

const BITS: u32 = 17;
const MAX_IDS: usize = 3;

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u128,
    ids: [u32; MAX_IDS],
    len: u32,
}

/// One thread's table.
pub struct PieceCache {
    owner: u64,
    slots: Box<[Slot]>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache {
        owner: 0,
        slots: vec![Slot::default(); 1 << BITS].into_boxed_slice(),
    });
}

/// Runs `f` with this thread's cache, emptied first if it belonged to another tokenizer.
pub fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if cache.owner != owner {
            cache.slots.fill(Slot::default());
            cache.owner = owner;
        }
        f(&mut cache)
    })
}

impl PieceCache {
    /// Appends the ids of the pretoken `key` to `out`, from the table or by `compute` (whose
    /// result is then remembered when it is short enough).
    #[inline]
    pub fn get_or_compute(
        &mut self,
        key: ShortKey,
        out: &mut Vec<u32>,
        compute: impl FnOnce(&mut Vec<u32>),
    ) {
        let slot = &mut self.slots[key.slot(BITS)];
        if slot.len != 0 && slot.key == key.0 {
            out.extend_from_slice(&slot.ids[..slot.len as usize]);
            return;
        }
        let start = out.len();
        compute(out);
        let ids = &out[start..];
        if !ids.is_empty() && ids.len() <= MAX_IDS {
            slot.key = key.0;
            slot.len = ids.len() as u32;
            slot.ids[..ids.len()].copy_from_slice(ids);
        }
    }
}
