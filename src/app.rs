//! Wiring: builds the mirror, the etcd watcher and the DNS server, runs them, and shuts them
//! down together: one cancellation token, then a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::cache::{Mirror, Update};
use crate::config::{Config, ConfigError};
use crate::dns::forward::Forwarder;
use crate::dns::rrl::RateLimiter;
use crate::dns::server::{Limits, Transport};
use crate::dns::zones::StaticZones;
use crate::dns::Handler;
use crate::metrics::Metrics;
use crate::persist;
use crate::registry::{self, Status, Watcher};

/// How long in-flight queries may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);

/// Runs `ruddr serve` until `shutdown` completes or the DNS server fails. `zones` are the
/// static zones, loaded (and checked) by the caller before anything else starts.
pub async fn run(
    cfg: Config,
    zones: StaticZones,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let token = CancellationToken::new();
    let mirror = Arc::new(Mirror::new());
    let status = Arc::new(Status::new(cfg.dns.max_stale));
    let metrics = Arc::new(Metrics::new());
    let started = std::time::Instant::now();
    let sources = cfg.registry_sources();

    // The snapshot goes in before any socket is bound: a restart never answers from an
    // empty mirror when a good snapshot is on disk.
    let snapshot_task = match &cfg.snapshot.file {
        Some(path) => {
            restore_snapshot(path, cfg.snapshot.max_bytes, &sources, &mirror, &status);
            Some(tokio::spawn(persist::run_writer(
                path.clone(),
                cfg.snapshot.min_interval,
                mirror.clone(),
                status.clone(),
                token.clone(),
            )))
        }
        None => None,
    };

    for (zone, records) in &zones.summary {
        info!(%zone, records, "serving static zone");
    }
    let zones = Arc::new(arc_swap::ArcSwap::from_pointee(zones));
    let forwarder =
        (!cfg.forward.upstreams.is_empty()).then(|| Forwarder::from_config(&cfg.forward, &metrics));
    if let Some(f) = &forwarder {
        let upstreams: Vec<String> = f.upstreams().map(|a| a.to_string()).collect();
        info!(upstreams = %upstreams.join(","), timeout = ?cfg.forward.timeout, "forwarding other names");
    }
    let handler = Handler::new(&cfg.dns, mirror.clone(), status.clone(), metrics.clone())
        .context("building the DNS handler")?;
    let sky = sky_zones(&cfg, &sources, &handler)?;
    let handler = handler.with_sky(sky).with_outside(
        zones.clone(),
        forwarder,
        cfg.forward.allow_recursion.clone(),
    );
    let reload_task = tokio::spawn(reload_zones_on_sighup(
        cfg.zones_dir.clone(),
        zones,
        token.clone(),
    ));
    let zone = handler.origin().to_string();
    let limits = transport_limits(&cfg);
    crate::dns::server::log_limits(&limits);
    let rate_limit = RateLimiter::new(&cfg.rate_limit, &metrics);
    if rate_limit.is_some() {
        info!(
            responses_per_second = cfg.rate_limit.responses_per_second,
            slip = cfg.rate_limit.slip,
            "response rate limiting on (UDP)",
        );
    }
    let transport = Transport::new(
        Arc::new(handler),
        limits,
        rate_limit,
        metrics.clone(),
        token.clone(),
    );
    for addr in &cfg.listen {
        let (udp, tcp) = bind_pair(*addr).await?;
        info!(
            udp = %udp.local_addr()?,
            tcp = %tcp.local_addr()?,
            zone = %zone,
            "dns listening",
        );
        transport.serve_udp(udp);
        transport.serve_tcp(tcp);
    }

    let admin_task = match admin::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {:?}", cfg.admin_listen))?
    {
        Some(listener) => {
            info!(addr = %listener.local_addr()?, "admin listening");
            let admin = Admin {
                mirror: mirror.clone(),
                status: status.clone(),
                metrics: metrics.clone(),
                serve_warning: cfg.dns.serve_warning,
                max_stale: cfg.dns.max_stale,
                started,
            };
            Some(tokio::spawn(admin.serve(
                listener,
                cfg.admin_header_timeout,
                cfg.admin_max_connections,
                token.clone(),
            )))
        }
        None => None,
    };

    let client = registry::connect(&cfg.etcd).await?;
    for s in &sources[1..] {
        info!(format = %s.format, prefix = %s.prefix, "reading a framework layout");
    }
    // Test-only fault injection: the watcher panics this many times once established.
    let inject = Arc::new(std::sync::atomic::AtomicU32::new(
        std::env::var("RUDDR_TEST_WATCHER_PANICS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    ));
    let make_watcher = {
        let (mirror, status, metrics, etcd) = (
            mirror.clone(),
            status.clone(),
            metrics.clone(),
            cfg.etcd.clone(),
        );
        move || {
            Watcher::new(
                client.clone(),
                &etcd,
                sources.clone(),
                mirror.clone(),
                status.clone(),
                metrics.clone(),
            )
            .with_max_stale(cfg.dns.max_stale)
            .with_injected_panics(inject.clone())
        }
    };
    info!(endpoints = %cfg.etcd.endpoints.join(","), prefix = %cfg.etcd.prefix, "starting etcd watch");
    let watch_task = tokio::spawn(registry::supervise(
        make_watcher,
        status.clone(),
        metrics,
        token.clone(),
    ));

    shutdown.await;
    info!("shutdown requested; draining");
    let served = Ok(());

    token.cancel();
    if !transport.drain(GRACE).await {
        warn!(grace = ?GRACE, "in-flight queries did not finish in time");
    }
    if let Err(error) = watch_task.await {
        warn!(%error, "etcd watcher task failed");
    }
    let _ = reload_task.await;
    if let Some(task) = snapshot_task {
        if let Err(error) = task.await {
            warn!(%error, "snapshot writer task failed");
        }
    }
    if let Some(task) = admin_task {
        match tokio::time::timeout(GRACE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "admin listener failed"),
            Ok(Err(error)) => warn!(%error, "admin task failed"),
            Err(_) => warn!("admin listener did not stop in time"),
        }
    }
    info!(revision = mirror.load().revision, "stopped");
    served
}

/// The transport's limits from the config, with the TCP connection cap at most half the
/// open-file limit (the other half stays for upstream sockets, etcd, snapshots and admin).
fn transport_limits(cfg: &Config) -> Limits {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    let fd_room = usize::try_from(nofile / 2).unwrap_or(usize::MAX).max(16);
    let d = &cfg.dns;
    if d.tcp_max_connections > fd_room {
        warn!(
            configured = d.tcp_max_connections,
            lowered_to = fd_room,
            open_file_limit = nofile,
            "dns.tcp_max_connections is above half the open-file limit: lowering it",
        );
    }
    Limits {
        tcp_idle_timeout: d.tcp_idle_timeout,
        tcp_session_timeout: d.tcp_session_timeout,
        tcp_max_connections: d.tcp_max_connections.min(fd_room),
        tcp_max_connections_per_client: d.tcp_max_connections_per_client,
        tcp_max_pipelined: d.tcp_max_pipelined,
        max_pending: d.max_pending,
    }
}

/// Raises the soft open-file limit to the hard one (services often start with 1,024, which a
/// few hundred clients and forwarded queries can use up) and logs the figure.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => warn!(%error, soft, hard, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => info!(limit = soft, "open-file limit"),
        Err(error) => warn!(%error, "cannot read the open-file limit"),
    }
}

