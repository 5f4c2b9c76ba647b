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
const MIN_BYTES: usize = 32 << 20;

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
