//! Id buffers kept between parallel encodes.
//!
//! A large text is encoded in pieces, and each thread writes its pieces' ids into one buffer
//! before they are copied out in order. A freshly allocated buffer of that size is mapped by the
//! kernel a page at a time on first write: one page fault per 4 KiB of ids, which on a virtual
//! machine cost more than encoding the text that fills the page (50 MB of stories on one
//! thread: 36 ms of system time against 54 ms of encoding). So buffers go back to a shared list
//! after a call, emptied but still mapped, and the next call takes them; at most `KEEP_BYTES` (128
//! MiB) of capacity is kept, the largest buffers first, for the life of the process.
//!
//! A large call whose threads find no buffer large enough (the first, or one larger than what
//! was kept) gets, where a thread's share of the ids is at least 32 MiB, a fresh buffer sized
//! for it, a mapping of its own advised huge pages: mapped 2 MiB at a time, not 4 KiB (dev VM,
//! 50 MB on two threads: 250 faults per MB of text to 18, the first call 790 to 850–950 MB/s).

use std::sync::{Mutex, PoisonError};

use crate::hugepages;

/// Ids a thread expects to write (4 bytes each) from which `with_room` maps a fresh buffer for
/// them, advised huge pages, rather than letting an empty one grow page by page: a share of
/// `hugepages::MIN_BYTES` (32 MiB), which `malloc` maps afresh, so the advice ends with it.
/// Smaller shares grow as before; their buffers stay within what is kept between calls (an
/// inflated capacity would not be kept, and every call would map it again).
const FRESH_IDS: usize = hugepages::MIN_BYTES / 4;

/// `buf`, or a fresh empty buffer in its place when `buf` lacks room for `ids` ids and they are
/// at least `FRESH_IDS`: capacity for exactly `ids`, advised huge pages.
pub fn with_room(buf: Vec<u32>, ids: usize) -> Vec<u32> {
    if buf.capacity() >= ids || ids < FRESH_IDS {
        return buf;
    }
    let mut fresh = Vec::<u32>::with_capacity(ids);
    hugepages::advise(fresh.as_mut_ptr().cast(), ids * 4);
    fresh
}

/// Most buffer capacity kept between calls, in bytes: enough for a 50 MB text's ids on any
/// number of threads (one thread's vector grows by doubling to 85 MB of capacity), while a
/// process that once encoded gigabytes in one call keeps no more than this.
pub const KEEP_BYTES: usize = 128 << 20;

/// Spare buffers, in ascending order of capacity, none of them holding ids.
#[derive(Default)]
struct Spare(Vec<Vec<u32>>);

impl Spare {
    fn take(&mut self, n: usize) -> Vec<Vec<u32>> {
        (0..n).map(|_| self.0.pop().unwrap_or_default()).collect()
    }

    /// Keeps the largest of its buffers and `bufs` up to `keep_bytes` in all; returns the rest.
    fn put(&mut self, bufs: Vec<Vec<u32>>, keep_bytes: usize) -> Vec<Vec<u32>> {
        self.0.extend(bufs.into_iter().filter(|b| b.capacity() > 0));
        self.0.sort_unstable_by_key(Vec::capacity);
        let mut kept = 0;
        let mut dropped = Vec::new();
        let mut keep = Vec::with_capacity(self.0.len());
        for mut b in std::mem::take(&mut self.0).into_iter().rev() {
            let bytes = b.capacity() * 4;
            if kept + bytes <= keep_bytes {
                kept += bytes;
                b.clear();
                keep.push(b);
            } else {
                dropped.push(b);
            }
        }
        keep.reverse();
        self.0 = keep;
        dropped
    }
}

static SPARE: Mutex<Spare> = Mutex::new(Spare(Vec::new()));

/// `n` empty buffers, the largest spare ones first.
pub fn take(n: usize) -> Vec<Vec<u32>> {
    SPARE.lock().unwrap_or_else(PoisonError::into_inner).take(n)
}

/// Returns buffers for later calls, keeping the largest up to `KEEP_BYTES` in all.
pub fn give_back(bufs: Vec<Vec<u32>>) {
    let dropped = SPARE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .put(bufs, KEEP_BYTES);
    // Unmapped outside the lock.
    drop(dropped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_room_keeps_a_large_enough_buffer_and_maps_a_fresh_one_otherwise() {
        let big = Vec::<u32>::with_capacity(3 * FRESH_IDS);
        let ptr = big.as_ptr();
        let kept = with_room(big, 2 * FRESH_IDS);
        assert_eq!(kept.as_ptr(), ptr);
        let small = Vec::<u32>::with_capacity(10);
        assert_eq!(with_room(small, FRESH_IDS - 1).capacity(), 10); // a share that grows as before
        let fresh = with_room(Vec::with_capacity(10), FRESH_IDS + 5);
        assert!(fresh.is_empty());
        assert!(fresh.capacity() >= FRESH_IDS + 5);
        assert!(fresh.capacity() < 2 * FRESH_IDS); // sized for the share, not inflated
    }

    #[test]
    fn buffers_come_back_empty_largest_first_and_capped() {
        let mut spare = Spare::default();
        let mut a = Vec::with_capacity(1000);
        a.extend(0..10u32);
        let b = Vec::with_capacity(3000);
        let too_big = Vec::with_capacity(5000);
        let dropped = spare.put(vec![a, too_big, Vec::new(), b], 4 * 4000);
        assert_eq!(
            dropped.iter().map(Vec::capacity).collect::<Vec<_>>(),
            [5000]
        );
        let got = spare.take(3);
        assert!(got.iter().all(Vec::is_empty));
        assert_eq!(
            got.iter().map(Vec::capacity).collect::<Vec<_>>(),
            [3000, 1000, 0]
        );
    }
}
