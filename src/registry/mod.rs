//! Everything that talks to etcd: the connection, the initial list, the watch with reconnect
//! and re-list, and the parsing of keys and values into [`crate::cache`] types.

mod backoff;
pub mod layout;
pub mod list;
mod source;
mod status;
mod watch_set;
mod watcher;

pub use backoff::Backoff;
pub use layout::native::{
    encode_key, encode_value, entry as parse_entry, key as parse_key, value as parse_value,
};
pub use layout::{Entry, EntryError, Format, Key, Layout};
pub use source::Source;
pub use status::{Problem, Status};
pub use watcher::{connect, supervise, Watcher};

/// Runs `call` with the deadline `timeout`; a call that misses it fails like an unreachable
/// etcd.
pub async fn deadline<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("etcd did not answer within {timeout:?}"),
        ))),
    }
}

/// Whether `e` concerns one source's keys rather than the connection (etcd refuses that prefix).
pub fn is_source_error(e: &RegistryError) -> bool {
    e.kind() == ErrorKind::Refused
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
    #[error("etcd refuses every configured prefix")]
    AllRefused,
    #[error("etcd has not confirmed the watch for {0:?} (no event, no progress notification)")]
    Unconfirmed(std::time::Duration),
    #[error("{prefix}: revision {wanted} was compacted (oldest kept: {compacted}); re-listing")]
    Compacted {
        prefix: String,
        wanted: i64,
        compacted: i64,
    },
}

/// What kind of trouble an error is, as logs, `/ready` and metrics report it: an unreachable
/// etcd is an outage to wait out; the others need a person (a limit, a permission, a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No answer: etcd down, partitioned, or the connection dropped.
    Unreachable,
    /// A reply larger than `etcd.max_message_bytes`.
    TooLarge,
    /// etcd refuses the request (permission denied, authentication).
    Refused,
    /// The revision asked for was compacted away (not an outage: re-list).
    Compacted,
    /// Anything else etcd answered with: an error status, a canceled watch, a bad response.
    BadResponse,
    /// ruddr's own watcher ended or panicked; it is being restarted.
    WatcherFailed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Unreachable,
        ErrorKind::TooLarge,
        ErrorKind::Refused,
        ErrorKind::Compacted,
        ErrorKind::BadResponse,
        ErrorKind::WatcherFailed,
    ];

    /// The label in metrics and `/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::TooLarge => "message_too_large",
            ErrorKind::Refused => "permission_denied",
            ErrorKind::Compacted => "compacted",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::WatcherFailed => "watcher_failed",
        }
    }

    /// What an operator reads in `/ready` and the log while this lasts.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "etcd unreachable",
            ErrorKind::TooLarge => "an etcd reply exceeds etcd.max_message_bytes",
            ErrorKind::Refused => "etcd refuses the request (permission denied)",
            ErrorKind::Compacted => "the watched revision was compacted",
            ErrorKind::BadResponse => "etcd answered with an error",
            ErrorKind::WatcherFailed => "the etcd watcher stopped and is being restarted",
        }
    }
}

impl RegistryError {
    pub fn kind(&self) -> ErrorKind {
        use etcd_client::Error as E;
        use tonic::Code;
        match self {
            RegistryError::Etcd(E::GRpcStatus(s)) => match s.code() {
                Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Refused,
                // The client's decode limit; etcd's own "too large" replies come as
                // ResourceExhausted.
                Code::OutOfRange if s.message().contains("too large") => ErrorKind::TooLarge,
                Code::ResourceExhausted => ErrorKind::TooLarge,
                Code::OutOfRange if s.message().contains("compacted") => ErrorKind::Compacted,
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    ErrorKind::Unreachable
                }
                // A connection that breaks mid-stream surfaces as Unknown (or Internal for an
                // HTTP/2 error) with the transport's error as text.
                Code::Unknown => ErrorKind::Unreachable,
                Code::Internal if s.message().contains("h2 protocol") => ErrorKind::Unreachable,
                _ => ErrorKind::BadResponse,
            },
            RegistryError::Etcd(E::TransportError(_) | E::IoError(_)) => ErrorKind::Unreachable,
            RegistryError::Etcd(E::WatchError(m)) if m.contains("too large") => ErrorKind::TooLarge,
            RegistryError::Etcd(_) => ErrorKind::BadResponse,
            RegistryError::StreamClosed | RegistryError::Unconfirmed(_) => ErrorKind::Unreachable,
            RegistryError::Canceled(_) => ErrorKind::BadResponse,
            RegistryError::History(_) | RegistryError::Compacted { .. } => ErrorKind::Compacted,
            RegistryError::AllRefused => ErrorKind::Refused,
        }
    }
}
