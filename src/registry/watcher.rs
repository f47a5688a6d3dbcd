//! List, then watch from the next revision; on any failure reconnect with backoff and resume from
//! the last applied revision, or re-list when etcd has compacted it away. Every source (the
//! native prefix and each framework layout) is listed and watched on its own revision, over one
//! gRPC watch stream, so a compaction behind one source re-lists that source alone.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KvClient, WatchClient, WatchOptions,
    WatchResponse,
};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::list::{list, Listed};
use super::watch_set::{Action, Event, Header, Response, WatchSet};
use super::{is_source_error, Backoff, ErrorKind, RegistryError, Status};
use super::{Entry, Key, Source};
use crate::cache::{Kept, Mirror, Update};
use crate::config::EtcdConfig;
use crate::metrics::Metrics;

/// How often to repeat the "still stale" warning while etcd stays unreachable.
const STALE_REMINDER: Duration = Duration::from_secs(30);

/// A list at least this large is followed by returning freed memory to the OS.
const TRIM_AFTER_KEYS: usize = 10_000;

/// Most updates applied as one batch: watch messages already received are coalesced into one
/// published snapshot up to this many updates.
const COALESCE_MAX: usize = 10_000;

/// Builds an etcd client. Connecting is lazy: this fails only on bad options (for example an
/// unreadable TLS file), never because etcd is down.
pub async fn connect(cfg: &EtcdConfig) -> anyhow::Result<Client> {
    use anyhow::Context;
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(cfg.keepalive_interval, cfg.keepalive_timeout)
        .with_keep_alive_while_idle(true)
        // A member cut off from its cluster's leader keeps an open, silent watch (etcd 3.4
        // answers progress requests locally): with this, it cancels the watch instead.
        .with_require_leader(true);
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

/// Runs watchers built by `make` until `shutdown`: a watcher that ends or panics is logged as
/// an error, counted (`ruddr_registry_watcher_restarts_total`) and replaced after a backoff.
/// Until the new one is established the data is stale, exactly as in an etcd outage.
pub async fn supervise(
    make: impl Fn() -> Watcher,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let task = tokio::spawn(make().run(shutdown.clone()));
        let ended = task.await;
        if shutdown.is_cancelled() {
            return;
        }
        let why = match ended {
            Ok(()) => "the watcher ended".to_string(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("the watcher panicked: {text}")
            }
            Err(e) => format!("the watcher task failed: {e}"),
        };
        // A watcher that ran a good while before failing starts the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        metrics.watcher_restarts.inc();
        status.set_disconnected();
        status.set_problem(ErrorKind::WatcherFailed, why.clone());
        error!(reason = %why, restart_in = ?delay, "etcd watcher stopped; serving the last known state until it is restarted");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A source and where its watch resumes.
struct Watched {
    source: Source,
    /// [`Source::fingerprint`], recorded with every position of this source.
    fingerprint: u32,
    /// Last revision applied from this source; `None` means it must be listed first.
    revision: Option<i64>,
    /// Why etcd refuses this source (permission denied), if it does: it is left out of the watch
    /// and its names keep their last data, while the other sources go on.
    refused: Option<String>,
}

/// Keeps a [`Mirror`] equal to everything under the watched prefixes.
pub struct Watcher {
    /// Both with the decode limit of `etcd.max_message_bytes` (etcd-client sets it per client).
    kv: KvClient,
    watch: WatchClient,
    page_size: u32,
    sources: Vec<Watched>,
    mirror: Arc<Mirror>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// How often to ask etcd to confirm the watch is current.
    progress_interval: Duration,
    /// Without an event or a progress notification for this long, the watch is not trusted.
    confirm_within: Duration,
    /// Fault injection for tests (the `test-hooks` feature): panics left to inject once the
    /// watch is established.
    #[cfg(feature = "test-hooks")]
    inject_panics: Arc<std::sync::atomic::AtomicU32>,
    /// How often to try again a source etcd refused (the reconnect backoff's longest delay).
    source_retry: Duration,
    /// The longest random wait before a re-list after a compaction (`etcd.relist_jitter`).
    relist_jitter: Duration,
    lists: u64,
    /// Whether "past max_stale" was logged for the current outage.
    too_stale_logged: bool,
    /// Re-lists since the last established watch.
    relists_in_a_row: u32,
    /// The highest revision applied from any source (the mirror's revision).
    high: i64,
    /// The etcd cluster the mirror came from; another one means its revisions mean nothing here.
    cluster_id: Option<u64>,
    last_stale_log: Option<Instant>,
    /// Whether this watcher's first established watch was counted
    /// (`ruddr_registry_resumes_total`).
    resume_counted: bool,
    /// Whether etcd was asked if it still has the history the resumed sources start from.
    resume_checked: bool,
}

impl Watcher {
    /// Watches `sources`, each listed and watched on its own revision.
    pub fn new(
        client: Client,
        cfg: &EtcdConfig,
        sources: Vec<Source>,
        mirror: Arc<Mirror>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limit = cfg.max_message_bytes;
        // Where the mirror's data stands (from the snapshot file at start, or what an earlier
        // watcher applied): sources with a position resume their watch from there instead of
        // listing. The watch itself checks the rest: the cluster id, a compaction, a history
        // behind the position.
        let positions = mirror.load().positions.clone();
        let known = positions.cluster_id != 0;
        let mut sources: Vec<Watched> = sources
            .into_iter()
            .map(|source| Watched {
                fingerprint: source.fingerprint(),
                source,
                revision: None,
                refused: None,
            })
            .collect();
        let resume = |w: &Watched| positions.of(w.source.id, w.fingerprint).filter(|_| known);
        let high = sources.iter().filter_map(resume).max().unwrap_or(0);
        for w in &mut sources {
            w.revision = resume(w);
            let s = &w.source;
            match w.revision {
                Some(revision) => info!(
                    prefix = %s.prefix,
                    revision,
                    "resuming the watch after the revision the data holds (no list unless etcd no longer has it)",
                ),
                None if known => {
                    info!(prefix = %s.prefix, "listing: this source has no position in the data yet")
                }
                None if high == 0 && mirror.load().instance_count() > 0 => info!(
                    prefix = %s.prefix,
                    "listing: the data does not say where it stands in etcd's history (a snapshot written by an older version)",
                ),
                None => {}
            }
        }
        Self {
            kv: client.kv_client().max_decoding_message_size(limit),
            watch: client.watch_client().max_decoding_message_size(limit),
            page_size: cfg.list_page_size,
            sources,
            mirror,
            status,
            metrics,
            progress_interval: cfg.progress_interval(),
            confirm_within: cfg.confirm_within,
            #[cfg(feature = "test-hooks")]
            inject_panics: Arc::default(),
            source_retry: cfg.retry_max.max(Duration::from_secs(1)),
            relist_jitter: cfg.relist_jitter,
            lists: 0,
            too_stale_logged: false,
            relists_in_a_row: 0,
            backoff: Backoff::new(cfg.retry_min, cfg.retry_max),
            high,
            cluster_id: known.then_some(positions.cluster_id),
            last_stale_log: None,
            resume_counted: false,
            resume_checked: false,
        }
    }

    /// For tests (the `test-hooks` feature): the watcher panics at a progress request once its watch is established,
    /// while `panics` is above zero (and counts it down), so that supervision can be tested on
    /// the real binary.
    #[cfg(feature = "test-hooks")]
    pub fn with_injected_panics(mut self, panics: Arc<std::sync::atomic::AtomicU32>) -> Self {
        self.inject_panics = panics;
        self
    }

    /// Runs until `shutdown` is cancelled. Never returns an error: etcd outages are normal.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.sources.is_empty() {
            return;
        }
        loop {
            let err = tokio::select! {
                _ = shutdown.cancelled() => return,
                Err(ended) = self.session() => match ended {
                    Ended::RetryRefused => continue,
                    Ended::Failed(e) => e,
                },
            };
            let kind = err.kind();
            self.metrics.observe_registry_error(kind.as_str());
            if let RegistryError::Compacted { .. } | RegistryError::History(_) = err {
                // Not an outage: etcd is there, our resume point is gone. Re-list after a
                // random wait of up to etcd.relist_jitter the first time; if it keeps
                // happening (endpoints of two clusters?), back off.
                // A compaction re-lists the source that hit it (the session marked it); another
                // history re-lists them all.
                warn!(error = %err, "watch lost its revision");
                if let RegistryError::History(_) = err {
                    self.forget_history();
                }
                self.relists_in_a_row += 1;
                if self.relists_in_a_row == 1 && !self.relist_jitter.is_zero() {
                    // Spread: every replica of a fleet may have hit the same compaction.
                    let delay = self.relist_jitter.mul_f64(rand::random::<f64>());
                    debug!(?delay, "re-list after a random delay (etcd.relist_jitter)");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
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
            self.status.set_problem(kind, err.to_string());
            if !self.too_stale_logged && self.status.freshness() == crate::cache::Freshness::Expired
            {
                self.too_stale_logged = true;
                error!(
                    stale_since = %humantime::format_rfc3339_seconds(since),
                    max_stale = ?self.status.max_stale().unwrap_or_default(),
                    "data older than max_stale: registry names now answer SERVFAIL until etcd is back",
                );
            }
            let delay = self.backoff.next_delay();
            let remind = self
                .last_stale_log
                .is_none_or(|t| t.elapsed() >= STALE_REMINDER);
            if remind {
                self.last_stale_log = Some(Instant::now());
                let stale_for = since.elapsed().unwrap_or_default();
                if kind == ErrorKind::Unreachable {
                    warn!(
                        error = %err,
                        stale_since = %humantime::format_rfc3339_seconds(since),
                        ?stale_for,
                        revision = self.high,
                        retry_in = ?delay,
                        "etcd unreachable; serving the last known state",
                    );
                } else {
                    // etcd answers, but not with what ruddr needs: waiting will not fix it.
                    error!(
                        error = %err,
                        kind = kind.as_str(),
                        stale_since = %humantime::format_rfc3339_seconds(since),
                        ?stale_for,
                        revision = self.high,
                        retry_in = ?delay,
                        "{}; serving the last known state",
                        kind.describe(),
                    );
                }
            } else {
                debug!(error = %err, retry_in = ?delay, "etcd still failing");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's worth of work: list the sources that need it, then follow one watch per
    /// source (all on one stream) until it fails.
    async fn session(&mut self) -> Result<Infallible, Ended> {
        if !self.resume_checked {
            self.check_resume().await?;
            self.resume_checked = true;
        }
        for i in 0..self.sources.len() {
            if self.sources[i].revision.is_none() {
                match self.list(i).await {
                    Ok(()) => self.accepted(i),
                    Err(e) if is_source_error(&e) => self.refused(i, e.to_string()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let sources = self.sources.iter().map(|w| w.source.clone()).collect();
        let mut set = WatchSet::new(sources, self.cluster_id);
        let mut stream: Option<etcd_client::WatchStream> = None;
        for (i, w) in self.sources.iter().enumerate() {
            if w.refused.is_some() {
                continue;
            }
            let start = w.revision.unwrap_or(0) + 1;
            // Fragmented: a catch-up larger than a message arrives in parts, each within the
            // decode limit; its events count only once the last part is in.
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(start)
                .with_progress_notify()
                .with_fragment();
            let key = w.source.prefix.clone();
            match &mut stream {
                None => stream = Some(self.watch.watch(key, Some(opts)).await?),
                Some(s) => s.watch(key, Some(opts)).await?,
            }
            set.watching(i, start);
        }
        let mut retry = tokio::time::interval_at(
            tokio::time::Instant::now() + self.source_retry,
            self.source_retry,
        );
        let Some(mut stream) = stream else {
            // Nothing to follow: as good as an outage (stale, backoff, retry).
            return Err(RegistryError::AllRefused.into());
        };
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Lists before this point do not count against confirmation.
        let watching_since = tokio::time::Instant::now();
        loop {
            let msg = tokio::select! {
                msg = stream.message() => msg,
                _ = retry.tick(), if self.sources.iter().any(|w| w.refused.is_some()) => {
                    // A new session lists the refused sources again and resumes the others.
                    return Err(Ended::RetryRefused);
                }
                _ = progress.tick() => {
                    // Only what etcd confirmed counts: without an event or a progress
                    // notification for confirm_within, the data may be behind.
                    let unconfirmed = self
                        .status
                        .confirmed_age()
                        .unwrap_or(Duration::MAX)
                        .min(watching_since.elapsed());
                    if unconfirmed > self.confirm_within {
                        return Err(RegistryError::Unconfirmed(unconfirmed).into());
                    }
                    #[cfg(feature = "test-hooks")]
                    self.maybe_inject_panic();
                    // etcd answers with a progress notification: proof the mirror is current.
                    stream.request_progress().await?;
                    continue;
                }
            };
            let mut batch = Batch::default();
            self.receive(msg?, &mut set, &mut batch).await?;
            // Coalesce a burst: what etcd has already sent is applied and published as one
            // snapshot rather than one per message.
            while batch.updates.len() < COALESCE_MAX {
                let Some(msg) = stream.message().now_or_never() else {
                    break;
                };
                self.receive(msg?, &mut set, &mut batch).await?;
            }
            self.commit(batch);
        }
    }

    /// Before the first watch of sources resumed from a position (the snapshot's, or an
    /// earlier watcher's): asks etcd, one key read at each position, whether it still has
    /// that history. A compacted revision lists that source; another cluster or a store behind
    /// the position lists them all. The watch would find the same, but only after it was
    /// created, so this decides how the watcher gets current before it says it is.
    async fn check_resume(&mut self) -> Result<(), RegistryError> {
        for i in 0..self.sources.len() {
            let Some(revision) = self.sources[i].revision else {
                continue;
            };
            let prefix = self.sources[i].source.prefix.clone();
            let opts = GetOptions::new()
                .with_revision(revision)
                .with_limit(1)
                .with_keys_only();
            let why = match self.kv.get(prefix.clone(), Some(opts)).await {
                Ok(resp) => match resp.header() {
                    Some(h) if self.cluster_id.is_some_and(|id| id != h.cluster_id()) => {
                        Some(format!("etcd is another cluster (id {:x})", h.cluster_id()))
                    }
                    Some(h) if h.revision() < revision => Some(format!(
                        "etcd is at revision {}, behind the {revision} the data holds",
                        h.revision()
                    )),
                    _ => None,
                },
                Err(e) => {
                    let e = RegistryError::from(e);
                    match e.kind() {
                        ErrorKind::Compacted => {
                            info!(%prefix, revision, "listing: etcd compacted the revision the data holds");
                            self.sources[i].revision = None;
                            continue;
                        }
                        // Not allowed to read it (any more): the list says so and leaves the
                        // source out, as at a first start.
                        ErrorKind::Refused => {
                            self.sources[i].revision = None;
                            continue;
                        }
                        // etcd answers a revision above its own with "required revision is a
                        // future revision": a store rebuilt behind the data.
                        _ if e.to_string().contains("future revision") => Some(format!(
                            "etcd has not reached revision {revision}, which the data holds"
                        )),
                        _ => return Err(e),
                    }
                }
            };
            if let Some(why) = why {
                info!(reason = %why, "listing every source: the data's revisions mean nothing to this etcd");
                self.forget_history();
                return Ok(());
            }
        }
        Ok(())
    }

    /// The history every resume point refers to is gone (another cluster, a store behind
    /// them): every source lists, and neither this watcher nor a restart (the snapshot writes
    /// the mirror's positions) resumes from them.
    fn forget_history(&mut self) {
        for w in &mut self.sources {
            w.revision = None;
        }
        self.high = 0;
        self.cluster_id = None;
        let revision = self.mirror.load().revision;
        self.mirror.apply([Update::ForgetPositions], revision);
    }

    /// Takes one watch message: carries out what `set` makes of it, events into `batch`.
    async fn receive(
        &mut self,
        resp: Option<WatchResponse>,
        set: &mut WatchSet,
        batch: &mut Batch,
    ) -> Result<(), RegistryError> {
        let resp = resp.ok_or(RegistryError::StreamClosed)?;
        let data = Response {
            watch_id: resp.watch_id(),
            created: resp.created(),
            canceled: resp.canceled(),
            cancel_reason: resp.cancel_reason(),
            compact_revision: resp.compact_revision(),
            fragment: resp.0.fragment,
            header: resp.header().map(|h| Header {
                revision: h.revision(),
                cluster_id: h.cluster_id(),
            }),
            events: resp
                .events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some(Event {
                        is_put: e.event_type() == EventType::Put,
                        key: kv.key(),
                        value: kv.value(),
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect(),
        };
        let metrics = &self.metrics;
        let action = set.receive(&data, &mut |source, key, error| {
            metrics.invalid_values.inc();
            warn_skipped(source, key, error);
        });
        match action {
            Action::Nothing => {}
            Action::Established => self.on_connected(),
            Action::Behind {
                source,
                applied,
                established,
            } => {
                // A follower can lag a little; ask through the leader (a linearizable read)
                // before concluding that etcd was rebuilt with a lower history.
                let key = source.map_or(String::new(), |i| self.sources[i].source.prefix.clone());
                let now = self
                    .kv
                    .get(key, Some(GetOptions::new().with_prefix().with_limit(1)))
                    .await?
                    .header()
                    .map_or(i64::MAX, |h| h.revision());
                if now < applied {
                    return Err(RegistryError::History(format!(
                        "etcd is at revision {now}, behind the {applied} already applied"
                    )));
                }
                if established {
                    self.on_connected();
                }
            }
            Action::Apply { updates, revisions } => {
                self.status.confirm();
                batch.updates.extend(updates);
                batch.revisions.extend(revisions);
            }
            Action::Relist {
                source,
                relist,
                wanted,
                compacted,
            } => {
                for i in relist {
                    self.sources[i].revision = None;
                }
                return Err(RegistryError::Compacted {
                    prefix: self.sources[source].source.prefix.clone(),
                    wanted,
                    compacted,
                });
            }
            Action::Refused {
                source,
                reason,
                established,
            } => {
                self.refused(source, reason);
                if established {
                    self.on_connected();
                }
            }
            Action::History(why) => return Err(RegistryError::History(why)),
            Action::Canceled(reason) => return Err(RegistryError::Canceled(reason)),
        }
        Ok(())
    }

    /// Applies a batch of received events as one snapshot and moves the resume points.
    fn commit(&mut self, batch: Batch) {
        if batch.revisions.is_empty() {
            return;
        }
        for &(i, revision) in &batch.revisions {
            let w = &mut self.sources[i];
            w.revision = Some(revision.max(w.revision.unwrap_or(0)));
            self.high = self.high.max(revision);
        }
        let events = batch.updates.len();
        let cluster_id = self.cluster_id.unwrap_or(0);
        let positions = batch.revisions.iter().map(|&(i, revision)| {
            let revision = self.sources[i].revision.unwrap_or(revision);
            let position = Update::Position {
                source: self.sources[i].source.id,
                fingerprint: self.sources[i].fingerprint,
                revision,
                cluster_id,
            };
            (revision, position)
        });
        let updates: Vec<(i64, Update)> = batch.updates.into_iter().chain(positions).collect();
        let applied = self.mirror.apply_at(updates, self.high);
        if !applied.changed.is_empty() || applied.domains_changed {
            debug!(
                revision = self.high,
                events,
                changed = applied.changed.len(),
                domains_changed = applied.domains_changed,
                "applied watch events",
            );
        }
    }

    /// Lists everything under source `i`'s prefix (in pages, at one revision) and replaces
    /// that source's part of the mirror with it.
    async fn list(&mut self, i: usize) -> Result<(), RegistryError> {
        let listing = Instant::now();
        let source = &self.sources[i].source;
        let mut instances: Vec<(crate::cache::ServiceName, crate::cache::Instance)> = Vec::new();
        let mut keep = Vec::new();
        // Keys holding several instances: they go into the listing, and their ownership is
        // recorded again (a reset forgets it).
        let mut keyed = Vec::new();
        let mut domains = Vec::new();
        let mut skipped = 0usize;
        let metrics = &self.metrics;
        let header = list(&mut self.kv, &source.prefix, self.page_size, None, |item| {
            let kv = match item {
                Listed::Kv(kv) => kv,
                Listed::Restart => {
                    instances.clear();
                    keep.clear();
                    keyed.clear();
                    domains.clear();
                    skipped = 0;
                    return;
                }
            };
            match source.entry(kv.key(), kv.value()) {
                Ok(Some(Entry::Instance(service, instance))) => {
                    // Keys come sorted: instances of a service share its name's allocation.
                    let service = match instances.last() {
                        Some((last, _)) if *last == service => last.clone(),
                        _ => service,
                    };
                    instances.push((service, instance))
                }
                Ok(Some(Entry::Instances {
                    service,
                    key,
                    instances: several,
                })) => {
                    instances.extend(several.iter().map(|i| (service.clone(), i.clone())));
                    keyed.push((service, key, several));
                }
                Ok(Some(Entry::Domain(key, record))) => domains.push((key, record)),
                Ok(None) => {}
                Err(error) => {
                    skipped += 1;
                    metrics.invalid_values.inc();
                    warn_skipped(source, kv.key(), &error);
                    // A bad value over a good one keeps the good one, as the watch path does:
                    // the mirror keeps what the key held.
                    match source.key(kv.key()) {
                        Ok(Key::Instance(service, id)) => keep.push(Kept::Instance(service, id)),
                        Ok(Key::Domain(key)) => keep.push(Kept::Domain(key)),
                        Err(_) => {}
                    }
                }
            }
        })
        .await?;
        self.lists += 1;
        // The first list of each source is the start, not a re-list.
        if self.lists > self.sources.len() as u64 {
            self.metrics.relists.inc();
        }
        let revision = header.revision;
        if self.cluster_id.is_some_and(|id| id != header.cluster_id) {
            // The other sources' revisions came from another cluster: re-list them all.
            return Err(RegistryError::History("etcd cluster id changed".into()));
        }
        self.cluster_id = Some(header.cluster_id);
        let (source, fingerprint) = (&self.sources[i].source, self.sources[i].fingerprint);
        let (count, entries) = (instances.len(), domains.len());
        self.high = self.high.max(revision);
        let replaces = keyed
            .into_iter()
            .map(|(service, key, instances)| Update::Replace {
                service,
                source: source.id,
                key,
                instances,
            });
        let reset = Update::Reset {
            source: Some(source.id),
            instances,
            domains,
            keep,
        };
        let applying = Instant::now();
        let position = Update::Position {
            source: source.id,
            fingerprint,
            revision,
            cluster_id: header.cluster_id,
        };
        let applied = self.mirror.apply(
            std::iter::once(reset)
                .chain(replaces)
                .chain(std::iter::once(position)),
            self.high,
        );
        let applied_in = applying.elapsed();
        if header.keys >= TRIM_AFTER_KEYS {
            // The pages and the parsed listing are gone now: give their memory back.
            tokio::task::spawn_blocking(crate::memory::trim);
        }
        info!(
            prefix = %source.prefix,
            format = %source.layout,
            revision,
            pages = header.pages,
            instances = count,
            entries,
            skipped,
            changed = applied.changed.len(),
            listed_in = ?listing.elapsed(),
            etcd_wait = ?header.waited,
            applied_in = ?applied_in,
            "registry listed",
        );
        self.sources[i].revision = Some(revision);
        Ok(())
    }

    /// etcd refuses source `i`: say so (once per reason), leave its data as it is.
    fn refused(&mut self, i: usize, reason: String) {
        let w = &mut self.sources[i];
        if w.refused.as_deref() != Some(reason.as_str()) {
            error!(
                prefix = %w.source.prefix,
                format = %w.source.layout,
                %reason,
                retry_in = ?self.source_retry,
                "etcd refuses this source; its names keep their last known data",
            );
        }
        self.status
            .set_source_refused(&w.source.prefix, Some(&reason));
        w.refused = Some(reason);
        w.revision = None;
        self.count_refused();
    }

    fn accepted(&mut self, i: usize) {
        let w = &mut self.sources[i];
        if w.refused.take().is_some() {
            info!(prefix = %w.source.prefix, "etcd serves this source again");
            self.status.set_source_refused(&w.source.prefix, None);
        }
        self.count_refused();
    }

    fn count_refused(&self) {
        let n = self.sources.iter().filter(|w| w.refused.is_some()).count();
        self.metrics.sources_failing.set(n as i64);
    }

    #[cfg(feature = "test-hooks")]
    fn maybe_inject_panic(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        // Only once the watch is up: a progress tick before that (the first one fires at once)
        // must not use up a failure without causing it.
        if !self.status.is_connected() {
            return;
        }
        let left = self
            .inject_panics
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        if left.is_ok() {
            panic!("injected watcher failure (test switch RUDDR_TEST_WATCHER_PANICS)");
        }
    }

    /// How this watcher got current, counted and logged once (at start, or after a watcher
    /// restart): by resuming its watch alone, or by listing.
    fn count_resume(&mut self, how: &'static str) {
        if !self.resume_counted {
            self.resume_counted = true;
            self.metrics.observe_resume(how);
            info!(how, revision = self.high, "registry current");
        }
    }

    fn on_connected(&mut self) {
        // A session restarted without an outage (a re-list, a retry of a refused source).
        let already = self.status.is_connected();
        let was_stale = self.status.stale_since();
        self.status.set_connected();
        self.count_resume(if self.lists > 0 { "list" } else { "watch" });
        self.backoff.reset();
        self.last_stale_log = None;
        self.too_stale_logged = false;
        self.relists_in_a_row = 0;
        let prefixes: Vec<&str> = self
            .sources
            .iter()
            .map(|w| w.source.prefix.as_str())
            .collect();
        match was_stale {
            Some(since) => info!(
                revision = self.high,
                stale_for = ?SystemTime::now().duration_since(since).unwrap_or_default(),
                "etcd reachable again; watching",
            ),
            None if already => debug!(revision = self.high, "watch re-established"),
            None => info!(revision = self.high, prefixes = %prefixes.join(","), "watching etcd"),
        }
    }
}

/// Why a watch session ended.
enum Ended {
    /// Time to list the sources etcd refused again (the others resume): not a failure.
    RetryRefused,
    Failed(RegistryError),
}

impl<E: Into<RegistryError>> From<E> for Ended {
    fn from(e: E) -> Self {
        Ended::Failed(e.into())
    }
}

/// Events received together, applied as one snapshot.
#[derive(Default)]
struct Batch {
    /// Each with the revision of the event that made it.
    updates: Vec<(i64, Update)>,
    /// The last complete revision received per source.
    revisions: Vec<(usize, i64)>,
}

fn warn_skipped(source: &Source, key: &[u8], error: &super::EntryError) {
    warn!(
        key = %String::from_utf8_lossy(key),
        format = %source.layout,
        %error,
        "skipping registry entry",
    );
}
