//! Connection state of the registry, shared with the DNS handler, metrics and readiness.
//! Atomics, because the DNS handler reads it on every query.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether the mirror is current, and since when it may not be.
#[derive(Debug)]
pub struct Status {
    connected: AtomicBool,
    /// The mirror was filled from etcd at least once.
    synced: AtomicBool,
    /// The mirror holds data from a snapshot file (and not yet from etcd).
    from_snapshot: AtomicBool,
    /// Unix time in milliseconds since which the data may be behind etcd; 0 when current.
    stale_since_ms: AtomicU64,
    /// Milliseconds after `epoch` at which etcd last confirmed the mirror; 0 when never.
    confirmed_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            from_snapshot: AtomicBool::new(false),
            stale_since_ms: AtomicU64::new(0),
            confirmed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().max(1) as u64)
}

impl Status {
    /// The watch is established: the mirror follows etcd again.
    pub fn set_connected(&self) {
        self.synced.store(true, Relaxed);
        self.from_snapshot.store(false, Relaxed);
        self.stale_since_ms.store(0, Relaxed);
        self.connected.store(true, Relaxed);
        self.confirm();
    }

    /// The mirror was filled from a snapshot written at `written_at`: stale since then.
    pub fn set_from_snapshot(&self, written_at: SystemTime) {
        self.from_snapshot.store(true, Relaxed);
        let _ = self
            .stale_since_ms
            .compare_exchange(0, unix_ms(written_at), Relaxed, Relaxed);
    }

    /// etcd confirmed the mirror is current (an event or a progress notification arrived).
    pub fn confirm(&self) {
        let ms = self.epoch.elapsed().as_millis().max(1) as u64;
        self.confirmed_ms.store(ms, Relaxed);
    }

    /// The connection was lost; returns since when the data is stale (kept from the first loss).
    pub fn set_disconnected(&self) -> SystemTime {
        self.connected.store(false, Relaxed);
        let now = unix_ms(SystemTime::now());
        let since = match self
            .stale_since_ms
            .compare_exchange(0, now, Relaxed, Relaxed)
        {
            Ok(_) => now,
            Err(existing) => existing,
        };
        UNIX_EPOCH + Duration::from_millis(since)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// Whether the mirror was ever filled from etcd.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    /// Whether the mirror holds data (from etcd, or from a snapshot file).
    pub fn has_data(&self) -> bool {
        self.is_synced() || self.from_snapshot.load(Relaxed)
    }

    /// Whether the data came from a snapshot file and etcd has not been reached since.
    pub fn is_from_snapshot(&self) -> bool {
        self.from_snapshot.load(Relaxed)
    }

    /// Since when answers come from a mirror that may be behind etcd, if they do.
    pub fn stale_since(&self) -> Option<SystemTime> {
        match self.stale_since_ms.load(Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// How long the mirror has been possibly behind etcd, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale_since()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Whether the data is older than `max_stale` (never, when `max_stale` is `None`).
    pub fn is_too_stale(&self, max_stale: Option<Duration>) -> bool {
        match (max_stale, self.stale_since_ms.load(Relaxed)) {
            (Some(max), since) if since != 0 => {
                unix_ms(SystemTime::now()).saturating_sub(since) > max.as_millis() as u64
            }
            _ => false,
        }
    }

    /// Time since etcd last confirmed the mirror current, if it ever did.
    pub fn confirmed_age(&self) -> Option<Duration> {
        match self.confirmed_ms.load(Relaxed) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_since_is_kept_from_the_first_loss_and_cleared_on_connect() {
        let s = Status::default();
        assert!(!s.has_data() && s.stale_since().is_none() && s.confirmed_age().is_none());
        let first = s.set_disconnected();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.set_disconnected(), first);
        assert!(s.is_too_stale(Some(Duration::ZERO)));
        assert!(!s.is_too_stale(Some(Duration::from_secs(3600))));
        assert!(!s.is_too_stale(None));
        s.set_connected();
        assert!(s.is_connected() && s.has_data() && s.stale_since().is_none());
        assert!(!s.is_too_stale(Some(Duration::ZERO)));
    }

    #[test]
    fn snapshot_data_is_stale_since_it_was_written() {
        let s = Status::default();
        let written = SystemTime::now() - Duration::from_secs(120);
        s.set_from_snapshot(written);
        assert!(s.has_data() && !s.is_synced() && s.is_from_snapshot());
        assert!(s.stale_for().unwrap() >= Duration::from_secs(119));
        assert!(s.is_too_stale(Some(Duration::from_secs(60))));
        s.set_connected();
        assert!(!s.is_from_snapshot());
    }
}
