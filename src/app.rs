//! Wiring: builds the mirror, the etcd watcher and the DNS server, runs them, and shuts them
//! down together: one cancellation token, then a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::cache::{Mirror, Update};
use crate::config::Config;
use crate::dns::Handler;
use crate::metrics::Metrics;
use crate::persist;
use crate::registry::{self, Status, Watcher};

/// How long in-flight queries may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);
/// Per-connection buffer for TCP responses, in messages.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Runs `ruddr serve` until `shutdown` completes or the DNS server fails.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let mirror = Arc::new(Mirror::new());
    let status = Arc::new(Status::default());
    let metrics = Arc::new(Metrics::new());
    let started = std::time::Instant::now();

    let handler = Handler::new(&cfg.dns, mirror.clone(), status.clone(), metrics.clone())
        .context("building the DNS handler")?;
    let zone = handler.origin().to_string();
    let mut server = Server::new(handler);
    for addr in &cfg.listen {
        let (udp, tcp) = bind_pair(*addr).await?;
        info!(
            udp = %udp.local_addr()?,
            tcp = %tcp.local_addr()?,
            zone = %zone,
            "dns listening",
        );
        server.register_socket(udp);
        server.register_listener(tcp, cfg.dns.tcp_idle_timeout, TCP_RESPONSE_BUFFER);
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
            Some(tokio::spawn(admin.serve(listener, token.clone())))
        }
        None => None,
    };

    let snapshot_task = match &cfg.snapshot.file {
        Some(path) => {
            restore_snapshot(path, &mirror, &status);
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

    let client = registry::connect(&cfg.etcd).await?;
    let watcher = Watcher::new(client, &cfg.etcd, mirror.clone(), status.clone(), metrics)
        .with_max_stale(cfg.dns.max_stale);
    info!(endpoints = %cfg.etcd.endpoints.join(","), prefix = %cfg.etcd.prefix, "starting etcd watch");
    let watch_task = tokio::spawn(watcher.run(token.clone()));

    let served = tokio::select! {
        _ = shutdown => {
            info!("shutdown requested; draining");
            Ok(())
        }
        res = server.block_until_done() => res.context("DNS server stopped"),
    };

    token.cancel();
    match tokio::time::timeout(GRACE, server.shutdown_gracefully()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "DNS server ended with an error"),
        Err(_) => warn!(grace = ?GRACE, "in-flight queries did not finish in time"),
    }
    if let Err(error) = watch_task.await {
        warn!(%error, "etcd watcher task failed");
    }
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

/// Fills the mirror from the snapshot file, if there is a valid one. The data counts as stale
/// since it was written; the first list from etcd replaces it whole.
fn restore_snapshot(path: &std::path::Path, mirror: &Mirror, status: &Status) {
    match persist::load(path) {
        Ok(Some(p)) => {
            let age = std::time::SystemTime::now()
                .duration_since(p.written_at())
                .unwrap_or_default();
            let (revision, instances) = (p.revision, p.instances.len());
            status.set_from_snapshot(p.written_at());
            mirror.apply(
                [Update::Reset {
                    instances: p.instances,
                }],
                revision,
            );
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
