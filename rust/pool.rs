//! Buffers handed back from the end of a pipeline to its start.
//!
//! A pipeline that streams a corpus in pieces (a reader cuts text into buffers, workers encode
//! them, a writer stores the results) would otherwise allocate a buffer per piece. glibc serves
//! a block of a megabyte either from a fresh mapping or from heap memory it may have given back
//! to the kernel, and the kernel maps such memory a 4 KiB page at a time on first write: one
//! page fault each, over a microsecond on a virtual machine, and on the reader's side serial
//! work that every worker waits on. Which it does depends on its heuristics (in `encode_files`
//! on 16 threads: about 100 faults per MB of text in every call). So the stage that is done with
//! a buffer gives it back here, emptied but still mapped, and the stage that fills buffers takes
//! it: after the first pieces, none is allocated.
//!
//! Memory stays bounded: a buffer is created only when none is spare, so the pool never holds
//! more buffers than were in use at once; and it keeps at most `max_buffers`, none larger than
//! `max_capacity` elements (a piece that once grew large, e.g. a long line with nowhere to cut
//! it, is freed rather than kept).

use std::sync::{Mutex, PoisonError};

/// Spare buffers of one kind, shared by the threads of a pipeline.
pub struct Pool<T> {
    spare: Mutex<Vec<Vec<T>>>,
    max_buffers: usize,
    max_capacity: usize,
}

impl<T> Pool<T> {
    /// A pool that keeps at most `max_buffers` buffers of at most `max_capacity` elements each.
    pub fn new(max_buffers: usize, max_capacity: usize) -> Self {
        Pool {
            spare: Mutex::new(Vec::with_capacity(max_buffers)),
            max_buffers,
            max_capacity,
        }
    }

    /// An empty buffer: a spare one if there is one, else a new one (no allocation until used).
    pub fn take(&self) -> Vec<T> {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `buf`, emptied, for a later `take`; frees it instead if it holds no memory, is
    /// larger than the pool keeps, or the pool is full.
    pub fn give(&self, mut buf: Vec<T>) {
        if buf.capacity() == 0 || buf.capacity() > self.max_capacity {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < self.max_buffers {
            spare.push(buf);
        }
        // Otherwise `buf` is freed here, after the lock is released (`spare` is dropped first).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_emptied_buffers_up_to_its_bounds() {
        let pool = Pool::new(2, 100);
        let mut a = pool.take();
        assert_eq!(a.capacity(), 0);
        a.extend_from_slice(&[1u8; 50]);
        let ptr = a.as_ptr();
        pool.give(a);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same memory comes back");
        pool.give(again);
        pool.give(Vec::with_capacity(1000)); // too large
        pool.give(Vec::new()); // holds nothing
        pool.give(Vec::with_capacity(10));
        pool.give(Vec::with_capacity(20)); // the pool is full
        let kept: Vec<usize> = (0..3).map(|_| pool.take().capacity()).collect();
        assert_eq!(kept, [10, 50, 0]);
    }
}
