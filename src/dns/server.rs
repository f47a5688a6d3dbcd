//! ruddr's own DNS transport: UDP sockets and TCP listeners. It decodes each packet with
//! hickory-proto, hands the request to the answer core ([`Handler`]) and sends what it encodes.
//!
//! Rules kept from hickory's server loop, and the limits it lacked:
//! - A packet shorter than a header, a packet that is itself a response (QR set), and a packet
//!   from an address that cannot be answered (port 0, unspecified, broadcast) get nothing.
//! - A query whose header decodes but whose body does not gets FORMERR.
//! - UDP queries ruddr answers itself are answered in the socket's loop, without a task. Static
//!   zones and forwarded names get a task each, at most `dns.max_pending` at once (past it:
//!   SERVFAIL at once).
//! - TCP: at most `dns.tcp_max_connections` connections, `dns.tcp_max_connections_per_client`
//!   per client address; at either cap the longest-idle connection is closed to make room
//!   (RFC 7766 6.2.3). Idle and whole-connection timeouts, at most `dns.tcp_max_pipelined`
//!   queries in flight per connection, and accept errors (EMFILE) back off instead of spinning.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hickory_proto::op::{Header, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::rrl::{Kind, RateLimiter, Verdict};
use super::wire;
use super::Handler;
use crate::metrics::Metrics;

/// Limits of the transport (the `[dns]` keys of the same names).
#[derive(Debug, Clone)]
pub struct Limits {
    pub tcp_idle_timeout: Duration,
    pub tcp_session_timeout: Duration,
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_client: usize,
    pub tcp_max_pipelined: usize,
    pub max_pending: usize,
    /// Plain UDP queries ruddr answers itself skip hickory's decoder and encoder.
    pub udp_fast_path: bool,
}

