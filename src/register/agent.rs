//! Keeps one instance registered: lease and keepalive, health checks with hysteresis, and
//! deregistration on shutdown. etcd outages are retried with backoff, never fatal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::check;
use super::spec::Registration;
use crate::cache::Health;
use crate::registry::Backoff;

/// Registers one instance and keeps it registered until shutdown.
pub struct Agent {
    client: Client,
    prefix: String,
    reg: Registration,
    health: Health,
    ok_streak: u32,
    fail_streak: u32,
    critical_since: Option<Instant>,
    /// Removed from the registry because it stayed critical longer than `deregister_after`.
    withdrawn: bool,
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The value last written under the current lease, if any.
    written: Option<String>,
    extra_meta: BTreeMap<String, String>,
    backoff: Backoff,
}

impl Agent {
    pub fn new(client: Client, prefix: &str, reg: Registration) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
            reg,
            health: Health::Passing,
            ok_streak: 0,
            fail_streak: 0,
            critical_since: None,
            withdrawn: false,
            lease: None,
            keeper: None,
            written: None,
            extra_meta: BTreeMap::new(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        }
    }

    fn key(&self) -> String {
        self.reg.key(&self.prefix)
    }

    /// Runs until `shutdown`; then deletes the key, waits the drain time (unless `skip_drain`
    /// is set, e.g. because the service already died) and revokes the lease.
    pub async fn run(mut self, shutdown: CancellationToken, skip_drain: Arc<AtomicBool>) {
        let key = self.key();
        if let Some(check) = self.reg.check.clone() {
            // The first result decides the initial health: never advertise an instance that
            // fails its check right at start.
            let outcome = check::run(&check, self.reg.timeout).await;
            if !outcome.passed {
                self.health = Health::Critical;
                self.critical_since = Some(Instant::now());
                self.fail_streak = 1;
                warn!(%key, reason = outcome.reason.as_deref().unwrap_or(""), "health check failing at start; registering as critical");
            }
            self.set_detail(outcome.detail);
        }
        // Delay, not burst: after a stall, checks stay `interval` apart, so fail-after and
        // pass-after keep meaning "over time".
        let mut keepalive = tokio::time::interval(self.reg.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks = tokio::time::interval(self.reg.interval);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.tick().await; // the first check ran above
        loop {
            if let Err(error) = self.sync().await {
                self.lease_trouble(&error);
                let delay = self.backoff.next_delay();
                warn!(%key, %error, retry_in = ?delay, "cannot update etcd; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
            self.backoff.reset();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = keepalive.tick() => self.keep_alive().await,
                _ = checks.tick(), if self.reg.check.is_some() => self.check().await,
            }
        }
        self.deregister(skip_drain.load(Ordering::Relaxed)).await;
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
        if self.withdrawn {
            if self.written.take().is_some() {
                self.client.delete(key.clone(), None).await?;
                warn!(%key, after = ?self.reg.deregister_after, "critical too long: removed from the registry until it passes again");
            }
            return Ok(());
        }
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let ttl = self.reg.ttl.as_secs().max(1) as i64;
                let id = self.client.lease_grant(ttl, None).await?.id();
                self.lease = Some(id);
                self.keeper = None;
                self.written = None;
                id
            }
        };
        let value = self.reg.value(self.health, &self.extra_meta);
        if self.written.as_deref() != Some(value.as_str()) {
            let opts = PutOptions::new().with_lease(lease);
            self.client
                .put(key.clone(), value.clone(), Some(opts))
                .await?;
            if self.written.is_none() {
                info!(%key, lease = format!("{lease:x}"), health = self.health.as_str(), "registered");
            } else {
                debug!(%key, %value, "registration updated");
            }
            self.written = Some(value);
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
        let result = async {
            if self.keeper.is_none() {
                self.keeper = Some(self.client.lease_keep_alive(id).await?);
            }
            // Just set above when it was missing.
            let (keeper, stream) = self.keeper.as_mut().expect("keeper present");
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()))
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
        if outcome.passed {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.health == Health::Critical && self.ok_streak >= self.reg.pass_after {
                self.health = Health::Passing;
                self.critical_since = None;
                self.withdrawn = false;
                info!(%key, passes = self.ok_streak, "health check passing again");
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            let reason = outcome.reason.as_deref().unwrap_or("");
            if self.health == Health::Passing && self.fail_streak >= self.reg.fail_after {
                self.health = Health::Critical;
                self.critical_since = Some(Instant::now());
                warn!(%key, failures = self.fail_streak, reason, "health check failing: marked critical");
            } else {
                debug!(%key, failures = self.fail_streak, reason, "health check failed");
            }
            if let Some(since) = self.critical_since {
                if since.elapsed() >= self.reg.deregister_after {
                    self.withdrawn = true;
                }
            }
        }
    }

    async fn deregister(mut self, skip_drain: bool) {
        let key = self.key();
        let mut removed = false;
        // Bounded: a hung etcd must not keep the service from stopping.
        const CALL: Duration = Duration::from_secs(2);
        for attempt in 0..3 {
            match tokio::time::timeout(CALL, self.client.delete(key.clone(), None)).await {
                Ok(Ok(_)) => {
                    removed = true;
                    break;
                }
                Ok(Err(error)) => {
                    warn!(%key, %error, attempt, "deregistration failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => warn!(%key, attempt, "deregistration timed out"),
            }
        }
        if removed {
            info!(%key, "deregistered");
        }
        if !skip_drain && !self.reg.drain.is_zero() {
            info!(%key, drain = ?self.reg.drain, "draining");
            tokio::time::sleep(self.reg.drain).await;
        }
        if let Some(id) = self.lease {
            // Revoking also removes the key if the delete above did not get through.
            match tokio::time::timeout(CALL, self.client.lease_revoke(id)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => warn!(%key, %error, "lease revoke failed; it expires by itself"),
                Err(_) => warn!(%key, "lease revoke timed out; it expires by itself"),
            }
        }
    }
}

/// Whether etcd said the lease does not exist.
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        _ => false,
    }
}
