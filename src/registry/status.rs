//! Connection state of the registry, shared with the DNS handler, metrics and readiness.
//! Atomics, because the DNS handler reads it on every query.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

// tokio's clock: the same monotonic clock in production, and one tests can pause and advance.
use tokio::time::Instant;

use super::ErrorKind;
use crate::cache::Freshness;

/// Why the last session with etcd ended, while the watch is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ErrorKind,
    pub message: String,
}

/// No staleness: the mirror is current.
const NONE: i64 = i64::MIN;

/// Whether the mirror is current, and since when it may not be.
#[derive(Debug)]
pub struct Status {
    connected: AtomicBool,
    /// The mirror was filled from etcd at least once.
    synced: AtomicBool,
    /// The mirror holds data from a snapshot file (and not yet from etcd).
    from_snapshot: AtomicBool,
    /// Milliseconds after `epoch` since which the data may be behind etcd (negative for data
    /// older than the process, from a snapshot); `NONE` when current. Monotonic, so a wall-clock
    /// step during an outage does not move the `max_stale` deadline.
    stale_since: AtomicI64,
    /// Milliseconds after `epoch` at which etcd last confirmed the mirror; 0 when never.
    confirmed_ms: AtomicU64,
    /// The last error, until the watch is established again. A std `Mutex`: written once per
    /// failed session, read by `/ready` and metrics, never on the query path.
    problem: Mutex<Option<Problem>>,
    /// The data came from a snapshot whose time cannot be believed (written in the future).
    age_unknown: AtomicBool,
    /// How old data may get before registry names answer SERVFAIL (`None`: no limit).
    max_stale: Option<Duration>,
    epoch: Instant,
    /// Sources etcd refuses, by prefix, with the reason (the status page shows them).
    refused: Mutex<std::collections::BTreeMap<String, String>>,
}

/// A snapshot written more than this far in the future has no believable age.
pub const FUTURE_SLACK: Duration = Duration::from_secs(60);

impl Default for Status {
    fn default() -> Self {
        Self {
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            from_snapshot: AtomicBool::new(false),
            stale_since: AtomicI64::new(NONE),
            confirmed_ms: AtomicU64::new(0),
            problem: Mutex::new(None),
            refused: Mutex::default(),
            age_unknown: AtomicBool::new(false),
            max_stale: None,
            epoch: Instant::now(),
        }
    }
}

impl Status {
    /// A status whose data expires `max_stale` after etcd was last followed.
    pub fn new(max_stale: Option<Duration>) -> Self {
        Self {
            max_stale,
            ..Self::default()
        }
    }

    /// The data's [`Freshness`]: what answers, readiness and metrics go by.
    pub fn freshness(&self) -> Freshness {
        if !self.has_data() {
            return Freshness::Empty;
        }
        if self.is_connected() {
            return Freshness::Current;
        }
        Freshness::of(
            true,
            false,
            self.stale_for(),
            self.is_age_unknown(),
            self.max_stale,
        )
    }