/// The zones of the SkyDNS sources, each tied to its source (`sources` as
/// [`Config::registry_sources`] made them: the native one, then one per `[[sources]]` entry).
fn sky_zones(
    cfg: &Config,
    sources: &[registry::formats::Source],
    handler: &Handler,
) -> anyhow::Result<Vec<crate::dns::skydns::SkyZone>> {
    use hickory_proto::rr::{LowerName, Name};
    let mut out = Vec::new();
    for (conf, source) in cfg.sources.iter().zip(&sources[1..]) {
        for zone in &conf.zones {
            let origin = Name::from_ascii(zone).with_context(|| format!("skydns zone {zone}"))?;
            info!(zone = %origin, prefix = %source.prefix, "answering a skydns zone");
            out.push(crate::dns::skydns::SkyZone {
                apex: LowerName::new(&origin),
                zone: handler.zone_for(origin)?,
                source: source.id,
                ttl: conf.ttl,
            });
        }
    }
    Ok(out)
}

/// Reloads the zone files on SIGHUP; a broken reload keeps the old zones and says why.
async fn reload_zones_on_sighup(
    dir: std::path::PathBuf,
    zones: Arc<arc_swap::ArcSwap<StaticZones>>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; zone reloads need a restart");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        let dir2 = dir.clone();
        match tokio::task::spawn_blocking(move || StaticZones::load_dir(&dir2)).await {
            Ok(Ok(fresh)) => {
                info!(dir = %dir.display(), zones = ?fresh.summary, "zones reloaded");
                zones.store(Arc::new(fresh));
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "zone reload failed; keeping the zones already loaded")
            }
            Err(error) => tracing::error!(%error, "zone reload task failed"),
        }
    }
}

