//! Huge pages under large fresh buffers.
//!
//! The kernel maps an anonymous buffer a 4 KiB page at a time as it is first written, one page
//! fault each; on a virtual machine a fault costs over a microsecond, so filling a new 50 MB
//! array of ids took 12,000 faults and 16 ms, a sixth of encoding its text. Advising huge pages
//! for the buffer (Linux's transparent huge pages, in their default `madvise` mode) maps it 2 MiB
//! at a time instead. Only a hint: where it is not supported, nothing changes. Only buffers of
//! 32 MiB and more are advised (see `MIN_BYTES`).

/// The huge page size advised for.
const HUGE: usize = 2 << 20;

/// Buffers at least this large are advised: glibc's `malloc` maps any block of 32 MiB or more
/// afresh (its mmap threshold never rises above that), so the advice covers only a new mapping
/// of the caller's and ends with it. A smaller block may come from the heap, in memory used
/// before, where the advice would outlive the buffer and let the kernel collapse unrelated
/// allocations into huge pages.
pub const MIN_BYTES: usize = 32 << 20;

/// Advises huge pages for the whole 2 MiB-aligned pages inside `ptr..ptr + len`, a buffer of at
/// least `MIN_BYTES` that this process has just allocated and not written yet. Does nothing for
/// smaller buffers.
pub fn advise(ptr: *mut u8, len: usize) {
    if len < MIN_BYTES {
        return;
    }
    let start = (ptr as usize).div_ceil(HUGE) * HUGE;
    let end = (ptr as usize).saturating_add(len) / HUGE * HUGE;
    if end <= start + HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `start..end` is page-aligned and lies inside the caller's buffer; MADV_HUGEPAGE
    // changes only how the pages are backed, never their contents, and its result is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// An implementor must be valid when every byte of it is zero (integers and arrays of them).
pub unsafe trait Zeroable: Copy {}

// SAFETY: every bit pattern of an integer is valid.
unsafe impl Zeroable for u64 {}

/// A zeroed `[T; N]` in an anonymous mapping of its own, advised huge pages before it is
/// touched (Linux; elsewhere, or if the mapping fails, a zeroed heap array).
///
/// For a table looked up at random, such as the encoder's pretoken cache (4 MiB a thread), huge
/// pages spare more than the first touch's page faults (1,024 per table against two): every
/// lookup that lands on another 4 KiB page than the recent ones also needs a page-table walk,
/// which under a virtual machine's nested paging is itself several memory reads. A mapping of
/// its own, unlike a heap block, is unmapped when the array is dropped, so the advice never
/// outlives it.
pub struct ZeroedArray<T: Zeroable, const N: usize> {
    array: std::ptr::NonNull<[T; N]>,
    /// Start and length of the mapping to unmap, or `None` for a heap array.
    mapping: Option<(*mut libc::c_void, usize)>,
}

// SAFETY: the array is owned exclusively, like a `Box<[T; N]>`.
unsafe impl<T: Zeroable + Send, const N: usize> Send for ZeroedArray<T, N> {}

impl<T: Zeroable, const N: usize> ZeroedArray<T, N> {
    pub fn new() -> Self {
        let bytes = std::mem::size_of::<[T; N]>();
        if let Some((base, len, array)) = map_huge(bytes, std::mem::align_of::<T>()) {
            return ZeroedArray {
                array: array.cast(),
                mapping: Some((base, len)),
            };
        }
        let boxed: Box<[T; N]> = vec![zeroed::<T>(); N]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("the vector has N elements"));
        ZeroedArray {
            array: std::ptr::NonNull::from(Box::leak(boxed)),
            mapping: None,
        }
    }

    /// Sets every element back to zero.
    pub fn clear(&mut self) {
        // SAFETY: all-zero bytes are a valid `T` (`Zeroable`), and the array is ours.
        unsafe { std::ptr::write_bytes(self.array.as_ptr(), 0, 1) }
    }
}

impl<T: Zeroable, const N: usize> Default for ZeroedArray<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

fn zeroed<T: Zeroable>() -> T {
    // SAFETY: `Zeroable` promises that all-zero bytes are a valid `T`.
    unsafe { std::mem::zeroed() }
}

impl<T: Zeroable, const N: usize> std::ops::Deref for ZeroedArray<T, N> {
    type Target = [T; N];
    fn deref(&self) -> &[T; N] {
        // SAFETY: the pointer is to a live, initialised array owned by `self`.
        unsafe { self.array.as_ref() }
    }
}

impl<T: Zeroable, const N: usize> std::ops::DerefMut for ZeroedArray<T, N> {
    fn deref_mut(&mut self) -> &mut [T; N] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { self.array.as_mut() }
    }
}

impl<T: Zeroable, const N: usize> Drop for ZeroedArray<T, N> {
    fn drop(&mut self) {
        match self.mapping {
            #[cfg(target_os = "linux")]
            // SAFETY: `base..base + len` is the mapping `map_huge` made for this array alone.
            Some((base, len)) => unsafe {
                libc::munmap(base, len);
            },
            #[cfg(not(target_os = "linux"))]
            Some(_) => {}
            // SAFETY: the array came from `Box::leak` in `new` and is freed only here.
            None => unsafe { drop(Box::from_raw(self.array.as_ptr())) },
        }
    }
}

/// A fresh anonymous mapping holding `bytes` bytes at a 2 MiB boundary (zeroed by the kernel),
/// advised huge pages: `(mapping start, mapping length, the aligned start)`.
#[cfg(target_os = "linux")]
fn map_huge(
    bytes: usize,
    align: usize,
) -> Option<(*mut libc::c_void, usize, std::ptr::NonNull<u8>)> {
    if bytes == 0 || align > HUGE {
        return None;
    }
    let len = bytes.div_ceil(HUGE).checked_mul(HUGE)?.checked_add(HUGE)?;
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let start = (base as usize).div_ceil(HUGE) * HUGE;
    // SAFETY: `start..start + bytes` lies inside the new mapping (it has `HUGE` bytes of slack);
    // the advice changes only how its pages are backed, and its result is ignored.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            bytes.div_ceil(HUGE) * HUGE,
            libc::MADV_HUGEPAGE,
        );
    }
    Some((base, len, std::ptr::NonNull::new(start as *mut u8)?))
}

#[cfg(not(target_os = "linux"))]
fn map_huge(_: usize, _: usize) -> Option<(*mut libc::c_void, usize, std::ptr::NonNull<u8>)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    #[repr(C, align(32))]
    struct Cell {
        key: u128,
        ids: [u32; 4],
    }
    // SAFETY: integers only.
    unsafe impl Zeroable for Cell {}

    #[test]
    fn zeroed_array_starts_zero_keeps_writes_and_clears() {
        const N: usize = 1 << 17; // 4 MiB: a huge-page mapping where supported
        let mut a = ZeroedArray::<Cell, N>::new();
        assert_eq!(a.as_ptr() as usize % 32, 0);
        assert!(a.iter().all(|c| c.key == 0 && c.ids == [0; 4]));
        a[7].key = 5;
        a[N - 1].ids[3] = 9;
        assert_eq!((a[7].key, a[N - 1].ids[3]), (5, 9));
        a.clear();
        assert!(a.iter().all(|c| c.key == 0 && c.ids == [0; 4]));
        let small = ZeroedArray::<u64, 3>::new(); // far below a huge page: still one mapping
        assert_eq!(*small, [0; 3]);
        drop((a, small));
        // many arrays made and dropped: each mapping is returned (no exhaustion)
        for _ in 0..64 {
            let mut b = ZeroedArray::<Cell, N>::new();
            b[0].key = 1;
        }
    }
}
