//! Live reload: SIGHUP reads the config file again, applies the command-line flags over it,
//! and puts into effect what can change without a restart (README "Reloading the
//! configuration"). A file that does not load or validate changes nothing and says why.

use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cache::{Mirror, Update};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::dns::rrl::RateLimiter;
use crate::dns::server::{Live, Transport};
use crate::dns::zone::file::StaticZones;
use crate::dns::zone::forward::Forwarder;
use crate::dns::Handler;
use crate::metrics::Metrics;
use crate::registry::{Layout, Source, Status};

/// What every [`Live`] is built from and shares.
pub(super) struct Parts {
    pub mirror: Arc<Mirror>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    /// The static zones, swapped whole (the handlers share them).
    pub zones: Arc<ArcSwap<StaticZones>>,
    pub tap: Option<Arc<crate::dnstap::Tap>>,
}

/// The forwarder `[forward]` asks for (`None` without upstreams).
pub(super) fn forwarder(cfg: &Config, parts: &Parts) -> Option<Arc<Forwarder>> {
    let f = (!cfg.forward.upstreams.is_empty()).then(|| {
        Forwarder::from_config(&cfg.forward, &parts.metrics).with_tap(parts.tap.clone())
    })?;
    let upstreams: Vec<String> = f.upstreams().map(|a| a.to_string()).collect();
    info!(upstreams = %upstreams.join(","), timeout = ?cfg.forward.timeout, "forwarding other names");
    Some(Arc::new(f))
}

/// A handler, rate limiter and query log for `cfg` (with fresh answer caches).
pub(super) fn build_live(
    cfg: &Config,
    sources: &[Source],
    forwarder: Option<Arc<Forwarder>>,
    rate_limit: Option<Option<Arc<RateLimiter>>>,
    parts: &Parts,
) -> anyhow::Result<Live> {
    let handler = Handler::new(
        &cfg.dns,
        parts.mirror.clone(),
        parts.status.clone(),
        parts.metrics.clone(),
    )
    .context("building the DNS handler")?;
    let sky = sky_zones(sources, &handler)?;
    let handler = handler
        .with_sky(sky)
        .with_outside(
            parts.zones.clone(),
            forwarder,
            cfg.forward.allow_recursion.clone(),
        )
        .with_locality(&cfg.locality);
    // The running limiter when `[rate_limit]` did not change (its buckets go on).
    let rate_limit = rate_limit.unwrap_or_else(|| {
        let limiter = RateLimiter::new(&cfg.rate_limit, &parts.metrics).map(Arc::new);
        if limiter.is_some() {
            info!(
                responses_per_second = cfg.rate_limit.responses_per_second,
                slip = cfg.rate_limit.slip,
                "response rate limiting on (UDP)",
            );
        }
        limiter
    });
    Ok(Live {
        handler: Arc::new(handler),
        rate_limit,
        observer: crate::dns::observe::Observer::new(&cfg.dns, parts.tap.clone()),
    })
}

/// The zones of SkyDNS sources.
pub(super) fn sky_zones(
    sources: &[Source],
    handler: &Handler,
) -> anyhow::Result<Vec<crate::dns::zone::skydns::SkyZone>> {
    use hickory_proto::rr::{LowerName, Name};
    let mut out = Vec::new();
    for source in sources {
        let Layout::Skydns { zones, ttl } = &source.layout else {
            continue;
        };
        for zone in zones {
            let origin = Name::from_ascii(zone).with_context(|| format!("skydns zone {zone}"))?;
            info!(zone = %origin, prefix = %source.prefix, "answering a skydns zone");
            out.push(crate::dns::zone::skydns::SkyZone {
                soa: Default::default(),
                apex: LowerName::new(&origin),
                zone: handler.zone_for(origin)?,
                source: source.id,
                ttl: *ttl,
            });
        }
    }
    Ok(out)
}

/// Settings that only a restart changes; `new` gets the running values back and the names
/// of those that differ are returned.
pub(super) fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($($field:ident).+),* $(,)?) => {$(
            if old.$($field).+ != new.$($field).+ {
                changed.push(stringify!($($field).+));
                new.$($field).+ = old.$($field).+.clone();
            }
        )*};
    }
    keep!(
        listen,
        admin_listen,
        admin_header_timeout,
        admin_max_connections,
        admin_ui,
        etcd,
        snapshot,
        restart,
        xds,
        dnstap,
        dns.zone,
        dns.max_stale,
        dns.udp_fast_path,
        dns.udp_sockets,
        dns.udp_steering,
        dns.udp_receive_buffer,
        dns.tcp_idle_timeout,
        dns.tcp_session_timeout,
        dns.tcp_max_connections,
        dns.tcp_max_connections_per_client,
        dns.tcp_max_pipelined,
        dns.max_pending,
        dns.tls_listen,
        dns.https_listen,
        dns.tls_cert_file,
        dns.tls_key_file,
        dns.tls_client_ca_file,
        dns.tls_handshake_timeout,
        dns.https_max_streams_per_connection,
        dns.https_max_header_bytes,
        dns.https_max_body_bytes,
        dns.https_request_timeout,
        dns.https_max_pending_resets,
    );
    changed
}

/// The registry watch, restarted with other sources when a reload adds or removes some.
pub(super) struct Watch {
    pub spawn: Box<dyn Fn(Vec<Source>, CancellationToken) -> tokio::task::JoinHandle<()> + Send>,
    pub current: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    pub shutdown: CancellationToken,
}