/// Fills the mirror from the snapshot file, if there is a valid one. The data counts as stale
/// since it was written; the first list of each source from etcd replaces that source's part.
fn restore_snapshot(
    path: &std::path::Path,
    max_bytes: u64,
    sources: &[registry::formats::Source],
    mirror: &Mirror,
    status: &Status,
) {
    match persist::load(path, max_bytes) {
        Ok(Some(mut p)) => {
            // Entries of sources no longer configured would never be replaced by a list.
            let configured = |id: &crate::cache::SourceId| sources.iter().any(|s| s.id == *id);
            p.instances.retain(|(_, i)| configured(&i.source));
            p.domains.retain(|((id, _), _)| configured(id));
            let age = std::time::SystemTime::now()
                .duration_since(p.written_at())
                .unwrap_or_default();
            let (revision, instances) = (p.revision, p.instances.len());
            status.set_from_snapshot(p.written_at());
            if status.is_age_unknown() {
                warn!(
                    path = %path.display(),
                    written_at = %humantime::format_rfc3339_seconds(p.written_at()),
                    "the snapshot is dated in the future: its age is unknown, so it counts as older than max_stale",
                );
            }
            mirror.apply(
                [Update::Reset {
                    source: None,
                    instances: p.instances,
                    domains: p.domains,
                }],
                revision,
            );
            // The file's bytes and the decoded listing are gone now.
            crate::memory::trim();
            warn!(
                path = %path.display(),
                revision,
                instances,
                age = ?Duration::from_secs(age.as_secs()),
                "serving from the snapshot file until etcd answers",
            );
        }
        Ok(None) => info!(path = %path.display(), "no snapshot file yet"),
        Err(error) => warn!(path = %path.display(), %error, "ignoring the snapshot file"),
    }
}

/// Binds UDP and TCP on the same address. For port 0 the UDP socket picks the port and TCP
/// takes the same one; if TCP finds it taken, try another.
async fn bind_pair(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding UDP {addr}"))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding TCP {addr}")),
        }
    }
    anyhow::bail!(
        "no port free for both UDP and TCP on {} after {ATTEMPTS} tries",
        addr.ip()
    )
}

/// Turns `ruddr register` flags or its config file into validated registrations. Nothing is
/// written to etcd when this fails.
pub fn register_plan(
    args: &crate::cli::RegisterArgs,
) -> Result<
    (
        crate::config::EtcdConfig,
        Vec<crate::register::Registration>,
    ),
    ConfigError,
> {
    use crate::register::{InstanceSpec, RegisterFile};
    let (mut etcd, specs) = match &args.config {
        Some(path) => {
            let file = RegisterFile::load(path)?;
            let mut etcd = file.etcd;
            etcd.resolve_paths(path.parent().unwrap_or(std::path::Path::new(".")));
            if file.instance.is_empty() {
                return Err(ConfigError::Invalid {
                    option: "instance",
                    reason: format!("{} has no [[instance]] table", path.display()),
                });
            }
            (etcd, file.instance)
        }
        None => {
            let pairs = |option: &'static str, items: &[String]| {
                items
                    .iter()
                    .map(|item| {
                        item.split_once('=')
                            .filter(|(k, _)| !k.is_empty())
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| ConfigError::Invalid {
                                option,
                                reason: format!("{item:?} is not NAME=VALUE"),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let mut ports = std::collections::BTreeMap::new();
            for (name, port) in pairs("--port-name", &args.port_names)? {
                let port: u16 = port.parse().map_err(|_| ConfigError::Invalid {
                    option: "--port-name",
                    reason: format!("{port:?} is not a port number"),
                })?;
                ports.insert(name, port);
            }
            let spec = InstanceSpec {
                service: args.service.clone().unwrap_or_default(),
                id: args.id.clone().unwrap_or_default(),
                address: args.address.clone().unwrap_or_default(),
                port: args.port,
                ports,
                tags: args.tags.clone(),
                weight: args.weight,
                priority: args.priority,
                meta: pairs("--meta", &args.meta)?.into_iter().collect(),
                ttl: args.ttl,
                check_http: args.check_http.clone(),
                check_tcp: args.check_tcp.clone(),
                check_cmd: args.check_cmd.clone(),
                interval: args.interval,
                timeout: args.timeout,
                fail_after: args.fail_after,
                pass_after: args.pass_after,
                deregister_after: args.deregister_after,
                drain: args.drain,
            };
            (crate::config::EtcdConfig::default(), vec![spec])
        }
    };
    etcd.apply_flags(&args.etcd);
    etcd.validate()?;
    let regs = specs
        .iter()
        .map(InstanceSpec::validate)
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for r in &regs {
        if !seen.insert((r.service.clone(), r.instance.id.clone())) {
            return Err(ConfigError::Invalid {
                option: "--id",
                reason: format!("{}/{} is registered twice", r.service, r.instance.id),
            });
        }
    }
    Ok((etcd, regs))
}

/// SIGTERM and SIGINT, listened to from creation on: signals that arrive before anyone waits
/// are kept, not lost to the default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
        }
    }
}