/// The listeners of one server, sharing the handler, the limits and the shutdown signal.
pub struct Transport {
    handler: Arc<Handler>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    pending: Arc<Semaphore>,
    connections: Arc<Connections>,
    /// Response rate limiting over UDP (`None`: off).
    rate_limit: Option<RateLimiter>,
    /// The UDP threads, joined on drain.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    logged: Logged,
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
        handler: Arc<Handler>,
        limits: Limits,
        rate_limit: Option<RateLimiter>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            pending: Arc::new(Semaphore::new(limits.max_pending)),
            connections: Arc::new(Connections::new(Instant::now())),
            handler,
            limits,
            metrics,
            shutdown,
            tasks: TaskTracker::new(),
            rate_limit,
            threads: Mutex::new(Vec::new()),
            logged: Logged::default(),
        })
    }

    /// Serves `socket` (blocking, with a receive timeout so shutdown is seen) on a thread of
    /// its own until shutdown.
    pub fn serve_udp(self: &Arc<Self>, socket: std::net::UdpSocket) -> std::io::Result<()> {
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let socket = Arc::new(socket);
        let thread = std::thread::Builder::new()
            .name("ruddr-udp".into())
            .spawn(move || this.udp_thread(socket, runtime))?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
        Ok(())
    }

    /// Accepts on `listener` until shutdown.
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) {
        let this = self.clone();
        self.tasks
            .spawn(async move { this.accept_loop(listener).await });
    }

    /// Waits for the listeners and in-flight queries to end after shutdown, at most `grace`.
    /// Returns whether everything ended in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // UDP threads see the shutdown within their receive timeout.
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let in_time = tokio::time::timeout(grace, joined).await.is_ok();
        self.tasks.close();
        in_time && tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Serves one UDP socket on this (blocking) thread until shutdown: receives a batch,
    /// answers each query, sends the batch.
    fn udp_thread(
        self: Arc<Self>,
        socket: Arc<std::net::UdpSocket>,
        runtime: tokio::runtime::Handle,
    ) {
        let mut batch = Batch::new();
        while !self.shutdown.is_cancelled() {
            let received = match batch.receive(&socket) {
                Ok(n) => n,
                Err(error) if is_timeout(&error) => continue,
                Err(error) => {
                    // ICMP errors for earlier replies surface here on some systems; nothing is
                    // wrong with the socket itself.
                    debug!(%error, "udp receive error");
                    continue;
                }
            };
            for slot in 0..received {
                let Some((query, src, out)) = batch.query(slot) else {
                    self.metrics.dropped.inc();
                    continue;
                };
                if !self.answer_udp(query, src, out, &socket, &runtime) {
                    out.clear();
                }
            }
            batch.send(&socket, received);
        }
    }

    /// Answers one UDP query into `out` (left empty when nothing is to be sent now). Queries
    /// that wait for a static zone or an upstream go to a task that sends its own answer.
    fn answer_udp(
        self: &Arc<Self>,
        query: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
        socket: &Arc<std::net::UdpSocket>,
        runtime: &tokio::runtime::Handle,
    ) -> bool {
        if self.limits.udp_fast_path
            && is_answerable(src)
            && self.handler.answer_fast(query, src.ip(), out)
        {
            return self.shape_udp(out, src, query);
        }
        let request = match decode(query, src, Protocol::Udp) {
            Decoded::Drop => {
                self.metrics.dropped.inc();
                return false;
            }
            Decoded::Malformed(header) => {
                format_error(&header, out);
                return self.shape_udp(out, src, query);
            }
            Decoded::Request(r) => r,
        };
        let deferred = match self.handler.answer_now(&request, out) {
            Ok(()) => return self.shape_udp(out, src, query),
            Err(deferred) => deferred,
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            self.metrics.pending_limited.inc();
            if first_time(&self.logged.pending) {
                warn!(
                    limit = self.limits.max_pending,
                    "too many queries waiting on static zones or upstreams: answering SERVFAIL (logged once; see ruddr_dns_pending_limited_total)",
                );
            }
            self.handler.answer_busy(&request, out);
            return self.shape_udp(out, src, query);
        };
        let (this, socket) = (self.clone(), socket.clone());
        let _guard = runtime.enter();
        self.tasks.spawn(async move {
            let mut out = Vec::new();
            this.handler
                .answer_later(&request, deferred, &mut out)
                .await;
            drop(permit);
            if this.shape_udp(&mut out, src, request.as_slice()) {
                let mut sent = socket.send_to(&out, src);
                if matches!(&sent, Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE)) {
                    // Larger than the interface MTU (sockets never fragment): see Batch::send.
                    wire::slip(&mut out);
                    sent = socket.send_to(&out, src);
                }
                if let Err(error) = sent {
                    debug!(%src, %error, "udp send failed");
                }
            }
        });
        false
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        const BACKOFF_MIN: Duration = Duration::from_millis(5);
        const BACKOFF_MAX: Duration = Duration::from_secs(1);
        let mut backoff = BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = self.shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) if is_transient_accept_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors (or memory): free the longest-idle connection
                    // and wait, rather than retrying at once and spinning.
                    self.metrics.tcp_accept_errors.inc();
                    if first_time(&self.logged.accept) {
                        warn!(%error, "cannot accept TCP connections: backing off (logged once; see ruddr_dns_tcp_accept_errors_total)");
                    }
                    if self.connections.evict(None) {
                        self.metrics.tcp_evicted.inc();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            if !is_answerable(peer) {
                continue;
            }
            let (slot, evicted) = self.connections.admit(peer.ip(), &self.limits);
            if evicted > 0 {
                self.metrics.tcp_evicted.inc_by(evicted);
                if first_time(&self.logged.tcp_full) {
                    warn!(
                        max = self.limits.tcp_max_connections,
                        per_client = self.limits.tcp_max_connections_per_client,
                        "TCP connection limit reached: closing the longest-idle connections to make room (logged once; see ruddr_dns_tcp_evicted_total)",
                    );
                }
            }
            self.metrics.tcp_connections.inc();
            let this = self.clone();
            self.tasks.spawn(async move {
                this.connection(stream, peer, &slot).await;
                this.metrics.tcp_connections.dec();
                drop(slot);
            });
        }
    }

    /// Serves one TCP connection: length-prefixed queries, answered in any order, at most
    /// `tcp_max_pipelined` at once.
    async fn connection(&self, stream: TcpStream, peer: SocketAddr, slot: &Slot) {
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut frames = FramedRead::new(
            read,
            LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(usize::from(u16::MAX))
                .new_codec(),
        );
        type Pending = Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>;
        let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let session = tokio::time::sleep(self.limits.tcp_session_timeout);
        tokio::pin!(session);
        let idle = tokio::time::sleep(self.limits.tcp_idle_timeout);
        tokio::pin!(idle);
        let mut out = Vec::with_capacity(4096);
        let mut reading = true;
        loop {
            let can_read = reading && in_flight.len() < self.limits.tcp_max_pipelined;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = slot.closed.cancelled() => return,
                _ = &mut session => return,
                _ = &mut idle, if in_flight.is_empty() => return,
                Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                    slot.busy.fetch_sub(1, Relaxed);
                    if !self.write(&mut write, &response).await {
                        return;
                    }
                    slot.touch(&self.connections);
                    idle.as_mut().reset(tokio::time::Instant::now() + self.limits.tcp_idle_timeout);
                }
                frame = frames.next(), if can_read => {
                    let bytes = match frame {
                        Some(Ok(bytes)) => bytes,
                        // The client closed its side (finish what is in flight) or sent a
                        // frame that cannot be read (close).
                        None => { reading = false; if in_flight.is_empty() { return } continue }
                        Some(Err(error)) => { debug!(%peer, %error, "tcp read"); return }
                    };
                    slot.touch(&self.connections);
                    idle.as_mut().reset(tokio::time::Instant::now() + self.limits.tcp_idle_timeout);
                    let request = match decode(&bytes, peer, Protocol::Tcp) {
                        Decoded::Drop => { self.metrics.dropped.inc(); continue }
                        Decoded::Malformed(header) => {
                            format_error(&header, &mut out);
                            if !self.write(&mut write, &out).await { return }
                            continue;
                        }
                        Decoded::Request(r) => r,
                    };
                    match self.handler.answer_now(&request, &mut out) {
                        Ok(()) => {
                            if !self.write(&mut write, &out).await { return }
                        }
                        Err(deferred) => {
                            let handler = self.handler.clone();
                            slot.busy.fetch_add(1, Relaxed);
                            in_flight.push(Box::pin(async move {
                                let mut out = Vec::new();
                                handler.answer_later(&request, deferred, &mut out).await;
                                out
                            }));
                        }
                    }
                }
                else => return,
            }
        }
    }

    /// Writes one length-prefixed message; false when the connection is gone or the client
    /// does not read it within the idle timeout.
    async fn write(&self, write: &mut tokio::net::tcp::OwnedWriteHalf, message: &[u8]) -> bool {
        let Ok(len) = u16::try_from(message.len()) else {
            return false;
        };
        let mut frame = Vec::with_capacity(message.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(message);
        matches!(
            tokio::time::timeout(self.limits.tcp_idle_timeout, write.write_all(&frame)).await,
            Ok(Ok(()))
        )
    }
}

