//! List, then watch from the next revision; on any failure reconnect with backoff and resume from
//! the last applied revision, or re-list when etcd has compacted it away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{parse_entry, parse_key, Backoff, RegistryError, Status};
use crate::cache::{Mirror, Update};
use crate::config::EtcdConfig;
use crate::metrics::Metrics;

/// How often to repeat the "still stale" warning while etcd stays unreachable.
const STALE_REMINDER: Duration = Duration::from_secs(30);

/// Builds an etcd client. Connecting is lazy: this fails only on bad options (for example an
/// unreadable TLS file), never because etcd is down.
pub async fn connect(cfg: &EtcdConfig) -> anyhow::Result<Client> {
    use anyhow::Context;
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(cfg.keepalive_interval, cfg.keepalive_timeout)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &cfg.tls {
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading etcd CA {}", ca.display()))?;
            t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let c = std::fs::read(cert)
                .with_context(|| format!("reading etcd client certificate {}", cert.display()))?;
            let k = std::fs::read(key)
                .with_context(|| format!("reading etcd client key {}", key.display()))?;
            t = t.identity(etcd_client::Identity::from_pem(c, k));
        }
        if let Some(domain) = &tls.server_name {
            t = t.domain_name(domain.clone());
        }
        opts = opts.with_tls(t);
    }
    Client::connect(&cfg.endpoints, Some(opts))
        .await
        .with_context(|| format!("configuring etcd client for {}", cfg.endpoints.join(",")))
}

/// Keeps a [`Mirror`] equal to everything under one etcd prefix.
pub struct Watcher {
    client: Client,
    prefix: String,
    mirror: Arc<Mirror>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// How often to ask etcd to confirm the watch is current.
    progress_interval: Duration,
    lists: u64,
    max_stale: Option<Duration>,
    /// Whether "past max_stale" was logged for the current outage.
    too_stale_logged: bool,
    /// Re-lists since the last established watch.
    relists_in_a_row: u32,
    /// Last revision applied to the mirror; `None` means the next session must list first.
    revision: Option<i64>,
    /// The etcd cluster the mirror came from; another one means its revisions mean nothing here.
    cluster_id: Option<u64>,
    last_stale_log: Option<Instant>,
}