impl Watch {
    pub fn start(&mut self, sources: Vec<Source>) {
        let token = self.shutdown.child_token();
        let task = (self.spawn)(sources, token.clone());
        self.current = Some((token, task));
    }

    /// Stops the watch and waits for it (at shutdown, or before a restart).
    pub async fn stop(&mut self) {
        if let Some((token, task)) = self.current.take() {
            token.cancel();
            if let Err(error) = task.await {
                warn!(%error, "etcd watcher task failed");
            }
        }
    }
}

/// Everything a reload touches.
pub(super) struct Reloader {
    pub args: ServeArgs,
    /// The configuration in effect.
    pub cfg: Config,
    pub parts: Parts,
    pub forwarder: Option<Arc<Forwarder>>,
    pub transport: Arc<Transport>,
    pub certs: Option<Arc<crate::dns::server::tls::Certs>>,
    pub watch: Watch,
    /// The xDS server, when on: it selects instances as the handler's zone says.
    pub xds: Option<crate::xds::Xds>,
    /// The sources the status page lists.
    pub admin_sources: Arc<ArcSwap<Vec<Source>>>,
}

impl Reloader {
    /// Reloads on every SIGHUP until shutdown; then stops the watch.
    pub async fn run(mut self, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hup.recv() => self.reload().await,
                }
            },
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; reloading the configuration needs a restart");
                shutdown.cancelled().await;
            }
        }
        self.watch.stop().await;
    }

    async fn reload(&mut self) {
        info!("SIGHUP: reloading the configuration");
        if let Some(certs) = &self.certs {
            let certs = certs.clone();
            let _ =
                tokio::task::spawn_blocking(move || crate::dns::server::tls::reload(&certs)).await;
        }
        let args = self.args.clone();
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let cfg = Config::load(&args)?;
            let zones = StaticZones::load_dir(&cfg.zones_dir)?;
            Ok((cfg, zones))
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let (mut cfg, zones) = match loaded {
            Ok(l) => l,
            Err(e) => return self.failed(e),
        };
        let restart = keep_restart_only(&self.cfg, &mut cfg);
        if !restart.is_empty() {
            warn!(
                settings = %restart.join(", "),
                "these settings changed but take effect only at a restart: running on with the old values",
            );
        }
        let sources = Source::all(&cfg);
        let forwarder = if cfg.forward == self.cfg.forward {
            self.forwarder.clone()
        } else {
            forwarder(&cfg, &self.parts)
        };
        let rate_limit = (cfg.rate_limit == self.cfg.rate_limit)
            .then(|| self.transport.live().rate_limit.clone());
        let live = match build_live(&cfg, &sources, forwarder.clone(), rate_limit, &self.parts) {
            Ok(live) => live,
            Err(e) => return self.failed(e),
        };
        let mut changed = Vec::new();
        for (name, differs) in [
            ("dns", cfg.dns != self.cfg.dns),
            ("forward", cfg.forward != self.cfg.forward),
            ("rate_limit", cfg.rate_limit != self.cfg.rate_limit),
            ("locality", cfg.locality != self.cfg.locality),
            ("zones_dir", cfg.zones_dir != self.cfg.zones_dir),
            ("sources", cfg.sources != self.cfg.sources),
        ] {
            if differs {
                changed.push(name);
            }
        }
        for (zone, records) in &zones.summary {
            info!(%zone, records, "serving static zone");
        }
        self.parts.zones.store(Arc::new(zones));
        if let Some(xds) = &self.xds {
            xds.set_zone(live.handler.zone().clone());
        }
        self.admin_sources.store(Arc::new(sources.clone()));
        self.transport.set_live(live);
        if cfg.sources != self.cfg.sources {
            self.restart_watch(sources).await;
        }
        self.cfg = cfg;
        self.forwarder = forwarder;
        self.parts.metrics.observe_config_reload("ok");
        info!(changed = %changed.join(","), "configuration reloaded");
    }

    fn failed(&self, e: anyhow::Error) {
        self.parts.metrics.observe_config_reload("error");
        error!(error = %format!("{e:#}"), "configuration reload failed: running on with the configuration in effect");
    }

    /// Watches `sources` instead: the data of sources taken out goes, sources kept resume
    /// their watch where they were, new ones are listed.
    async fn restart_watch(&mut self, sources: Vec<Source>) {
        self.watch.stop().await;
        let kept: Vec<_> = sources.iter().map(|s| s.id).collect();
        let snapshot = self.parts.mirror.load_full();
        let mut gone: Vec<_> = snapshot
            .services
            .values()
            .flat_map(|s| s.instances.values().map(|i| i.source))
            .chain(snapshot.domains.keys().map(|(id, _)| *id))
            .filter(|id| !kept.contains(id))
            .collect();
        gone.sort_unstable_by_key(|id| id.0);
        gone.dedup();
        let revision = snapshot.revision;
        drop(snapshot);
        if !gone.is_empty() {
            info!(
                sources = gone.len(),
                "dropping the data of sources no longer configured"
            );
            self.parts.mirror.apply(
                gone.into_iter().map(|id| Update::Reset {
                    source: Some(id),
                    instances: Vec::new(),
                    domains: Vec::new(),
                    keep: Vec::new(),
                }),
                revision,
            );
        }
        for s in sources.iter().filter(|s| s.layout != Layout::Native) {
            info!(format = %s.layout, prefix = %s.prefix, "reading a framework layout");
        }
        self.watch.start(sources);
    }
}