/// `ruddr register`: keeps the registrations until a signal (or the child's exit), then
/// deregisters. Returns the process exit code: 0, or the child's status.
///
/// On SIGTERM/SIGINT: deregister and drain (the drain counts from the signal; a second signal
/// cuts it short), then pass the signal to the child's process group; a child still running
/// `stop_timeout` later gets SIGKILL. No etcd call can hold this up past its deadline.
pub async fn register(
    etcd: crate::config::EtcdConfig,
    registrations: Vec<crate::register::Registration>,
    command: Vec<String>,
    stop_timeout: Duration,
) -> anyhow::Result<i32> {
    use nix::sys::signal::{killpg, Signal};
    // Before anything is registered: a signal from now on always leads to deregistration.
    let mut signals = Signals::install()?;
    let token = CancellationToken::new();
    let registrar = crate::register::Registrar::connect(&etcd, registrations).await?;
    let skip_drain = registrar.skip_drain_token();
    let mut agents = tokio::spawn(registrar.run(token.clone()));

    if command.is_empty() {
        let sig = signals.next().await;
        info!(signal = %sig, "deregistering");
        token.cancel();
        deregistered(&mut agents, &mut signals, &skip_drain).await?;
        return Ok(0);
    }

    // Its own process group: a Ctrl-C in the terminal reaches ruddr only, which deregisters
    // and drains before passing the signal on.
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .process_group(0)
        // Only reached on an internal error: never leave the service running unsupervised.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    // The child leads its own process group: signal the whole group, so workers a shell or
    // supervisor started get it too.
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    info!(command = ?command, pid = ?pid, "started the service");
    let status = tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the service")?;
            warn!(%status, "the service exited; deregistering at once");
            skip_drain.cancel();
            token.cancel();
            (&mut agents).await.context("registration task")?;
            status
        }
        sig = signals.next() => {
            info!(signal = %sig, "deregistering, draining, then signalling the service");
            token.cancel();
            // Deregister and drain first, so no new traffic reaches the service when it stops.
            tokio::select! {
                done = deregistered(&mut agents, &mut signals, &skip_drain) => {
                    done?;
                    if let Some(pid) = pid {
                        if let Err(e) = killpg(pid, sig) {
                            warn!(error = %e, "cannot signal the service");
                        }
                    }
                    match tokio::time::timeout(stop_timeout, child.wait()).await {
                        Ok(status) => status.context("waiting for the service")?,
                        Err(_) => {
                            warn!(?stop_timeout, "the service ignored the signal; killing it");
                            if let Some(pid) = pid {
                                let _ = killpg(pid, Signal::SIGKILL);
                            }
                            child.wait().await.context("waiting for the service")?
                        }
                    }
                }
                status = child.wait() => {
                    // The service stopped on its own while draining; finish deregistering.
                    let status = status.context("waiting for the service")?;
                    skip_drain.cancel();
                    (&mut agents).await.context("registration task")?;
                    status
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Waits for the registrations to deregister; a further SIGTERM/SIGINT meanwhile skips the
/// rest of the drain.
async fn deregistered(
    agents: &mut tokio::task::JoinHandle<()>,
    signals: &mut Signals,
    skip_drain: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            done = &mut *agents => return done.context("registration task"),
            sig = signals.next(), if !skip_drain.is_cancelled() => {
                info!(signal = %sig, "second signal: skipping the rest of the drain");
                skip_drain.cancel();
            }
        }
    }
}

/// `ruddr services`: the registry as an operator sees it.
pub async fn services(
    etcd: crate::config::EtcdConfig,
    service: Option<String>,
    output: crate::cli::Output,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;

    use serde_json::json;

    let mut client = registry::connect(&etcd).await?;
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(etcd.max_message_bytes);
    let mut by_service: BTreeMap<String, Vec<(crate::cache::Instance, i64)>> = BTreeMap::new();
    let mut invalid = 0;
    let t = etcd.request_timeout;
    registry::list::list(
        &mut kv,
        &etcd.prefix,
        etcd.list_page_size,
        Some(t),
        |item| {
            let kv = match item {
                registry::list::Listed::Kv(kv) => kv,
                registry::list::Listed::Restart => {
                    by_service.clear();
                    invalid = 0;
                    return;
                }
            };
            match registry::parse_entry(&etcd.prefix, kv.key(), kv.value()) {
                Ok((svc, inst)) => by_service
                    .entry(svc.to_string())
                    .or_default()
                    .push((inst, kv.lease())),
                Err(_) => invalid += 1,
            }
        },
    )
    .await
    .with_context(|| format!("listing {} from {}", etcd.prefix, etcd.endpoints.join(",")))?;
    let json_out = output == crate::cli::Output::Json;
    match service {
        None => {
            let rows: Vec<_> = by_service
                .iter()
                .map(|(name, insts)| {
                    let healthy = insts.iter().filter(|(i, _)| i.is_served(true)).count();
                    (name, healthy, insts.len())
                })
                .collect();
            if json_out {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, h, t)| json!({"service": n, "healthy": h, "total": t}))
                    .collect();
                println!("{}", json!({"services": list, "invalid_entries": invalid}));
            } else {
                println!("{:<32} {:>7} {:>7}", "SERVICE", "HEALTHY", "TOTAL");
                for (n, h, t) in rows {
                    println!("{n:<32} {h:>7} {t:>7}");
                }
                if invalid > 0 {
                    println!(
                        "({invalid} entries under {} break the registry contract)",
                        etcd.prefix
                    );
                }
            }
        }
        Some(name) => {
            let name = name.to_ascii_lowercase();
            let Some(insts) = by_service.get(&name) else {
                anyhow::bail!("no service {name:?} under {}", etcd.prefix);
            };
            let mut rows = Vec::new();
            for (inst, lease) in insts {
                let ttl_left = if *lease == 0 {
                    None
                } else {
                    registry::deadline(t, client.lease_time_to_live(*lease, None))
                        .await
                        .ok()
                        .map(|r| r.ttl())
                        .filter(|t| *t >= 0)
                };
                rows.push((inst, ttl_left));
            }
            if json_out {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(i, ttl)| {
                        json!({
                            "id": i.id.as_str(),
                            "address": i.address.to_string(),
                            "port": i.port,
                            "ports": i.ports.iter().collect::<BTreeMap<_, _>>(),
                            "tags": i.tags,
                            "weight": i.weight,
                            "priority": i.priority,
                            "health": i.health.as_str(),
                            "meta": i.meta.iter().collect::<BTreeMap<_, _>>(),
                            "lease_ttl_seconds": ttl,
                        })
                    })
                    .collect();
                println!("{}", json!({"service": name, "instances": list}));
            } else {
                println!(
                    "{:<24} {:<40} {:>5} {:<9} {:>9}  TAGS",
                    "ID", "ADDRESS", "PORT", "HEALTH", "LEASE TTL"
                );
                for (i, ttl) in rows {
                    println!(
                        "{:<24} {:<40} {:>5} {:<9} {:>9}  {}",
                        i.id.as_str(),
                        i.address,
                        i.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        i.health.as_str(),
                        ttl.map(|t| format!("{t}s")).unwrap_or_else(|| "-".into()),
                        i.tags.join(","),
                    );
                }
            }
        }
    }
    Ok(())
}

/// The etcd settings for `ruddr services`: defaults, the [etcd] table of a config file, flags.
pub fn services_etcd(
    args: &crate::cli::ServicesArgs,
) -> Result<crate::config::EtcdConfig, ConfigError> {
    let mut etcd = match &args.config {
        Some(path) => Config::from_file(path)?.etcd,
        None => crate::config::EtcdConfig::default(),
    };
    etcd.apply_flags(&args.etcd);
    etcd.validate()?;
    Ok(etcd)
}
