//! ruddr's own DNS transport: UDP sockets ([`udp`], in batches: [`batch`]) and TCP listeners
//! ([`tcp`], with the connection table: [`connections`]), set up by [`socket`]. Plain UDP
//! queries go to the fast path straight from their bytes; everything else is decoded with
//! hickory-proto and handed to the answer core ([`Handler`]); [`super::wire`] writes every
//! response.
//!
//! Rules kept from hickory's server loop, and the limits it lacked:
//! - A packet shorter than a header, a packet that is itself a response (QR set), and a packet
//!   from an address that cannot be answered (port 0, unspecified, broadcast) get nothing.
//! - A query whose header decodes but whose body does not gets FORMERR.
//! - UDP queries ruddr answers itself (every zone, and forward-cache hits) are answered in the
//!   socket's loop, without a task. A forwarded name missing from the cache gets a task once the
//!   forwarding limits admit it, at most `dns.max_pending` at once (past either: SERVFAIL at
//!   once).
//! - TCP: at most `dns.tcp_max_connections` connections, `dns.tcp_max_connections_per_client`
//!   per client address; at either cap the longest-idle connection is closed to make room
//!   (RFC 7766 6.2.3). Idle and whole-connection timeouts, at most `dns.tcp_max_pipelined`
//!   queries in flight per connection, and accept errors (EMFILE) back off instead of spinning.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod batch;
mod connections;
pub mod socket;
mod tcp;
pub mod tls;
mod udp;

use super::observe::Observer;
use super::rrl::RateLimiter;
use super::wire;
use super::Handler;
use crate::config::DnsConfig;
use crate::metrics::Metrics;
use connections::Connections;

/// The listeners of one server, sharing the handler, the limits and the shutdown signal.
pub struct Transport {
    /// What a reload of the configuration replaces (see [`Live`]).
    live: arc_swap::ArcSwap<Live>,
    /// `[dns]`: the transport reads its limits from it (see [`for_transport`]).
    cfg: DnsConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    pending: Arc<Semaphore>,
    connections: Arc<Connections>,
    /// The UDP threads, then the forwarding thread, joined on drain.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    forwarding_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where forwarded UDP queries wait for their upstream (see [`forwarding_runtime`]).
    forwarding: Option<tokio::runtime::Handle>,
    logged: Logged,
}

/// The parts of answering that a configuration reload replaces whole: the handler (zones,
/// TTLs, forwarding, locality, answer caches), response rate limiting and the query log. A
/// query is answered by one `Live` from start to end (a forwarded one too), so a reload never
/// mixes two configurations in one answer.
pub struct Live {
    pub handler: Arc<Handler>,
    /// Response rate limiting over UDP (`None`: off).
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The query log and dnstap.
    pub observer: Observer,
}

/// Limits hit, each logged once per process.
#[derive(Default)]
struct Logged {
    pending: AtomicBool,
    tcp_full: AtomicBool,
    accept: AtomicBool,
}

fn first_time(flag: &AtomicBool) -> bool {
    !flag.swap(true, Relaxed)
}

/// What a packet is.
pub(crate) enum Decoded {
    Request(Box<Request>),
    /// The header decoded, the rest did not: answer FORMERR.
    Malformed(Header),
    /// Not answered at all.
    Drop,
}

/// Decodes one packet from `src`.
pub(crate) fn decode(bytes: &[u8], src: SocketAddr, protocol: Protocol) -> Decoded {
    if !is_answerable(src) {
        return Decoded::Drop;
    }
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Decoded::Drop;
    };
    // Never answer a response: that would make ruddr a reflector between two spoofed peers.
    if header.metadata.message_type == MessageType::Response {
        return Decoded::Drop;
    }
    match Request::from_bytes(bytes.to_vec(), src, protocol) {
        Ok(request) => Decoded::Request(Box::new(request)),
        Err(error) => {
            debug!(%src, %error, "malformed query");
            Decoded::Malformed(header)
        }
    }
}

/// Whether a response to `src` can be delivered (as hickory's server checks).
pub(crate) fn is_answerable(src: SocketAddr) -> bool {
    if src.port() == 0 {
        return false;
    }
    match src.ip() {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unspecified(),
    }
}

/// FORMERR for a query whose header is `header`: the header alone, no question.
pub(crate) fn format_error(header: &Header, out: &mut Vec<u8>) {
    wire::write_header_only(out, &header.metadata, ResponseCode::FormErr);
}

