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
//! - [`config`]: defaults, TOML file and flags merged into one validated [`config::Config`].
//! - [`app`]: the commands; `serve` wiring builds the parts, spawns the tasks, owns shutdown.
//! - [`registry`]: everything that talks to etcd: connection, list, watch, key and value parsing.
//! - [`cache`]: the in-memory service view; applies updates; no I/O, no etcd or DNS types.
//! - [`dns`]: the answer core (DNS-SD names and client localities included), record building,
//!   query-name parsing, and the UDP/TCP transport.
//! - [`register`]: the registration side (lease, keepalive, health checks, deregistration).
//! - [`persist`]: the snapshot file, for starting while etcd is unreachable.
//! - [`memory`]: hands freed heap back to the OS after a large list or snapshot write.
//! - [`metrics`]: Prometheus metrics; [`admin`]: the HTTP listener for metrics, health, readiness.

pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dns;
pub mod memory;
pub mod metrics;
pub mod persist;
pub mod register;
pub mod registry;

// Fuzz targets (proptest, run as tests): see src/fuzz/mod.rs.
#[cfg(test)]
mod fuzz;
