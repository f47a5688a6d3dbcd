//! `ruddr serve`: builds the mirror, the etcd watcher and the DNS server, runs them, and shuts
//! them down together: one cancellation token, then a bounded drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::cache::{Mirror, Update};
use crate::config::Config;
use crate::dns::server::socket::{adopt_udp, bind_pair, bind_udp_group};
use crate::dns::server::Transport;
use crate::dns::zone::file::StaticZones;
use crate::metrics::Metrics;
use crate::persist;
use crate::registry::{self, Layout, Source, Status, Watcher};

use super::listeners::{self, Inherited, Listening, Predecessor};
use super::reload;

/// How long in-flight queries may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);

/// Runs `ruddr serve` until `shutdown` completes or the DNS server fails. `zones` are the
/// static zones, loaded (and checked) by the caller before anything else starts.
pub async fn run(
    cfg: Config,
    args: crate::cli::ServeArgs,
    zones: StaticZones,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let token = CancellationToken::new();
    let registry_rt = RegistryRuntime::start()?;
    let mirror = Arc::new(Mirror::new());
    let status = Arc::new(Status::new(cfg.dns.max_stale));
    let metrics = Arc::new(Metrics::new());
    let started = std::time::Instant::now();
    let sources = Source::all(&cfg);
    // Sockets from systemd, or else from a running ruddr (a hand-over): taken before anything
    // binds, matched to the configured addresses below.
    let listening = Arc::new(Listening::default());
    let mut inherited = Inherited::from_systemd()?;
    let mut predecessor = None;
    if let (true, Some(path)) = (inherited.is_empty(), cfg.restart.handover_socket.clone()) {
        let taken = tokio::task::spawn_blocking(move || Predecessor::take_over(&path))
            .await
            .context("the hand-over task")??;
        if let Some((sockets, p)) = taken {
            inherited = sockets;
            predecessor = Some(p);
        }
    }
    // A process with inherited sockets answers only from data (see below).
    let takes_over = !inherited.is_empty();

    // The snapshot goes in before any socket is bound: a restart never answers from an
    // empty mirror when a good snapshot is on disk.
    let snapshot_task = match &cfg.snapshot.file {
        Some(path) => {
            restore_snapshot(path, cfg.snapshot.max_bytes, &sources, &mirror, &status);
            Some(registry_rt.spawn(persist::run_writer(
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
    // dnstap's writer is background work too: on the registry runtime.
    let (tap, dnstap_task) =
        match crate::dnstap::Tap::new(&cfg.dnstap, metrics.clone(), token.clone()) {
            Some((tap, writer)) => (Some(tap), Some(registry_rt.spawn(writer))),
            None => (None, None),
        };
    let parts = reload::Parts {
        mirror: mirror.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        zones,
        tap: tap.clone(),
    };
    let forwarder = reload::forwarder(&cfg, &parts);
    let live = reload::build_live(&cfg, &sources, forwarder.clone(), None, &parts)?;
    let certs = match crate::dns::server::tls::CertFiles::of(&cfg.dns) {
        Some(files) if !cfg.dns.tls_listen.is_empty() || !cfg.dns.https_listen.is_empty() => {
            Some(Arc::new(
                crate::dns::server::tls::Certs::load(files)
                    .context("loading the TLS certificate")?,
            ))
        }
        _ => None,
    };
    // Not the handler itself: a reload replaces it, and its caches must go with it.
    let zone = live.handler.origin().to_string();
    let xds = crate::xds::Xds::new(
        &cfg.xds,
        live.handler.zone().clone(),
        mirror.clone(),
        status.clone(),
        metrics.clone(),
        token.clone(),
    );
    let xds_listener = match cfg.xds.listen {
        Some(addr) => Some(listeners::tcp(addr, &mut inherited, &listening, "xDS").await?),
        None => None,
    };
    // Kept for reloads (locality and served health follow them).
    let xds_handle = xds_listener.is_some().then(|| xds.clone());
    let xds_task = crate::xds::serve(&cfg.xds, xds, xds_listener)?.map(|(_, task)| task);
    let admin_sources = Arc::new(arc_swap::ArcSwap::from_pointee(sources.clone()));
    let udp_sockets = match cfg.dns.udp_sockets {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let dns_cfg = crate::dns::server::for_transport(&cfg.dns);
    let transport = Transport::new(live, dns_cfg, metrics.clone(), token.clone());
    // Every listening socket first (bound, or taken from those inherited), kept for a
    // hand-over; they answer once `serve` runs (at once, or with inherited sockets once there
    // is data).
    let mut dns_sockets = Vec::new();
    for addr in &cfg.listen {
        let mut udp = inherited.udp(*addr)?;
        let tcp = inherited.tcp(*addr)?;
        // Each distinct socket is kept for a hand-over once (not the copies several threads
        // read from).
        let (udp, tcp, distinct) = match (udp.is_empty(), tcp) {
            (true, None) => {
                let (udp, tcp) = bind_pair(
                    *addr,
                    udp_sockets,
                    cfg.dns.udp_steering,
                    cfg.dns.udp_receive_buffer,
                )
                .await?;
                let n = udp.len();
                (udp, tcp, n)
            }
            (udp_missing, tcp) => {
                // Inherited (both halves, or one: the other is bound here).
                if udp_missing {
                    udp = bind_udp_group(*addr, udp_sockets, cfg.dns.udp_receive_buffer)?;
                } else {
                    for socket in &udp {
                        adopt_udp(socket, cfg.dns.udp_receive_buffer).with_context(|| {
                            format!("preparing the inherited UDP socket {addr}")
                        })?;
                    }
                }
                // systemd passes one socket per address: several threads read it.
                let have = udp.len();
                for i in have..udp_sockets {
                    udp.push(udp[i % have].try_clone()?);
                }
                let tcp = match tcp {
                    Some(tcp) => tcp,
                    None => tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding TCP {addr}"))?,
                };
                (udp, tcp, have)
            }
        };
        for socket in &udp[..distinct] {
            listening.keep(socket)?;
        }
        listening.keep(&tcp)?;
        dns_sockets.push((udp, tcp));
    }
    let mut encrypted_sockets = Vec::new();
    if let Some(certs) = &certs {
        use crate::dns::server::tls::Encrypted;
        for (addrs, kind, what) in [
            (&cfg.dns.tls_listen, Encrypted::Dot, "dns over tls"),
            (&cfg.dns.https_listen, Encrypted::Doh, "dns over https"),
        ] {
            for addr in addrs {
                let listener = listeners::tcp(*addr, &mut inherited, &listening, what).await?;
                encrypted_sockets.push((listener, kind, certs.clone(), what));
            }
        }
    }
    let serve = move |transport: &Arc<Transport>| -> anyhow::Result<()> {
        for (udp, tcp) in dns_sockets {
            info!(
                udp = %udp[0].local_addr()?,
                tcp = %tcp.local_addr()?,
                zone = %zone,
                "dns listening",
            );
            for socket in udp {
                transport
                    .serve_udp(socket)
                    .context("starting a UDP thread")?;
            }
            transport.serve_tcp(tcp);
        }
        for (listener, kind, certs, what) in encrypted_sockets {
            info!(addr = %listener.local_addr()?, "{what} listening");
            transport.serve_encrypted(listener, kind, certs);
        }
        Ok(())
    };
    let mut serve = Some(serve);
    if !takes_over {
        serve.take().map_or(Ok(()), |serve| serve(&transport))?;
    }
    // Threads that answer (UDP sockets, runtime workers, the forwarding thread) each keep front
    // tables; the README's memory bound counts them.
    let threads = udp_sockets * cfg.listen.len()
        + tokio::runtime::Handle::current().metrics().num_workers()
        + 1;
    // No upstreams, or no forward cache (its fronts exist only with it): nothing forwarded is
    // kept.
    let forward_bytes = if cfg.forward.upstreams.is_empty() || cfg.forward.cache_bytes == 0 {
        0
    } else {
        cfg.forward.cache_bytes as usize + threads * cfg.forward.cache_front_bytes
    };
    info!(
        answering_threads = threads,
        cache_bound_bytes = cfg.dns.answer_cache_bytes as usize
            + threads * cfg.dns.answer_front_bytes
            + forward_bytes,
        "answer caches bounded",
    );

    let admin_listener = match cfg.admin_listen {
        Some(addr) => Some(listeners::tcp(addr, &mut inherited, &listening, "admin").await?),
        None => None,
    };
    inherited.close_rest();
    let admin_task = match admin_listener {
        Some(listener) => {
            info!(addr = %listener.local_addr()?, "admin listening");
            let admin = Admin {
                mirror: mirror.clone(),
                status: status.clone(),
                metrics: metrics.clone(),
                serve_warning: cfg.dns.serve_warning,
                started,
                ui: cfg.admin_ui,
                sources: admin_sources.clone(),
                endpoints: cfg.etcd.endpoints.clone().into(),
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

    // Connected from the registry runtime: the client's connection tasks run there too.
    let client = {
        let etcd = cfg.etcd.clone();
        registry_rt
            .spawn(async move { registry::connect(&etcd).await })
            .await
            .context("connecting to etcd")??
    };
    for s in sources.iter().filter(|s| s.layout != Layout::Native) {
        info!(format = %s.layout, prefix = %s.prefix, "reading a framework layout");
    }
    // Fault injection for tests (the `test-hooks` feature, which the test command turns on):
    // the watcher panics this many times once established.
    #[cfg(feature = "test-hooks")]
    let inject = Arc::new(std::sync::atomic::AtomicU32::new(
        std::env::var("RUDDR_TEST_WATCHER_PANICS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    ));
    let spawn_watch = {
        let (mirror, status, metrics, etcd) = (
            mirror.clone(),
            status.clone(),
            metrics.clone(),
            cfg.etcd.clone(),
        );
        let handle = registry_rt.handle();
        move |sources: Vec<Source>, token: CancellationToken| {
            let (client, etcd, mirror, status2, metrics2) = (
                client.clone(),
                etcd.clone(),
                mirror.clone(),
                status.clone(),
                metrics.clone(),
            );
            #[cfg(feature = "test-hooks")]
            let inject = inject.clone();
            let make_watcher = move || {
                let watcher = Watcher::new(
                    client.clone(),
                    &etcd,
                    sources.clone(),
                    mirror.clone(),
                    status2.clone(),
                    metrics2.clone(),
                );
                #[cfg(feature = "test-hooks")]
                let watcher = watcher.with_injected_panics(inject.clone());
                watcher
            };
            handle.spawn(registry::supervise(
                make_watcher,
                status.clone(),
                metrics.clone(),
                token,
            ))
        }
    };
    info!(endpoints = %cfg.etcd.endpoints.join(","), prefix = %cfg.etcd.prefix, "starting etcd watch");
    let mut watch = reload::Watch {
        spawn: Box::new(spawn_watch),
        current: None,
        shutdown: token.clone(),
    };
    watch.start(sources.clone());
    // SIGHUP reloads the configuration (and the zones and certificates with it).
    let reload_task = tokio::spawn(
        reload::Reloader {
            args,
            cfg: cfg.clone(),
            parts,
            forwarder,
            transport: transport.clone(),
            certs: certs.clone(),
            watch,
            xds: xds_handle,
            admin_sources,
        }
        .run(token.clone()),
    );

    // Inherited sockets answer once there is data: the snapshot, or the first list. A
    // predecessor goes on answering meanwhile; systemd's queues hold the queries.
    let handed = CancellationToken::new();
    if let Some(serve) = serve.take() {
        let wait = cfg.restart.wait_for_data;
        let waited = std::time::Instant::now();
        // Taking over from a running ruddr: wait for the watch to be current (the running one
        // answers meanwhile, likely from current data); under systemd nobody answers
        // meanwhile, so data is enough.
        let ready = |st: &Status| match predecessor {
            Some(_) => st.is_connected(),
            None => st.has_data(),
        };
        while waited.elapsed() < wait && !ready(&status) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let has_data = status.has_data();
        let expired = status.freshness() == crate::cache::Freshness::Expired;
        if predecessor.is_some() && (!has_data || expired) {
            token.cancel();
            anyhow::bail!(
                "no data within restart.wait_for_data ({wait:?}), or only data past max_stale: the running ruddr keeps answering"
            );
        }
        if predecessor.is_some() && !status.is_connected() {
            warn!(?wait, "etcd not current within restart.wait_for_data: taking over with the snapshot's data");
        }
        if !has_data {
            warn!(
                ?wait,
                "no data within restart.wait_for_data: answering anyway"
            );
        }
        serve(&transport)?;
        info!(waited = ?waited.elapsed(), "answering on the inherited sockets");
        if let Some(p) = predecessor.take() {
            match tokio::task::spawn_blocking(move || p.answering()).await {
                Ok(Ok(())) => info!("the previous ruddr stopped reading; this one answers alone"),
                Ok(Err(error)) => warn!(%error, "the previous ruddr did not confirm the hand-over"),
                Err(error) => warn!(%error, "hand-over task failed"),
            }
        }
    }
    notify_systemd_ready();
    let handover_task = cfg.restart.handover_socket.clone().map(|path| {
        let (listening, token, handed) = (listening.clone(), token.clone(), handed.clone());
        tokio::spawn(async move {
            if let Err(error) = listeners::serve_handover(path, listening, token, handed).await {
                warn!(error = %format!("{error:#}"), "no hand-overs: the next start binds anew");
            }
        })
    });

    tokio::select! {
        _ = shutdown => info!("shutdown requested; draining"),
        _ = handed.cancelled() => info!("handed over; draining"),
    }
    let served = Ok(());

    token.cancel();
    if !transport.drain(GRACE).await {
        warn!(grace = ?GRACE, "in-flight queries did not finish in time");
    }
    // The reload task stops the watch on its way out.
    let _ = reload_task.await;
    if let Some(task) = handover_task {
        let _ = task.await;
    }
    if let Some(task) = snapshot_task {
        if let Err(error) = task.await {
            warn!(%error, "snapshot writer task failed");
        }
    }
    if let Some(task) = dnstap_task {
        if tokio::time::timeout(GRACE * 2, task).await.is_err() {
            warn!("the dnstap writer did not stop in time");
        }
    }
    if let Some(task) = xds_task {
        if tokio::time::timeout(GRACE, task).await.is_err() {
            warn!("the xDS server did not stop in time");
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

/// The runtime that keeps the mirror: the etcd client's connections, the watchers' decoding
/// and applying, and the snapshot writer, on their own thread (`ruddr-registry`, one worker,
/// its blocking threads beside it) at `SCHED_BATCH`.
///
/// Under full load the answering threads and this work share the cores. On the answering
/// runtime, every watch event woke a worker that preempted a socket thread in the middle of a
/// batch (queries queued behind it, dnsperf's latency and so its rate followed), and a
/// snapshot write is 150 ms of CPU at 100,000 instances. `SCHED_BATCH` keeps the same share of
/// CPU but gives up wakeup preemption, so this work waits for the end of a time slice instead
/// of cutting one short: a put reaches DNS a few milliseconds later under saturation, and
/// not at all later when a core is free. No privilege is needed to choose it.
struct RegistryRuntime(Option<tokio::runtime::Runtime>);

impl RegistryRuntime {
    fn start() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ruddr-registry")
            .enable_all()
            .on_thread_start(batch_scheduling)
            .build()
            .context("starting the registry runtime")?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("running until dropped")
            .handle()
            .clone()
    }

    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running until dropped").spawn(task)
    }
}

impl Drop for RegistryRuntime {
    /// A runtime may not be dropped (which blocks) inside another: its tasks have ended or
    /// been cancelled by now, so nothing is waited for.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Moves the calling thread to `SCHED_BATCH` (see [`RegistryRuntime`]); a refusal is harmless.
fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's own policy; `param` outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot use SCHED_BATCH");
        }
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

/// Tells systemd (`Type=notify`) that ruddr answers: `READY=1` to `$NOTIFY_SOCKET`, if set.
fn notify_systemd_ready() {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.send_to_addr(b"READY=1\n", &addr)
    });
    if let Err(error) = sent {
        warn!(%error, "cannot tell systemd that ruddr is ready");
    }
}

/// Fills the mirror from the snapshot file, if there is a valid one. The data counts as stale
/// since it was written; the first list of each source from etcd replaces that source's part.
fn restore_snapshot(
    path: &std::path::Path,
    max_bytes: u64,
    sources: &[Source],
    mirror: &Mirror,
    status: &Status,
) {
    match persist::load(path, max_bytes) {
        Ok(Some(mut p)) => {
            // Entries of sources no longer configured would never be replaced by a list.
            let configured = |id: &crate::cache::SourceId| sources.iter().any(|s| s.id == *id);
            p.instances.retain(|(_, i)| configured(&i.source));
            p.domains.retain(|((id, _), _)| configured(id));
            p.owned.retain(|((id, _, _), _)| configured(id));
            // A position counts only for the settings its data was read with.
            p.positions
                .retain(|(id, f, _)| sources.iter().any(|s| s.id == *id && s.fingerprint() == *f));
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
                    keep: Vec::new(),
                }],
                revision,
            );
            // Then which key gave which instances, and where each source stands: what the
            // watch needs to resume from there (registry::Watcher::new reads the positions).
            let restored = mirror.load_full();
            let replaces = p.owned.into_iter().map(|((source, service, key), ids)| {
                let svc = restored.service(service.as_str());
                let instances = ids
                    .iter()
                    .filter_map(|id| svc?.instances.get(&(id.clone(), source)).cloned())
                    .collect();
                Update::Replace {
                    service,
                    source,
                    key,
                    instances,
                }
            });
            let cluster_id = p.cluster_id;
            let positions = p.positions.into_iter().filter(|_| cluster_id != 0).map(
                |(source, fingerprint, revision)| Update::Position {
                    source,
                    fingerprint,
                    revision,
                    cluster_id,
                },
            );
            mirror.apply(replaces.chain(positions).collect::<Vec<_>>(), revision);
            drop(restored);
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
