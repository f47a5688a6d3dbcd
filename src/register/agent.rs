//! Keeps one instance registered: lease and keepalive, health checks with hysteresis, repair of
//! a key someone else deleted or overwrote (anti-entropy), and deregistration on shutdown.
//! etcd outages are retried with backoff, never fatal; every etcd call has a deadline and
//! shutdown never waits on one.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

// tokio's clock (the monotonic clock, pausable in tests).
use tokio::time::Instant;

use etcd_client::{
    Client, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions, WatchStream,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::check;
use super::spec::Registration;
use crate::cache::Health;
use crate::registry::{deadline, Backoff};

/// Repairs within [`CONFLICT_WINDOW`] that mean another writer keeps changing the key.
const CONFLICT_REPAIRS: usize = 3;
const CONFLICT_WINDOW: Duration = Duration::from_secs(60);
/// How often the key is read back as a backstop to its watch.
const RESYNC: Duration = Duration::from_secs(30);

/// What the agent saw happen to its key that it did not do itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    Deleted,
    Overwritten,
}

/// Registers one instance and keeps it registered until shutdown.
pub struct Agent {
    client: Client,
    prefix: String,
    reg: Registration,
    health: Hysteresis,
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The value last written under the current lease, if any.
    written: Option<String>,
    extra_meta: BTreeMap<String, String>,
    backoff: Backoff,
    /// Deadline of each etcd call.
    call_timeout: Duration,
    /// The revision of our last write or delete of the key: events at or below it are ours
    /// (or older), events above it are someone else's.
    written_rev: i64,
    /// A watch on the key, opened once it is written.
    watch: Option<WatchStream>,
    /// The last watch broke: the next one starts from now, after a read-back.
    watch_gap: bool,
    /// When the key was last repaired, within [`CONFLICT_WINDOW`].
    repairs: VecDeque<Instant>,
    repairs_total: u64,
    conflicts_total: u64,
    /// After a conflict, repairs wait until then.
    repair_paused_until: Option<Instant>,
    conflict_backoff: Backoff,
}