    /// Notes whether etcd refuses the source at `prefix` (`Some(reason)`) or serves it.
    pub fn set_source_refused(&self, prefix: &str, reason: Option<&str>) {
        let mut map = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => {
                map.insert(prefix.to_string(), r.to_string());
            }
            None => {
                map.remove(prefix);
            }
        }
    }

    /// Why etcd refuses the source at `prefix`, if it does.
    pub fn source_refused(&self, prefix: &str) -> Option<String> {
        let map = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        map.get(prefix).cloned()
    }

    /// The configured `max_stale`.
    pub fn max_stale(&self) -> Option<Duration> {
        self.max_stale
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// The watch is established: the mirror follows etcd again.
    pub fn set_connected(&self) {
        self.synced.store(true, Relaxed);
        self.from_snapshot.store(false, Relaxed);
        self.age_unknown.store(false, Relaxed);
        self.stale_since.store(NONE, Relaxed);
        self.connected.store(true, Relaxed);
        *self.problem_slot() = None;
        self.confirm();
    }

    /// Records why the watch is down (shown until it is established again).
    pub fn set_problem(&self, kind: ErrorKind, message: String) {
        *self.problem_slot() = Some(Problem { kind, message });
    }

    /// Why the watch is down, if it is and a reason is known.
    pub fn problem(&self) -> Option<Problem> {
        self.problem_slot().clone()
    }

    fn problem_slot(&self) -> std::sync::MutexGuard<'_, Option<Problem>> {
        // A poisoned lock still holds a whole value: it is only ever replaced whole.
        self.problem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mirror was filled from a snapshot written at `written_at`: stale since then. A
    /// time more than [`FUTURE_SLACK`] ahead of the clock is not believed (a clock that was
    /// wrong when it was written, or is wrong now): the age is unknown and counts as older than
    /// any `max_stale`.
    pub fn set_from_snapshot(&self, written_at: SystemTime) {
        self.from_snapshot.store(true, Relaxed);
        // The wall clock is read once here, to place the snapshot's age on the monotonic clock.
        let now = SystemTime::now();
        let age = if written_at > now + FUTURE_SLACK {
            self.age_unknown.store(true, Relaxed);
            Duration::MAX
        } else {
            now.duration_since(written_at).unwrap_or_default()
        };
        let age_ms = i64::try_from(age.as_millis())
            .unwrap_or(i64::MAX / 4)
            .min(i64::MAX / 4);
        let _ = self
            .stale_since
            .compare_exchange(NONE, self.now_ms() - age_ms, Relaxed, Relaxed);
    }

    /// etcd confirmed the mirror is current (an event or a progress notification arrived).
    pub fn confirm(&self) {
        let ms = self.epoch.elapsed().as_millis().max(1) as u64;
        self.confirmed_ms.store(ms, Relaxed);
    }

    /// The connection was lost; returns since when the data is stale (kept from the first loss).
    pub fn set_disconnected(&self) -> SystemTime {
        self.connected.store(false, Relaxed);
        let _ = self
            .stale_since
            .compare_exchange(NONE, self.now_ms(), Relaxed, Relaxed);
        self.stale_since().unwrap_or_else(SystemTime::now)
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

    /// Since when answers come from a mirror that may be behind etcd, if they do (wall clock,
    /// for display).
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.stale_for().map(|d| SystemTime::now() - d)
    }

    /// Whether the data's age is unknown (a snapshot dated in the future).
    pub fn is_age_unknown(&self) -> bool {
        self.age_unknown.load(Relaxed)
    }

    /// How long the mirror has been possibly behind etcd, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        match self.stale_since.load(Relaxed) {
            NONE => None,
            since => Some(Duration::from_millis(
                self.now_ms().saturating_sub(since).max(0) as u64,
            )),
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

    /// Whether data of this status's age would count as expired under `max`.
    fn too_stale(s: &Status, max: Option<Duration>) -> bool {
        let f = Freshness::of(
            true,
            s.is_connected(),
            s.stale_for(),
            s.is_age_unknown(),
            max,
        );
        f == Freshness::Expired
    }

    #[tokio::test(start_paused = true)]
    async fn stale_since_is_kept_from_the_first_loss_and_cleared_on_connect() {
        let s = Status::default();
        assert!(!s.has_data() && s.stale_since().is_none() && s.confirmed_age().is_none());
        s.set_disconnected();
        tokio::time::advance(Duration::from_secs(20)).await;
        s.set_disconnected();
        // Kept from the first loss.
        assert_eq!(s.stale_for(), Some(Duration::from_secs(20)));
        assert!(too_stale(&s, Some(Duration::from_secs(10))));
        assert!(!too_stale(&s, Some(Duration::from_secs(3600))));
        assert!(!too_stale(&s, None));
        s.set_connected();
        assert!(s.is_connected() && s.has_data() && s.stale_since().is_none());
        assert!(!too_stale(&s, Some(Duration::ZERO)));
        assert_eq!(s.confirmed_age(), Some(Duration::ZERO));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(s.confirmed_age(), Some(Duration::from_secs(7)));
        s.confirm();
        assert_eq!(s.confirmed_age(), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_data_is_stale_since_it_was_written() {
        let s = Status::default();
        let written = SystemTime::now() - Duration::from_secs(120);
        s.set_from_snapshot(written);
        assert!(s.has_data() && !s.is_synced() && s.is_from_snapshot());
        assert!(s.stale_for().unwrap() >= Duration::from_secs(119));
        assert!(too_stale(&s, Some(Duration::from_secs(60))));
        assert!(!s.is_age_unknown());
        s.set_connected();
        assert!(!s.is_from_snapshot());
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_from_the_future_has_an_unknown_age() {
        let s = Status::default();
        // Within the slack: believed (a little clock skew between hosts).
        s.set_from_snapshot(SystemTime::now() + Duration::from_secs(30));
        assert!(!s.is_age_unknown());
        assert!(!too_stale(&s, Some(Duration::from_secs(60))));

        let s = Status::default();
        s.set_from_snapshot(SystemTime::now() + Duration::from_secs(3600));
        assert!(s.is_age_unknown() && s.has_data());
        assert!(too_stale(&s, Some(Duration::from_secs(365 * 86400))));
        assert!(!too_stale(&s, None), "no max_stale: still served");
        s.set_connected();
        assert!(!s.is_age_unknown() && s.stale_for().is_none());
    }
}