impl Transport {
    /// Applies the response rate limit to the UDP response in `out` for `query`: `false` to
    /// drop it, or `true` to send `out` (cut to an empty truncated answer for a slip). TCP is
    /// never limited.
    fn shape_udp(&self, out: &mut Vec<u8>, to: SocketAddr, query: &[u8]) -> bool {
        if let (Some(limiter), Some(&flags)) = (&self.rate_limit, out.get(3)) {
            let name = wire::question_name(query).unwrap_or(&[]);
            let kind = match ResponseCode::from_low(flags & 0x0f) {
                ResponseCode::NoError => Kind::Answer { name },
                ResponseCode::NXDomain => Kind::NxDomain {
                    zone: self.handler.zone_suffix(name),
                },
                _ => Kind::Error,
            };
            match limiter.check(to.ip(), kind, Instant::now()) {
                Verdict::Send => {}
                Verdict::Drop => return false,
                Verdict::Slip => wire::slip(out),
            }
        }
        true
    }
}

/// A receive timeout (the socket's SO_RCVTIMEO, so the thread can see shutdown).
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Queries received and responses to send, a batch at a time: one `recvmmsg` and one
/// `sendmmsg` per batch instead of two system calls per query.
struct Batch {
    rx: Vec<[u8; RX_BYTES]>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    out: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    flags: Vec<libc::c_int>,
    name_lens: Vec<libc::socklen_t>,
    /// The slot of each message of the last `send`.
    sent_slots: Vec<usize>,
}

/// Queries in one batch at most.
const BATCH: usize = 32;
/// Largest UDP query read (larger ones are cut and dropped: no client sends them).
const RX_BYTES: usize = 4096;

