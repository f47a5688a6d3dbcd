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