impl Watcher {
    pub fn new(
        client: Client,
        cfg: &EtcdConfig,
        mirror: Arc<Mirror>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            prefix: cfg.prefix.clone(),
            mirror,
            status,
            metrics,
            progress_interval: cfg.keepalive_interval.max(Duration::from_secs(1)) * 2,
            lists: 0,
            max_stale: None,
            too_stale_logged: false,
            relists_in_a_row: 0,
            backoff: Backoff::new(cfg.retry_min, cfg.retry_max),
            revision: None,
            cluster_id: None,
            last_stale_log: None,
        }
    }

    /// Past `max_stale` without etcd, say so (once per outage): registry names answer SERVFAIL.
    pub fn with_max_stale(mut self, max_stale: Option<Duration>) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// Runs until `shutdown` is cancelled. Never returns an error: etcd outages are normal.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let err = tokio::select! {
                _ = shutdown.cancelled() => return,
                Err(e) = self.session() => e,
            };
            if let RegistryError::Compacted { .. } | RegistryError::History(_) = err {
                // Not an outage: etcd is there, our resume point is gone. Re-list at once the
                // first time; if it keeps happening (endpoints of two clusters?), back off.
                warn!(error = %err, prefix = %self.prefix, "watch lost its revision");
                self.revision = None;
                self.relists_in_a_row += 1;
                if self.relists_in_a_row > 1 {
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                continue;
            }
            let since = self.status.set_disconnected();
            if !self.too_stale_logged && self.status.is_too_stale(self.max_stale) {
                self.too_stale_logged = true;
                error!(
                    stale_since = %humantime::format_rfc3339_seconds(since),
                    max_stale = ?self.max_stale.unwrap_or_default(),
                    "data older than max_stale: registry names now answer SERVFAIL until etcd is back",
                );
            }
            let delay = self.backoff.next_delay();
            let remind = self
                .last_stale_log
                .is_none_or(|t| t.elapsed() >= STALE_REMINDER);
            if remind {
                self.last_stale_log = Some(Instant::now());
                warn!(
                    error = %err,
                    stale_since = %humantime::format_rfc3339_seconds(since),
                    stale_for = ?since.elapsed().unwrap_or_default(),
                    revision = self.revision.unwrap_or(0),
                    retry_in = ?delay,
                    "etcd unreachable; serving the last known state",
                );
            } else {
                debug!(error = %err, retry_in = ?delay, "etcd still unreachable");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's worth of work: list if needed, then follow the watch until it fails.
    async fn session(&mut self) -> Result<Infallible, RegistryError> {
        let start = match self.revision {
            Some(rev) => rev + 1,
            None => self.list().await? + 1,
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let mut stream = self.client.watch(self.prefix.clone(), Some(opts)).await?;
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                msg = stream.message() => msg,
                _ = progress.tick() => {
                    // etcd answers with a progress notification: proof the mirror is current.
                    stream.request_progress().await?;
                    continue;
                }
            };
            let resp = msg?.ok_or(RegistryError::StreamClosed)?;
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Err(RegistryError::Compacted {
                        wanted: start,
                        compacted: resp.compact_revision(),
                    });
                }
                return Err(RegistryError::Canceled(resp.cancel_reason().to_string()));
            }
            if resp.created() {
                // An etcd rebuilt from scratch (or another cluster behind the same address) has
                // revisions below ours or another cluster id: resuming would miss everything.
                if let Some(h) = resp.header() {
                    if self.cluster_id.is_some_and(|id| id != h.cluster_id()) {
                        return Err(RegistryError::History("etcd cluster id changed".into()));
                    }
                    if h.revision() < start - 1 {
                        // A follower can lag a little; ask through the leader (a linearizable
                        // read) before concluding that etcd was rebuilt with a lower history.
                        let now = self
                            .client
                            .get(
                                self.prefix.clone(),
                                Some(GetOptions::new().with_prefix().with_limit(1)),
                            )
                            .await?
                            .header()
                            .map_or(i64::MAX, |h| h.revision());
                        if now < start - 1 {
                            return Err(RegistryError::History(format!(
                                "etcd is at revision {now}, behind the {} already applied",
                                start - 1
                            )));
                        }
                    }
                }
                self.on_connected(start - 1);
                continue;
            }
            // Resume point: the last event actually received. The header revision is the store's
            // current one and can run ahead of events etcd still has queued for a catching-up
            // watcher (and, before etcd 3.4.24, of progress notifications), so it is never used.
            let last_event = resp
                .events()
                .iter()
                .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                .max();
            let mut updates = Vec::with_capacity(resp.events().len());
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match parse_entry(&self.prefix, kv.key(), kv.value()) {
                        Ok((service, instance)) => updates.push(Update::Put { service, instance }),
                        Err(error) => {
                            self.metrics.invalid_values.inc();
                            warn_skipped(kv.key(), &error);
                        }
                    },
                    // Keys that never parsed were never in the mirror: nothing to delete.
                    EventType::Delete => {
                        if let Ok((service, id)) = parse_key(&self.prefix, kv.key()) {
                            updates.push(Update::Delete { service, id });
                        }
                    }
                }
            }
            // Progress notifications carry no events but still confirm we are current.
            self.status.confirm();
            let Some(revision) = last_event else { continue };
            let revision = revision.max(self.revision.unwrap_or(0));
            let applied = self.mirror.apply(updates, revision);
            self.revision = Some(revision);
            if !applied.changed.is_empty() {
                debug!(revision, changed = ?applied.changed, "applied watch events");
            }
        }
    }

    /// Lists everything under the prefix and replaces the mirror with it. Returns the revision.
    async fn list(&mut self) -> Result<i64, RegistryError> {
        let resp = self
            .client
            .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.lists += 1;
        if self.lists > 1 {
            self.metrics.relists.inc();
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.cluster_id = resp.header().map(|h| h.cluster_id());
        let current = self.mirror.load_full();
        let mut instances = Vec::with_capacity(resp.kvs().len());
        let mut skipped = 0usize;
        for kv in resp.kvs() {
            match parse_entry(&self.prefix, kv.key(), kv.value()) {
                Ok(entry) => instances.push(entry),
                Err(error) => {
                    skipped += 1;
                    self.metrics.invalid_values.inc();
                    warn_skipped(kv.key(), &error);
                    // A bad value over a good one keeps the good one, as the watch path does.
                    if let Ok((service, id)) = parse_key(&self.prefix, kv.key()) {
                        let prev = current
                            .service(service.as_str())
                            .and_then(|s| s.instances.get(&id));
                        if let Some(prev) = prev {
                            instances.push((service, prev.clone()));
                        }
                    }
                }
            }
        }
        let count = instances.len();
        let applied = self.mirror.apply([Update::Reset { instances }], revision);
        let snapshot = self.mirror.load();
        info!(
            prefix = %self.prefix,
            revision,
            services = snapshot.services.len(),
            instances = count,
            skipped,
            changed = applied.changed.len(),
            "registry listed",
        );
        self.revision = Some(revision);
        Ok(revision)
    }

    fn on_connected(&mut self, revision: i64) {
        let was_stale = self.status.stale_since();
        self.status.set_connected();
        self.backoff.reset();
        self.last_stale_log = None;
        self.too_stale_logged = false;
        self.relists_in_a_row = 0;
        match was_stale {
            Some(since) => info!(
                revision,
                stale_for = ?SystemTime::now().duration_since(since).unwrap_or_default(),
                "etcd reachable again; watching",
            ),
            None => info!(revision, prefix = %self.prefix, "watching etcd"),
        }
    }
}

fn warn_skipped(key: &[u8], error: &super::EntryError) {
    warn!(key = %String::from_utf8_lossy(key), %error, "skipping registry entry");
}
