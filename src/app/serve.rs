//! `ruddr serve`: builds the mirror, the etcd watcher and the DNS server, runs them, and shuts
//! them down together: one cancellation token, then a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::cache::{Mirror, Update};
use crate::config::{Config, UdpSteering};
use crate::dns::forward::Forwarder;
use crate::dns::rrl::RateLimiter;
use crate::dns::server::{Limits, Transport};
use crate::dns::zone::file::StaticZones;
use crate::dns::Handler;
use crate::metrics::Metrics;
use crate::persist;
use crate::registry::{self, Layout, Source, Status, Watcher};

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
    let sky = sky_zones(&sources, &handler)?;
    let handler = handler
        .with_sky(sky)
        .with_outside(
            zones.clone(),
            forwarder,
            cfg.forward.allow_recursion.clone(),
        )
        .with_locality(&cfg.locality);
    let reload_task = tokio::spawn(reload_zones_on_sighup(
        cfg.zones_dir.clone(),
        zones,
        token.clone(),
    ));
    let zone = handler.origin().to_string();
    let udp_sockets = match cfg.dns.udp_sockets {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
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
        let (udp, tcp) = bind_pair(*addr, udp_sockets, cfg.dns.udp_steering).await?;
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
    for s in sources.iter().filter(|s| s.layout != Layout::Native) {
        info!(format = %s.layout, prefix = %s.prefix, "reading a framework layout");
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
        udp_fast_path: d.udp_fast_path,
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

/// The zones of the SkyDNS sources, each tied to its source and TTL.
fn sky_zones(
    sources: &[Source],
    handler: &Handler,
) -> anyhow::Result<Vec<crate::dns::skydns::SkyZone>> {
    use hickory_proto::rr::{LowerName, Name};
    let mut out = Vec::new();
    for source in sources {
        let Layout::Skydns { zones, ttl } = &source.layout else {
            continue;
        };
        for zone in zones {
            let origin = Name::from_ascii(zone).with_context(|| format!("skydns zone {zone}"))?;
            info!(zone = %origin, prefix = %source.prefix, "answering a skydns zone");
            out.push(crate::dns::skydns::SkyZone {
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

/// A UDP socket on `addr` with SO_REUSEPORT, so several can share the address and the kernel
/// spreads queries over them.
///
/// The socket is blocking, with a receive timeout: each is served by a thread of its own that
/// receives and sends in batches, and looks for shutdown between receives.
fn reuse_port_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    dont_fragment(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Responses leave with the "don't fragment" bit and are never fragmented by this host, as
/// RFC 9715 recommends (fragments are easy to spoof and often dropped): the path MTU is
/// ignored, so forged ICMP messages cannot shrink it, and an answer larger than the interface
/// MTU (only possible with `dns.max_udp_payload` above it) fails to send and goes out as an
/// empty truncated answer instead, which sends the client to TCP. This also spares the kernel
/// an IP identifier per packet.
fn dont_fragment(socket: &socket2::Socket, ipv6: bool) -> std::io::Result<()> {
    let set = |level, name, value: libc::c_int| setsockopt(socket, level, name, &value);
    if ipv6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

/// Has the kernel hand each UDP query to the socket of the CPU that received it (`cpu mod n`,
/// in the order the sockets joined the port's group) instead of by a hash of the addresses:
/// each socket's thread then serves the packets its CPU already has in cache, and a client
/// that sends from one CPU keeps one thread busy with full batches instead of waking all of
/// them with a few packets each. A classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF).
fn steer_by_cpu(socket: &std::net::UdpSocket, n: usize) -> std::io::Result<()> {
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        // A = the CPU handling the packet.
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        // A = A mod n: a socket index.
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // `fprog` points at `program`, which outlives the call; the kernel copies it.
    setsockopt(
        socket,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

/// Sets socket option `name` at `level` to `value` (socket2 has no call for the options
/// above).
fn setsockopt<T>(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live `T` for the whole call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds UDP and TCP on the same address. For port 0 the UDP socket picks the port and TCP
/// takes the same one; if TCP finds it taken, try another.
async fn bind_pair(
    addr: SocketAddr,
    udp_sockets: usize,
    steering: UdpSteering,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        // With port 0, a plain socket picks a port nobody holds: a socket with SO_REUSEPORT
        // bound to port 0 may be given a port another process of the same user shares.
        let at = if addr.port() == 0 {
            let probe =
                std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            probe.local_addr()?
        } else {
            addr
        };
        let first = match reuse_port_udp(at) {
            Ok(s) => s,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding UDP {addr}")),
        };
        let bound = first.local_addr()?;
        let tcp = match TcpListener::bind(bound).await {
            Ok(tcp) => tcp,
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding TCP {addr}")),
        };
        // The others share the first one's port (with port 0, the port the first one got).
        let mut udp = vec![first];
        for _ in 1..udp_sockets.max(1) {
            udp.push(reuse_port_udp(bound).with_context(|| format!("binding UDP {bound} again"))?);
        }
        if udp.len() > 1 && steering == UdpSteering::Cpu {
            if let Err(error) = steer_by_cpu(&udp[0], udp.len()) {
                warn!(%error, "cannot steer UDP queries by CPU; the kernel spreads them by address");
            }
        }
        return Ok((udp, tcp));
    }
    anyhow::bail!(
        "no port free for both UDP and TCP on {} after {ATTEMPTS} tries",
        addr.ip()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_by_cpu_sends_one_cpus_packets_to_one_socket() {
        let first = reuse_port_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let group = [
            first,
            reuse_port_udp(addr).unwrap(),
            reuse_port_udp(addr).unwrap(),
        ];
        steer_by_cpu(&group[0], group.len()).unwrap();
        for s in &group {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        // Loopback delivers on the sending CPU: pin this thread, send, and every packet must
        // reach the same socket (by hash, 20 source ports would spread over all three).
        // SAFETY: plain libc calls on a zeroed cpu_set_t owned here.
        let cpu = unsafe {
            let cpu = libc::sched_getcpu();
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
            cpu as usize
        };
        for _ in 0..20 {
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            client.send_to(b"x", addr).unwrap();
        }
        let mut buf = [0u8; 8];
        let got: Vec<usize> = group
            .iter()
            .map(|s| std::iter::from_fn(|| s.recv_from(&mut buf).ok()).count())
            .collect();
        assert_eq!(got[cpu % group.len()], 20, "{got:?} (cpu {cpu})");
    }
}