impl Transport {
    pub fn new(
        live: Live,
        cfg: DnsConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let tasks = TaskTracker::new();
        let (forwarding, forwarding_thread) = match forwarding_runtime(
            shutdown.clone(),
            tasks.clone(),
        ) {
            Ok((handle, thread)) => (Some(handle), Some(thread)),
            Err(error) => {
                warn!(%error, "no forwarding thread: forwarded queries wait on the main runtime");
                (None, None)
            }
        };
        Arc::new(Self {
            pending: Arc::new(Semaphore::new(cfg.max_pending)),
            connections: Arc::new(Connections::new(Instant::now())),
            live: arc_swap::ArcSwap::from_pointee(live),
            cfg,
            metrics,
            shutdown,
            tasks,
            threads: Mutex::new(Vec::new()),
            forwarding,
            forwarding_thread: Mutex::new(forwarding_thread),
            logged: Logged::default(),
        })
    }

    /// Answers with `live` from now on (queries under way finish with the one they started
    /// with).
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// The current [`Live`].
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Waits for the listeners and in-flight queries to end after shutdown: at most `grace`
    /// for the UDP threads, then at most `grace` for the queries in flight. Returns whether
    /// everything ended in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // UDP threads see the shutdown within their receive timeout.
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let in_time = tokio::time::timeout(grace, joined).await.is_ok();
        // No more tasks now: the forwarding thread ends once those it holds are done.
        self.tasks.close();
        let done = in_time && tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        let forwarding = self
            .forwarding_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (true, Some(thread)) = (done, forwarding) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        done
    }
}

/// A runtime on a thread of its own for forwarded UDP queries (the upstream exchange, the
/// cache insert), at a lower CPU priority (nice +10): under a flood of names to forward, the
/// socket threads that answer every zone keep the CPU they need, and forwarded queries wait
/// (up to the forwarding limits, past which they get SERVFAIL). It runs until shutdown and
/// then until the tasks it holds are done (the drain bounds that by its grace period).
fn forwarding_runtime(
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> std::io::Result<(tokio::runtime::Handle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ruddr-forward".into())
        .spawn(move || {
            // SAFETY: plain calls on this thread's own id; a failure only leaves the priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(r) => r,
                Err(error) => {
                    let _ = tx.send(Err(error));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                shutdown.cancelled().await;
                tasks.wait().await;
            });
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the forwarding thread ended at start"))??;
    Ok((handle, thread))
}

/// `d` as the transport uses it: the TCP connection cap at most half the open-file limit
/// (the other half stays for upstream sockets, etcd, snapshots and admin), logged once.
pub fn for_transport(d: &DnsConfig) -> DnsConfig {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft);
    let fd_room = usize::try_from(nofile / 2).unwrap_or(usize::MAX).max(16);
    if d.tcp_max_connections > fd_room {
        warn!(
            configured = d.tcp_max_connections,
            lowered_to = fd_room,
            open_file_limit = nofile,
            "dns.tcp_max_connections is above half the open-file limit: lowering it",
        );
    }
    let cfg = DnsConfig {
        tcp_max_connections: d.tcp_max_connections.min(fd_room),
        ..d.clone()
    };
    info!(
        tcp_max_connections = cfg.tcp_max_connections,
        tcp_max_connections_per_client = cfg.tcp_max_connections_per_client,
        tcp_idle_timeout = ?cfg.tcp_idle_timeout,
        tcp_session_timeout = ?cfg.tcp_session_timeout,
        max_pending = cfg.max_pending,
        "dns transport limits",
    );
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_that_get_no_answer() {
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert!(matches!(decode(&[0; 5], src, Protocol::Udp), Decoded::Drop));
        // A response (QR set) is never answered, even a malformed one.
        let mut response = [0u8; 12];
        response[2] = 0x80;
        response[5] = 1; // one question that is not there
        assert!(matches!(
            decode(&response, src, Protocol::Udp),
            Decoded::Drop
        ));
        // A query with a question count but no question: FORMERR with its id.
        let mut query = [0u8; 12];
        query[0] = 0xab;
        query[1] = 0xcd;
        query[5] = 1;
        let Decoded::Malformed(header) = decode(&query, src, Protocol::Udp) else {
            panic!("expected FORMERR")
        };
        let mut out = Vec::new();
        format_error(&header, &mut out);
        assert_eq!(out.len(), 12);
        assert_eq!(&out[..2], &[0xab, 0xcd]);
        assert_eq!(out[2] & 0x80, 0x80, "QR");
        assert_eq!(out[3] & 0x0f, 1, "FORMERR");
        for bad in ["0.0.0.0:53", "255.255.255.255:53", "127.0.0.1:0", "[::]:53"] {
            assert!(!is_answerable(bad.parse().unwrap()), "{bad}");
        }
    }
}
