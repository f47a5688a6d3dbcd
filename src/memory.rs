//! Giving freed heap memory back to the operating system after large, short-lived allocations
//! (a full list of the registry, a snapshot write).
//!
//! glibc's allocator keeps freed chunks in the middle of its heap for reuse; after a list of a
//! million keys (every etcd page decoded, every value parsed, then dropped), that is well over
//! a hundred megabytes of RSS nobody uses. `malloc_trim` hands whole free pages back.

/// Releases free heap pages to the operating system, where the allocator supports it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and releases the allocator's own free memory; it is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if tracing::enabled!(tracing::Level::DEBUG) {
        // mallinfo2 walks every arena's free lists: only when the line is wanted.
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        tracing::debug!(
            in_use = info.uordblks,
            free_held = info.fordblks,
            mmapped = info.hblkhd,
            "heap after trim"
        );
    }
}

/// Caps glibc's malloc arenas at `max(2, cores / 2)` unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives threads up to eight arenas per core, each with its own free lists and top
/// chunk. ruddr's answering threads allocate only when they build an answer (a cached one
/// costs no allocation), the registry thread when the registry changes, so a few shared arenas
/// are not contended; many keep freed memory apart where no other thread reuses it. Measured
/// at 100,000 instances on 2 cores (`bench/scale.py`): 6 MB less after the queries and 7-10 MB
/// less at the churn's peak, with the same answers per CPU-second.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let arenas = libc::c_int::try_from((cores / 2).max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes the allocator's tuning; M_ARENA_MAX takes effect for
        // arenas created from now on.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
