//! Software prefetch: a hint that memory about to be read should be fetched into the cache now.
//!
//! The encoder's hot loops read tables far larger than the core's caches at addresses known a
//! little ahead of time (the pretoken cache entry of a pretoken scanned but not yet looked up;
//! the candidate merge a long piece takes next; the Python int objects of ids about to go into
//! a list), so fetching early overlaps those waits instead of taking them one after another.

/// Asks the CPU to bring the cache line at `x` into its caches. Only a hint: any address, even
/// a dangling one, is fine, since a prefetch is never dereferenced and cannot fault.
#[inline(always)]
pub fn prefetch<T>(x: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint (it cannot fault whatever the address), and SSE is part
    // of the x86_64 baseline.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(x.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}
