//! ruddr: a DNS server for service discovery, answering from a live in-memory mirror of etcd.
//!
//! Data flows one way:
//!
//! ```text
//!  etcd ──list+watch──▶ registry::Watcher ──Update──▶ cache::Mirror ──Snapshot──▶ dns::Handler ◀──▶ dns::server ◀──▶ client
//!                        (reconnect, resume,          (every instance,          (answer core:       (UDP/TCP transport,
//!                         re-list on compaction)       swapped atomically)        cached answers)     limits)
//! ```
//!
//! - [`cli`]: clap flags, raw and unvalidated.
//! - [`config`]: defaults, TOML file and flags merged into one validated [`config::Config`], one
//!   file and one `validate` per section; imports nothing above it (no registry, no DNS).
//! - [`app`]: the commands; `serve` wiring builds the parts, spawns the tasks, owns shutdown.
//! - [`registry`]: everything that talks to etcd: connection, list, watch, key and value parsing.
//! - [`cache`]: the in-memory service view; applies updates; no I/O, no etcd or DNS types.
//! - [`dns`]: the answer core (one function for every zone), the zones that answer through it
//!   (registry, SkyDNS, static zone files, the forward cache), the one wire writer, and the
//!   UDP/TCP transport (see its module map).
//! - [`register`]: the registration side (lease, keepalive, health checks, deregistration).
//! - [`persist`]: the snapshot file, for starting while etcd is unreachable.
//! - [`memory`]: hands freed heap back to the OS after a large list or snapshot write.
//! - [`xds`]: the xDS (ADS) server that pushes the same data to gRPC clients.
//! - [`metrics`]: Prometheus metrics (imports nothing from the registry: the admin side hands
//!   it the registry's state); [`admin`]: the HTTP listener for metrics, health, readiness.

pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dns;
pub mod dnstap;
pub mod memory;
pub mod metrics;
pub mod persist;
pub mod register;
pub mod registry;
pub mod xds;

// Fuzz targets (proptest, run as tests): see src/fuzz/mod.rs.
#[cfg(test)]
mod fuzz;

/// Unit tests count the heap allocations their own thread makes (tests run in parallel, each
/// on a thread of its own), to check that a hot path allocates nothing.
#[cfg(test)]
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    fn count() {
        // Not during thread teardown, when the counter may be gone.
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: forwards every call to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations (and reallocations) this thread has made so far.
    pub fn on_this_thread() -> u64 {
        COUNT.with(Cell::get)
    }
}