impl Batch {
    fn new() -> Self {
        // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            rx: vec![[0u8; RX_BYTES]; BATCH],
            iov: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            out: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            names: vec![zero; BATCH],
            lens: vec![0; BATCH],
            flags: vec![0; BATCH],
            name_lens: vec![0; BATCH],
            sent_slots: Vec::with_capacity(BATCH),
        }
    }

    /// Waits for at least one datagram, then takes up to a batch of those already queued.
    fn receive(&mut self, socket: &std::net::UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // The headers point into this batch's buffers; they are rebuilt for every call (in
        // vectors that keep their capacity) so no pointer outlives a move of the batch.
        self.iov.clear();
        for b in &mut self.rx {
            self.iov.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RX_BYTES,
            });
        }
        self.hdrs.clear();
        for i in 0..BATCH {
            // SAFETY: a zeroed mmsghdr is valid; the pointers set point into `self`, which
            // outlives the call.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: see above; the kernel writes at most BATCH headers.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in self.hdrs.iter().take(n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.flags[i] = h.msg_hdr.msg_flags;
            self.name_lens[i] = h.msg_hdr.msg_namelen;
            self.out[i].clear();
        }
        Ok(n)
    }

    /// Datagram `i` of the last batch, its sender and its response buffer; `None` when it was
    /// cut (longer than a buffer) or its sender is not an IP address.
    fn query(&mut self, i: usize) -> Option<(&[u8], SocketAddr, &mut Vec<u8>)> {
        if self.flags[i] & libc::MSG_TRUNC != 0 {
            return None;
        }
        let src = socket_addr(&self.names[i])?;
        Some((&self.rx[i][..self.lens[i]], src, &mut self.out[i]))
    }

    /// Sends every non-empty response of the first `n` slots to its query's sender.
    fn send(&mut self, socket: &std::net::UdpSocket, n: usize) {
        use std::os::fd::AsRawFd;
        self.iov.clear();
        self.hdrs.clear();
        self.sent_slots.clear();
        for i in 0..n {
            if self.out[i].is_empty() {
                continue;
            }
            self.iov.push(libc::iovec {
                iov_base: self.out[i].as_mut_ptr().cast(),
                iov_len: self.out[i].len(),
            });
            // SAFETY: as in `receive`; the names are the senders the kernel wrote.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.name_lens[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
            self.sent_slots.push(i);
        }
        // The iovecs are in place now (no more pushes): point the headers at them.
        for (h, iov) in self.hdrs.iter_mut().zip(self.iov.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
        }
        let mut done = 0;
        let mut cut = usize::MAX;
        while done < self.hdrs.len() {
            // SAFETY: as above.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (self.hdrs.len() - done) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                done += sent as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EMSGSIZE) && cut != done {
                // Larger than the interface MTU, and sockets never fragment: send an empty
                // truncated answer instead (in the same buffer), so the client asks over TCP.
                cut = done;
                let slot = self.sent_slots[done];
                wire::slip(&mut self.out[slot]);
                self.iov[done].iov_len = self.out[slot].len();
                continue;
            }
            // The first message failed (a vanished peer): skip it, send the rest.
            debug!(%error, "udp send failed");
            done += 1;
        }
    }
}

/// The IP address and port in a `sockaddr_storage` the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in, which fits in the storage.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, which fits in the storage.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// Errors of one connection attempt that say nothing about the listener.
fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One open connection in the table.
struct Entry {
    client: IpAddr,
    slot: Arc<SlotState>,
}

/// What a connection and the table share.
struct SlotState {
    /// Milliseconds after the table's epoch of the last query or response.
    last_active: AtomicU64,
    /// Queries in flight on the connection.
    busy: AtomicUsize,
    /// Cancelled to close the connection (to make room for another).
    closed: CancellationToken,
}

/// A connection's place in the table; leaving it frees the place.
struct Slot {
    id: u64,
    state: Arc<SlotState>,
    table: Arc<Connections>,
}

impl std::ops::Deref for Slot {
    type Target = SlotState;
    fn deref(&self) -> &SlotState {
        &self.state
    }
}