impl Agent {
    pub fn new(client: Client, prefix: &str, reg: Registration, call_timeout: Duration) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
            health: Hysteresis::new(&reg),
            reg,
            lease: None,
            keeper: None,
            written: None,
            extra_meta: BTreeMap::new(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            call_timeout,
            written_rev: 0,
            watch: None,
            watch_gap: false,
            repairs: VecDeque::new(),
            repairs_total: 0,
            conflicts_total: 0,
            repair_paused_until: None,
            conflict_backoff: Backoff::new(Duration::from_secs(30), Duration::from_secs(300)),
        }
    }

    fn key(&self) -> String {
        self.reg.key(&self.prefix)
    }

    /// Runs until `shutdown`; then deregisters: deletes the key, drains (from the moment of
    /// `shutdown`, unless `skip_drain` is cancelled first, e.g. because the service already
    /// died) and revokes the lease. Whatever etcd does, that takes at most the drain time plus
    /// about two seconds.
    pub async fn run(mut self, shutdown: CancellationToken, skip_drain: CancellationToken) {
        let key = self.key();
        let startup = async {
            if let Some(check) = self.reg.check.clone() {
                // The first result decides the initial health: never advertise an instance that
                // fails its check right at start.
                let outcome = check::run(&check, self.reg.timeout).await;
                if !outcome.passed {
                    self.health.fail_at_start();
                    warn!(%key, reason = outcome.reason.as_deref().unwrap_or(""), "health check failing at start; registering as critical");
                }
                self.set_detail(outcome.detail);
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = startup => {}
        }
        // Delay, not burst: after a stall, checks stay `interval` apart, so fail-after and
        // pass-after keep meaning "over time".
        let mut keepalive = tokio::time::interval(self.reg.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks = tokio::time::interval(self.reg.interval);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.tick().await; // the first check ran above
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_check = self.reg.check.is_some();
        while !shutdown.is_cancelled() {
            // Every step races shutdown: a hung etcd call never delays deregistration.
            let step = async {
                if let Err(error) = self.sync().await {
                    self.lease_trouble(&error);
                    let delay = self.backoff.next_delay();
                    warn!(%key, %error, retry_in = ?delay, "cannot update etcd; retrying");
                    tokio::time::sleep(delay).await;
                    return;
                }
                self.backoff.reset();
                tokio::select! {
                    _ = keepalive.tick() => self.keep_alive().await,
                    _ = checks.tick(), if has_check => self.check().await,
                    _ = resync.tick() => self.verify().await,
                    seen = next_foreign(&mut self.watch, self.written_rev, self.lease) => {
                        match seen {
                            Ok(Some(what)) => self.repair(what),
                            Ok(None) => {}
                            Err(error) => {
                                // Reopened from the present (its old start may be compacted
                                // away by now), and what it may have missed is read back.
                                debug!(%key, %error, "watch on the key ended; reopening");
                                self.watch = None;
                                self.watch_gap = true;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = step => {}
            }
        }
        self.deregister(skip_drain).await;
    }

    /// Someone else deleted or overwrote the key while it is ours: write it again at once,
    /// unless that keeps happening (another registrar with the same key), then back off.
    fn repair(&mut self, what: Foreign) {
        let key = self.key();
        let now = Instant::now();
        // Nothing written (being registered again after a lost lease, or withdrawn): nothing
        // of ours to repair.
        if self.health.withdrawn
            || self.written.is_none()
            || self.repair_paused_until.is_some_and(|t| now < t)
        {
            return;
        }
        while self
            .repairs
            .front()
            .is_some_and(|t| now.duration_since(*t) > CONFLICT_WINDOW)
        {
            self.repairs.pop_front();
        }
        if self.repairs.len() >= CONFLICT_REPAIRS {
            self.conflicts_total += 1;
            let pause = self.conflict_backoff.next_delay();
            self.repair_paused_until = Some(now + pause);
            self.repairs.clear();
            error!(
                %key,
                repairs = CONFLICT_REPAIRS,
                within = ?CONFLICT_WINDOW,
                conflicts = self.conflicts_total,
                retry_in = ?pause,
                "another writer keeps changing this registration (two registrars with the same service and id?); not repairing it for a while",
            );
            return;
        }
        self.repairs.push_back(now);
        self.repairs_total += 1;
        let what = match what {
            Foreign::Deleted => "deleted",
            Foreign::Overwritten => "overwritten",
        };
        warn!(%key, repairs = self.repairs_total, "registration {what} by someone else; writing it again");
        // The next sync writes it.
        self.written = None;
    }

    /// The periodic backstop: read the key back and repair it if it is not what we wrote.
    async fn verify(&mut self) {
        let (Some(value), Some(lease)) = (self.written.clone(), self.lease) else {
            return;
        };
        if self.health.withdrawn {
            return;
        }
        let got = deadline(self.call_timeout, self.client.get(self.key(), None)).await;
        match got {
            Ok(resp) => match resp.kvs().first() {
                None => self.repair(Foreign::Deleted),
                Some(kv) if kv.value() != value.as_bytes() || kv.lease() != lease => {
                    self.repair(Foreign::Overwritten)
                }
                Some(_) => {
                    if self
                        .repair_paused_until
                        .is_some_and(|t| Instant::now() >= t)
                    {
                        self.repair_paused_until = None;
                        self.conflict_backoff.reset();
                    }
                }
            },
            Err(error) => debug!(key = %self.key(), %error, "cannot read the key back"),
        }
    }

    fn set_detail(&mut self, detail: Option<String>) {
        match detail {
            Some(d) => self.extra_meta.insert("check".into(), d),
            None => self.extra_meta.remove("check"),
        };
    }

    /// Makes etcd match the wanted state: lease held, key written (or removed when withdrawn).
    async fn sync(&mut self) -> Result<(), etcd_client::Error> {
        let key = self.key();
        let t = self.call_timeout;
        if self.health.withdrawn {
            if self.written.is_some() {
                let resp = deadline(t, self.client.delete(key.clone(), None)).await?;
                self.written = None;
                self.written_rev = resp.header().map_or(self.written_rev, |h| h.revision());
                warn!(%key, after = ?self.reg.deregister_after, "critical too long: removed from the registry until it passes again");
            }
            return Ok(());
        }
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let ttl = self.reg.ttl.as_secs().max(1) as i64;
                let id = deadline(t, self.client.lease_grant(ttl, None)).await?.id();
                self.lease = Some(id);
                self.keeper = None;
                self.written = None;
                id
            }
        };
        let value = self.reg.value(self.health.health, &self.extra_meta);
        if self.written.as_deref() != Some(value.as_str()) {
            let opts = PutOptions::new().with_lease(lease);
            let resp = deadline(t, self.client.put(key.clone(), value.clone(), Some(opts))).await?;
            self.written_rev = resp.header().map_or(self.written_rev, |h| h.revision());
            if self.written.is_none() {
                info!(%key, lease = format!("{lease:x}"), health = self.health.health.as_str(), "registered");
            } else {
                debug!(%key, %value, "registration updated");
            }
            self.written = Some(value);
        }
        if self.watch.is_none() {
            // From just after our write: anything newer is someone else's. After a broken
            // watch, from now (a long-lived registration's own write may be compacted), and
            // the key is read back for what happened in between.
            let mut opts = WatchOptions::new();
            if !self.watch_gap {
                opts = opts.with_start_revision(self.written_rev + 1);
            }
            self.watch = Some(deadline(t, self.client.watch(key, Some(opts))).await?);
            if std::mem::take(&mut self.watch_gap) {
                self.verify().await;
            }
        }
        Ok(())
    }

    /// A failed etcd call may mean the lease is gone ("requested lease not found" on a put):
    /// then grant a new one on the next sync. Otherwise a keepalive will tell.
    fn lease_trouble(&mut self, error: &etcd_client::Error) {
        self.keeper = None;
        if let Some(id) = self.lease {
            if is_lease_not_found(error) {
                self.lease_lost(id);
            }
        }
    }

    async fn keep_alive(&mut self) {
        let Some(id) = self.lease else { return };
        let t = self.call_timeout;
        let result = async {
            if self.keeper.is_none() {
                self.keeper = Some(deadline(t, self.client.lease_keep_alive(id)).await?);
            }
            // Just set above when it was missing.
            let (keeper, stream) = self.keeper.as_mut().expect("keeper present");
            deadline(t, keeper.keep_alive()).await?;
            Ok::<_, etcd_client::Error>(deadline(t, stream.message()).await?.map(|r| r.ttl()))
        }
        .await;
        // etcd reports a lease it does not know (any more) as an error when the keepalive
        // stream is opened, and as TTL 0 on an open stream.
        let gone = matches!(&result, Err(e) if is_lease_not_found(e));
        match result {
            Ok(Some(ttl)) if ttl > 0 => {}
            Ok(Some(_)) => self.lease_lost(id),
            _ if gone => self.lease_lost(id),
            // The stream ended (leader change, reconnect): open a new one next time.
            Ok(None) => self.keeper = None,
            Err(error) => {
                self.keeper = None;
                warn!(key = %self.key(), %error, "keepalive failed; retrying");
            }
        }
    }

    /// etcd forgot the lease (expired during a partition, or etcd was rebuilt): the key went
    /// with it. The next sync grants a new lease and writes again.
    fn lease_lost(&mut self, id: i64) {
        warn!(key = %self.key(), lease = format!("{id:x}"), "lease lost; registering again");
        self.lease = None;
        self.keeper = None;
        self.written = None;
    }

    async fn check(&mut self) {
        let Some(check) = self.reg.check.clone() else {
            return;
        };
        let outcome = check::run(&check, self.reg.timeout).await;
        self.set_detail(outcome.detail.clone());
        let key = self.key();
        let reason = outcome.reason.as_deref().unwrap_or("");
        match self.health.observe(outcome.passed) {
            Change::Critical => {
                warn!(%key, failures = self.health.fail_streak, reason, "health check failing: marked critical")
            }
            Change::Passing => {
                info!(%key, passes = self.health.ok_streak, "health check passing again")
            }
            Change::None if !outcome.passed => {
                debug!(%key, failures = self.health.fail_streak, reason, "health check failed")
            }
            Change::None => {}
        }
    }

    /// Deletes the key, drains and revokes the lease. The drain counts from now, alongside
    /// the delete; `skip_drain` cancels what is left of it.
    async fn deregister(mut self, skip_drain: CancellationToken) {
        let key = self.key();
        let now = tokio::time::Instant::now();
        let drain_until = now + self.reg.drain;
        // All of deregistration's etcd calls end by then: the drain plus two seconds, whatever
        // etcd does (a revoke gets at least half a second more).
        let hard_stop = drain_until.max(now) + Duration::from_secs(2);
        let budget = |min: Duration| {
            hard_stop
                .saturating_duration_since(tokio::time::Instant::now())
                .min(self.call_timeout)
                .max(min)
        };
        self.watch = None;
        let mut removed = false;
        // Retried while the drain lasts, and at least once; each attempt is bounded.
        for attempt in 0.. {
            let t = budget(Duration::from_millis(100));
            match deadline(t, self.client.delete(key.clone(), None)).await {
                Ok(_) => {
                    removed = true;
                    break;
                }
                Err(error) => warn!(%key, %error, attempt, "deregistration failed"),
            }
            if tokio::time::Instant::now() + Duration::from_millis(200) >= drain_until
                || skip_drain.is_cancelled()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if removed {
            info!(%key, "deregistered");
        }
        if !self.reg.drain.is_zero() && !skip_drain.is_cancelled() {
            info!(%key, drain = ?self.reg.drain, "draining");
            tokio::select! {
                _ = tokio::time::sleep_until(drain_until) => {}
                _ = skip_drain.cancelled() => info!(%key, "drain cut short"),
            }
        }
        if let Some(id) = self.lease {
            // Revoking also removes the key if the delete above did not get through.
            let t = budget(Duration::from_millis(500));
            match deadline(t, self.client.lease_revoke(id)).await {
                Ok(_) => {}
                Err(error) => warn!(%key, %error, "lease revoke failed; it expires by itself"),
            }
        }
    }
}

/// Health from check results, with hysteresis: `fail_after` failures in a row make a passing
/// instance critical, `pass_after` passes in a row make a critical one passing again, and
/// critical for `deregister_after` withdraws it from the registry until it passes again.
#[derive(Debug)]
struct Hysteresis {
    health: Health,
    ok_streak: u32,
    fail_streak: u32,
    critical_since: Option<Instant>,
    /// Removed from the registry because it stayed critical longer than `deregister_after`.
    withdrawn: bool,
    fail_after: u32,
    pass_after: u32,
    deregister_after: Duration,
}

/// What one check result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Critical,
    Passing,
}

impl Hysteresis {
    fn new(reg: &Registration) -> Self {
        Self {
            health: Health::Passing,
            ok_streak: 0,
            fail_streak: 0,
            critical_since: None,
            withdrawn: false,
            fail_after: reg.fail_after,
            pass_after: reg.pass_after,
            deregister_after: reg.deregister_after,
        }
    }

    /// The first check, before the first write, failed: never advertise it as healthy.
    fn fail_at_start(&mut self) {
        self.health = Health::Critical;
        self.critical_since = Some(Instant::now());
        self.fail_streak = 1;
    }

    fn observe(&mut self, passed: bool) -> Change {
        if passed {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.health == Health::Critical && self.ok_streak >= self.pass_after {
                self.health = Health::Passing;
                self.critical_since = None;
                self.withdrawn = false;
                return Change::Passing;
            }
            return Change::None;
        }
        self.ok_streak = 0;
        self.fail_streak = self.fail_streak.saturating_add(1);
        let mut change = Change::None;
        if self.health == Health::Passing && self.fail_streak >= self.fail_after {
            self.health = Health::Critical;
            self.critical_since = Some(Instant::now());
            change = Change::Critical;
        }
        if self
            .critical_since
            .is_some_and(|since| since.elapsed() >= self.deregister_after)
        {
            self.withdrawn = true;
        }
        change
    }
}

/// The next change to the key made by someone else (above `written_rev`), if the watch shows
/// one: a delete, or a value under another lease or with other contents. Pending while there
/// is no watch; an error ends the watch.
async fn next_foreign(
    watch: &mut Option<WatchStream>,
    written_rev: i64,
    lease: Option<i64>,
) -> Result<Option<Foreign>, etcd_client::Error> {
    let Some(stream) = watch.as_mut() else {
        return std::future::pending().await;
    };
    let Some(resp) = stream.message().await? else {
        return Err(etcd_client::Error::WatchError("watch stream ended".into()));
    };
    if resp.canceled() {
        return Err(etcd_client::Error::WatchError(format!(
            "watch canceled: {}",
            resp.cancel_reason()
        )));
    }
    let mut seen = None;
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        if kv.mod_revision() <= written_rev {
            continue; // our own write, or older
        }
        seen = match event.event_type() {
            EventType::Delete => Some(Foreign::Deleted),
            EventType::Put if Some(kv.lease()) != lease => Some(Foreign::Overwritten),
            // Same lease, so one of our own writes that `written_rev` has not caught up with:
            // compare contents at the next read-back instead.
            EventType::Put => seen,
        };
    }
    Ok(seen)
}

/// Whether etcd said the lease does not exist.
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hysteresis(fail_after: u32, pass_after: u32, deregister_after: Duration) -> Hysteresis {
        Hysteresis {
            health: Health::Passing,
            ok_streak: 0,
            fail_streak: 0,
            critical_since: None,
            withdrawn: false,
            fail_after,
            pass_after,
            deregister_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_moves_only_after_streaks_and_withdraws_after_a_while() {
        let mut h = hysteresis(3, 2, Duration::from_secs(60));
        // Two failures, a pass, two failures: never three in a row.
        for passed in [false, false, true, false, false] {
            assert_eq!(h.observe(passed), Change::None);
        }
        assert_eq!(h.health, Health::Passing);
        assert_eq!(h.observe(false), Change::Critical);
        assert_eq!(h.health, Health::Critical);
        // Critical for less than deregister_after: still registered (as critical).
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(h.observe(false), Change::None);
        assert!(!h.withdrawn);
        tokio::time::advance(Duration::from_secs(1)).await;
        h.observe(false);
        assert!(h.withdrawn, "critical for deregister_after: withdrawn");
        // One pass is not enough; two are, and it comes back.
        assert_eq!(h.observe(true), Change::None);
        assert_eq!(h.observe(true), Change::Passing);
        assert!(!h.withdrawn && h.health == Health::Passing);
    }

    #[tokio::test(start_paused = true)]
    async fn repairs_back_off_when_another_writer_keeps_changing_the_key() {
        let spec: crate::register::InstanceSpec =
            toml::from_str("service = \"web\"\nid = \"w1\"\naddress = \"10.0.0.1\"").unwrap();
        // Connecting is lazy: no etcd is needed to drive the repair logic.
        let client = Client::connect(["http://127.0.0.1:9"], None).await.unwrap();
        let mut a = Agent::new(
            client,
            "/ruddr/services/",
            spec.validate().unwrap(),
            Duration::from_secs(5),
        );
        let written = Some("v".to_string());
        for n in 1..=3 {
            a.written = written.clone();
            a.repair(Foreign::Deleted);
            assert!(a.written.is_none(), "repair {n} rewrites the key");
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        // A fourth within the minute: a conflict, no repair, a pause.
        a.written = written.clone();
        a.repair(Foreign::Overwritten);
        assert_eq!((a.conflicts_total, a.repairs_total), (1, 3));
        assert!(a.written.is_some(), "not rewritten during the conflict");
        tokio::time::advance(Duration::from_secs(10)).await;
        a.repair(Foreign::Overwritten);
        assert!(a.written.is_some(), "still paused");
        // After the pause (30 s, jittered down to at least 15 s), repairs resume.
        tokio::time::advance(Duration::from_secs(30)).await;
        a.repair(Foreign::Overwritten);
        assert!(a.written.is_none());
        assert_eq!(a.repairs_total, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_at_start_needs_passes_to_be_served() {
        let mut h = hysteresis(3, 2, Duration::from_secs(10));
        h.fail_at_start();
        assert_eq!(h.health, Health::Critical);
        tokio::time::advance(Duration::from_secs(10)).await;
        h.observe(false);
        assert!(h.withdrawn);
        assert_eq!(h.observe(true), Change::None);
        assert_eq!(h.observe(true), Change::Passing);
    }
}
