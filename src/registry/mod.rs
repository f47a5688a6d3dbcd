//! Everything that talks to etcd: the connection, the initial list, the watch with reconnect
//! and re-list, and the parsing of keys and values into [`crate::cache`] types.

mod backoff;
pub mod formats;
mod parse;
mod status;
mod watcher;

pub use backoff::Backoff;
pub use parse::{encode_value, parse_entry, parse_key, parse_value, EntryError};
pub use status::Status;
pub use watcher::{connect, Watcher};

/// Whether `e` concerns one source's keys rather than the connection (etcd refuses that prefix).
pub fn is_source_error(e: &RegistryError) -> bool {
    // gRPC PermissionDenied is code 7.
    matches!(e, RegistryError::Etcd(etcd_client::Error::GRpcStatus(s)) if s.code() as i32 == 7)
}

/// Errors that end one watch session; the watcher retries after each.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("watch stream closed by etcd")]
    StreamClosed,
    #[error("watch canceled by etcd: {0}")]
    Canceled(String),
    #[error("{0}; re-listing")]
    History(String),
    #[error("retrying the sources etcd refused")]
    RetrySources,
    #[error("{prefix}: revision {wanted} was compacted (oldest kept: {compacted}); re-listing")]
    Compacted {
        prefix: String,
        wanted: i64,
        compacted: i64,
    },
}