impl Slot {
    fn touch(&self, table: &Connections) {
        self.last_active.store(table.now_ms(), Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// The open TCP connections, for the caps and for finding the longest-idle one.
struct Connections {
    epoch: Instant,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
}

impl Connections {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            inner: Mutex::new(Table::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change leaves the table whole: a poisoned lock still holds a usable table.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection from `client`, first closing the longest-idle
    /// connections (of that client at its cap, of anyone at the overall cap) to make room.
    /// Returns the place and how many connections were closed for it.
    fn admit(self: &Arc<Self>, client: IpAddr, limits: &Limits) -> (Slot, u64) {
        let mut evicted = 0;
        let mut table = self.table();
        while table.per_client.get(&client).copied().unwrap_or(0)
            >= limits.tcp_max_connections_per_client.max(1)
            && Self::evict_in(&mut table, Some(client))
        {
            evicted += 1;
        }
        while table.open.len() >= limits.tcp_max_connections.max(1)
            && Self::evict_in(&mut table, None)
        {
            evicted += 1;
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(SlotState {
            last_active: AtomicU64::new(self.now_ms()),
            busy: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        });
        table.open.insert(
            id,
            Entry {
                client,
                slot: state.clone(),
            },
        );
        *table.per_client.entry(client).or_default() += 1;
        drop(table);
        let slot = Slot {
            id,
            state,
            table: self.clone(),
        };
        (slot, evicted)
    }

    /// Closes the longest-idle connection (of `client`, if given): one with no query in flight
    /// if there is one. Returns whether one was closed.
    fn evict(&self, client: Option<IpAddr>) -> bool {
        Self::evict_in(&mut self.table(), client)
    }

    fn evict_in(table: &mut Table, client: Option<IpAddr>) -> bool {
        let victim = table
            .open
            .iter()
            .filter(|(_, e)| client.is_none_or(|c| e.client == c))
            .min_by_key(|(_, e)| {
                (
                    e.slot.busy.load(Relaxed) > 0,
                    e.slot.last_active.load(Relaxed),
                )
            })
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(entry) = Self::remove_in(table, id) {
            entry.slot.closed.cancel();
        }
        true
    }

    fn remove(&self, id: u64) {
        Self::remove_in(&mut self.table(), id);
    }

    fn remove_in(table: &mut Table, id: u64) -> Option<Entry> {
        let entry = table.open.remove(&id)?;
        if let Some(n) = table.per_client.get_mut(&entry.client) {
            *n -= 1;
            if *n == 0 {
                table.per_client.remove(&entry.client);
            }
        }
        Some(entry)
    }
}

/// Logs the transport's limits once at start.
pub fn log_limits(limits: &Limits) {
    info!(
        tcp_max_connections = limits.tcp_max_connections,
        tcp_max_connections_per_client = limits.tcp_max_connections_per_client,
        tcp_idle_timeout = ?limits.tcp_idle_timeout,
        tcp_session_timeout = ?limits.tcp_session_timeout,
        max_pending = limits.max_pending,
        "dns transport limits",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize) -> Limits {
        Limits {
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_session_timeout: Duration::from_secs(60),
            tcp_max_connections: max,
            tcp_max_connections_per_client: per_client,
            tcp_max_pipelined: 4,
            max_pending: 8,
            udp_fast_path: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_table_closes_the_longest_idle_connection() {
        let table = Arc::new(Connections::new(Instant::now()));
        let l = limits(3, 3);
        let (a, _) = table.admit(ip("127.0.0.1"), &l);
        let (b, _) = table.admit(ip("127.0.0.2"), &l);
        let (c, _) = table.admit(ip("127.0.0.3"), &l);
        a.last_active.store(50, Relaxed);
        b.last_active.store(10, Relaxed);
        c.last_active.store(30, Relaxed);
        let (d, evicted) = table.admit(ip("127.0.0.4"), &l);
        assert_eq!(evicted, 1);
        d.last_active.store(100, Relaxed);
        assert!(b.closed.is_cancelled(), "the longest idle goes");
        assert!(!a.closed.is_cancelled() && !c.closed.is_cancelled());
        assert_eq!(table.table().open.len(), 3);
        // A busy connection goes after every idle one, even if it was quiet for longer.
        c.busy.store(1, Relaxed);
        c.last_active.store(0, Relaxed);
        let (_e, evicted) = table.admit(ip("127.0.0.5"), &l);
        assert_eq!(evicted, 1);
        assert!(a.closed.is_cancelled() && !c.closed.is_cancelled());
        // Dropping a closed slot does not disturb the table.
        drop(b);
        drop(a);
        assert_eq!(table.table().open.len(), 3);
    }

    #[test]
    fn per_client_cap_closes_that_clients_connection() {
        let table = Arc::new(Connections::new(Instant::now()));
        let l = limits(100, 2);
        let (x1, _) = table.admit(ip("10.0.0.1"), &l);
        let (other, _) = table.admit(ip("10.0.0.2"), &l);
        let (x2, _) = table.admit(ip("10.0.0.1"), &l);
        other.last_active.store(0, Relaxed);
        x1.last_active.store(5, Relaxed);
        x2.last_active.store(9, Relaxed);
        let (_x3, evicted) = table.admit(ip("10.0.0.1"), &l);
        assert_eq!(evicted, 1);
        assert!(x1.closed.is_cancelled());
        assert!(
            !other.closed.is_cancelled(),
            "another client is never closed for it"
        );
        assert_eq!(table.table().per_client[&ip("10.0.0.1")], 2);
        drop(other);
        assert!(!table.table().per_client.contains_key(&ip("10.0.0.2")));
    }

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
