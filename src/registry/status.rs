//! Connection state of the registry, shared with the DNS handler, metrics and readiness.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct State {
    connected: bool,
    synced: bool,
    stale_since: Option<SystemTime>,
    last_confirmed: Option<Instant>,
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
            s.last_confirmed = Some(Instant::now());
        })
    }

    /// etcd confirmed the mirror is current (an event or a progress notification arrived).
    pub fn confirm(&self) {
        self.with(|s| s.last_confirmed = Some(Instant::now()))
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

    /// How long the mirror has been possibly behind etcd, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale_since()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Time since etcd last confirmed the mirror current, if it ever did.
    pub fn confirmed_age(&self) -> Option<Duration> {
        self.with(|s| s.last_confirmed.map(|t| t.elapsed()))
    }
}
