//! Connection state of the registry, shared with whoever reports health.

use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct State {
    connected: bool,
    synced: bool,
    stale_since: Option<SystemTime>,
}

/// Whether the mirror is current. A std `Mutex`: tiny critical sections, never across an await.
#[derive(Debug, Default)]
pub struct Status {
    state: Mutex<State>,
}

impl Status {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock still holds plain data that is always valid.
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The watch is established: the mirror follows etcd again.
    pub fn set_connected(&self) {
        self.with(|s| {
            s.connected = true;
            s.synced = true;
            s.stale_since = None;
        })
    }

    /// The connection was lost; returns since when the data is stale (kept from the first loss).
    pub fn set_disconnected(&self) -> SystemTime {
        self.with(|s| {
            s.connected = false;
            *s.stale_since.get_or_insert_with(SystemTime::now)
        })
    }

    pub fn is_connected(&self) -> bool {
        self.with(|s| s.connected)
    }

    /// Whether the mirror was ever filled from etcd.
    pub fn is_synced(&self) -> bool {
        self.with(|s| s.synced)
    }

    /// Since when answers come from a mirror that may be behind etcd, if they do.
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.with(|s| s.stale_since)
    }
}
