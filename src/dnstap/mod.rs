//! dnstap: every exchange as a protobuf message over Frame Streams, to a collector on a Unix
//! socket or TCP (bidirectional handshake) or into a file (unidirectional).
//!
//! The query path only copies the bytes into a bounded queue ([`Tap::exchange`]); one writer
//! task ([`run`], on the registry runtime, off the answering threads) encodes and sends. A slow
//! or absent collector costs messages, counted in `ruddr_dnstap_dropped_total`, never an
//! answer; the connection comes back with backoff.

mod encode;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel as channel;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use encode::Transport;
use encode::{Control, Message, MessageType};

use crate::config::DnstapConfig;
use crate::metrics::{DnstapDrop, Metrics};

/// Which side of ruddr an exchange was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A name ruddr answers itself (registry, SkyDNS, static zones, reverse names).
    Auth,
    /// A client's query for a forwarded name (forward-cache hits included).
    Client,
    /// ruddr asking an upstream.
    Forwarder,
}

/// One query and its response, as queued for the writer.
pub struct Event {
    role: Role,
    transport: Transport,
    query_from: SocketAddr,
    response_from: Option<SocketAddr>,
    query_time: SystemTime,
    response_time: SystemTime,
    /// The query's bytes (when queries are logged), then the response's (when responses are).
    bytes: Box<[u8]>,
    split: usize,
}

/// Where the messages go.
#[derive(Clone, Debug)]
enum Sink {
    Unix(PathBuf),
    Tcp(SocketAddr),
    File(PathBuf),
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Unix(p) => write!(f, "unix:{}", p.display()),
            Sink::Tcp(a) => write!(f, "tcp:{a}"),
            Sink::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// The query path's side: hands exchanges to the writer without waiting.
pub struct Tap {
    tx: channel::Sender<Event>,
    queries: bool,
    responses: bool,
    metrics: Arc<Metrics>,
    full_logged: AtomicBool,
}

impl Tap {
    /// The tap and its writer (to spawn), or `None` when `[dnstap]` names no sink.
    pub fn new(
        cfg: &DnstapConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Option<(
        Arc<Tap>,
        impl std::future::Future<Output = ()> + Send + 'static,
    )> {
        let sink = if let Some(p) = &cfg.socket {
            Sink::Unix(p.clone())
        } else if let Some(a) = cfg.tcp {
            Sink::Tcp(a)
        } else {
            Sink::File(cfg.file.clone()?)
        };
        // A queue the writer polls: a send never wakes a thread (no system call on the query
        // path), and the writer takes what piled up every few milliseconds.
        let (tx, rx) = channel::bounded(cfg.buffer);
        let tap = Arc::new(Tap {
            tx,
            queries: cfg.log_queries,
            responses: cfg.log_responses,
            metrics: metrics.clone(),
            full_logged: AtomicBool::new(false),
        });
        let writer = Writer {
            sink,
            identity: cfg.identity().into_bytes(),
            version: cfg.version().into_bytes(),
            queries: cfg.log_queries,
            responses: cfg.log_responses,
            metrics,
        };
        Some((tap, writer.run(rx, shutdown)))
    }

    /// Queues one exchange (`query` from `query_from` at `query_time`, answered with
    /// `response` now); dropped and counted when the queue is full.
    #[allow(clippy::too_many_arguments)]
    pub fn exchange(
        &self,
        role: Role,
        transport: Transport,
        query_from: SocketAddr,
        response_from: Option<SocketAddr>,
        query_time: SystemTime,
        query: &[u8],
        response: &[u8],
    ) {
        let q = if self.queries { query } else { &[] };
        let r = if self.responses { response } else { &[] };
        let mut bytes = Vec::with_capacity(q.len() + r.len());
        bytes.extend_from_slice(q);
        bytes.extend_from_slice(r);
        let event = Event {
            role,
            transport,
            query_from,
            response_from,
            query_time,
            response_time: SystemTime::now(),
            bytes: bytes.into_boxed_slice(),
            split: q.len(),
        };
        if let Err(e) = self.tx.try_send(event) {
            let reason = match e {
                channel::TrySendError::Full(_) => DnstapDrop::queue_full,
                channel::TrySendError::Disconnected(_) => DnstapDrop::disconnected,
            };
            self.metrics.dnstap_dropped(reason, self.messages());
            if reason == DnstapDrop::queue_full && !self.full_logged.swap(true, Ordering::Relaxed) {
                warn!("the dnstap queue is full (dnstap.buffer): dropping messages (logged once; see ruddr_dnstap_dropped_total)");
            }
        }
    }

    fn messages(&self) -> u64 {
        messages(self.queries, self.responses)
    }
}

/// Messages one exchange makes: its query, its response, or both.
fn messages(queries: bool, responses: bool) -> u64 {
    u64::from(queries) + u64::from(responses)
}

struct Writer {
    sink: Sink,
    identity: Vec<u8>,
    version: Vec<u8>,
    queries: bool,
    responses: bool,
    metrics: Arc<Metrics>,
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// How long connecting and the handshake may take, and the final STOP/FINISH.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes encoded before they are written out.
const BATCH_BYTES: usize = 256 << 10;
/// How often the writer looks at the queue when it found it empty.
const POLL: Duration = Duration::from_millis(5);

impl Writer {
    async fn run(self, rx: channel::Receiver<Event>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        let mut down_logged = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open()).await {
                Ok(Ok(mut conn)) => {
                    info!(sink = %self.sink, "dnstap connected");
                    self.metrics.dnstap_connected.set(1);
                    backoff = Duration::from_millis(250);
                    down_logged = false;
                    let ended = self.stream(&mut conn, &rx, &shutdown).await;
                    self.metrics.dnstap_connected.set(0);
                    match ended {
                        Ok(()) => {
                            let _ =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, self.stop(&mut conn)).await;
                            info!(sink = %self.sink, "dnstap stopped");
                            return;
                        }
                        Err(error) => {
                            warn!(sink = %self.sink, %error, "dnstap connection lost; reconnecting")
                        }
                    }
                }
                Ok(Err(error)) if !down_logged => {
                    warn!(sink = %self.sink, %error, "cannot reach the dnstap collector; dropping messages until it is back (logged once per outage)");
                    down_logged = true;
                }
                Err(_) if !down_logged => {
                    warn!(sink = %self.sink, "the dnstap collector did not answer the handshake; dropping messages until it does (logged once per outage)");
                    down_logged = true;
                }
                _ => {}
            }
            // Until the next attempt, messages are dropped (counted) rather than kept: a
            // collector that comes back gets what happens from then on.
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until {
                let dropped = rx.try_iter().count() as u64;
                if dropped > 0 {
                    self.metrics
                        .dnstap_dropped(DnstapDrop::disconnected, dropped * self.messages());
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL * 10) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn messages(&self) -> u64 {
        messages(self.queries, self.responses)
    }

    /// Connects (or opens the file) and starts the stream.
    async fn open(&self) -> std::io::Result<Box<dyn Conn>> {
        let mut conn: Box<dyn Conn> = match &self.sink {
            Sink::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Sink::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Sink::File(path) => {
                let file = tokio::fs::File::create(path).await?;
                let mut start = Vec::new();
                encode::control(&mut start, Control::Start);
                let mut file = Box::new(file);
                file.write_all(&start).await?;
                return Ok(file);
            }
        };
        let mut out = Vec::new();
        encode::control(&mut out, Control::Ready);
        conn.write_all(&out).await?;
        let body = read_control(&mut conn).await?;
        if !encode::control_is(&body, Control::Accept) {
            return Err(std::io::Error::other(
                "the collector did not accept protobuf:dnstap.Dnstap",
            ));
        }
        out.clear();
        encode::control(&mut out, Control::Start);
        conn.write_all(&out).await?;
        Ok(conn)
    }

    /// Writes messages until shutdown (`Ok`) or a write fails.
    async fn stream(
        &self,
        conn: &mut Box<dyn Conn>,
        rx: &channel::Receiver<Event>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(BATCH_BYTES);
        loop {
            let stopping = shutdown.is_cancelled();
            let mut sent = 0;
            // Shutting down, what is queued still goes out.
            while stopping || buf.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(ev) => sent += self.encode(&mut buf, &ev),
                    Err(_) => break,
                }
            }
            if !buf.is_empty() {
                let write = conn.write_all(&buf);
                let written = if stopping {
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, write)
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                } else {
                    write.await
                };
                if let Err(error) = written {
                    self.metrics.dnstap_dropped(DnstapDrop::disconnected, sent);
                    return Err(error);
                }
                self.metrics.dnstap_sent.inc_by(sent);
                buf.clear();
                if buf.capacity() > 4 * BATCH_BYTES {
                    buf.shrink_to(BATCH_BYTES);
                }
            }
            if stopping {
                return Ok(());
            }
            if rx.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// Ends the stream: STOP, and on a socket the collector's FINISH.
    async fn stop(&self, conn: &mut Box<dyn Conn>) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode::control(&mut out, Control::Stop);
        conn.write_all(&out).await?;
        conn.flush().await?;
        if !matches!(self.sink, Sink::File(_)) {
            let _ = read_control(conn).await?;
        }
        Ok(())
    }

    /// Appends `ev`'s messages to `buf`; how many.
    fn encode(&self, buf: &mut Vec<u8>, ev: &Event) -> u64 {
        let (q, r) = ev.bytes.split_at(ev.split);
        let (query_kind, response_kind) = match ev.role {
            Role::Auth => (MessageType::AuthQuery, MessageType::AuthResponse),
            Role::Client => (MessageType::ClientQuery, MessageType::ClientResponse),
            Role::Forwarder => (MessageType::ForwarderQuery, MessageType::ForwarderResponse),
        };
        let mut n = 0;
        let mut msg = Message {
            kind: query_kind,
            transport: ev.transport,
            query_from: ev.query_from,
            response_from: ev.response_from,
            query_time: ev.query_time,
            response_time: None,
            query: Some(q),
            response: None,
        };
        if self.queries {
            encode::data_frame(buf, &self.identity, &self.version, &msg);
            n += 1;
        }
        if self.responses {
            msg.kind = response_kind;
            msg.query = None;
            msg.response_time = Some(ev.response_time);
            msg.response = Some(r);
            encode::data_frame(buf, &self.identity, &self.version, &msg);
            n += 1;
        }
        n
    }
}

/// Reads one control frame; its body (type and fields).
async fn read_control(conn: &mut Box<dyn Conn>) -> std::io::Result<Vec<u8>> {
    let escape = conn.read_u32().await?;
    if escape != 0 {
        return Err(std::io::Error::other("expected a control frame"));
    }
    let len = conn.read_u32().await? as usize;
    if !(4..=512).contains(&len) {
        return Err(std::io::Error::other("bad control frame length"));
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sink: impl FnOnce(&mut DnstapConfig)) -> DnstapConfig {
        let mut c = DnstapConfig {
            buffer: 4,
            ..Default::default()
        };
        sink(&mut c);
        c
    }

    fn exchange(tap: &Tap) {
        tap.exchange(
            Role::Auth,
            Transport::Udp,
            "127.0.0.1:5000".parse().unwrap(),
            None,
            SystemTime::now(),
            b"query",
            b"response",
        );
    }

    /// A collector that reads the handshake and the frames (a Frame Streams reader).
    async fn collector(listener: tokio::net::UnixListener) -> Vec<Vec<u8>> {
        let (s, _) = listener.accept().await.unwrap();
        let mut conn: Box<dyn Conn> = Box::new(s);
        let ready = read_control(&mut conn).await.unwrap();
        assert!(encode::control_is(&ready, Control::Ready));
        let mut out = Vec::new();
        encode::control(&mut out, Control::Accept);
        conn.write_all(&out).await.unwrap();
        let start = read_control(&mut conn).await.unwrap();
        assert!(encode::control_is(&start, Control::Start));
        let mut frames = Vec::new();
        loop {
            let len = conn.read_u32().await.unwrap() as usize;
            if len == 0 {
                let body_len = conn.read_u32().await.unwrap() as usize;
                let mut body = vec![0; body_len];
                conn.read_exact(&mut body).await.unwrap();
                assert!(encode::control_is(&body, Control::Stop));
                out.clear();
                encode::control(&mut out, Control::Finish);
                conn.write_all(&out).await.unwrap();
                return frames;
            }
            let mut f = vec![0; len];
            conn.read_exact(&mut f).await.unwrap();
            frames.push(f);
        }
    }

    #[tokio::test]
    async fn handshake_frames_and_stop_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tap.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let token = CancellationToken::new();
        let (tap, writer) = Tap::new(
            &cfg(|c| c.socket = Some(path.clone())),
            metrics.clone(),
            token.clone(),
        )
        .unwrap();
        let reader = tokio::spawn(collector(listener));
        let writer = tokio::spawn(writer);
        while metrics.dnstap_connected.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        exchange(&tap);
        exchange(&tap);
        while metrics.dnstap_sent.get() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        token.cancel();
        writer.await.unwrap();
        let frames = reader.await.unwrap();
        assert_eq!(
            frames.len(),
            4,
            "a query and a response message per exchange"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // Nobody listens: the writer is never spawned, so the queue (4) fills.
        let metrics = Arc::new(Metrics::new());
        let (tap, _writer) = Tap::new(
            &cfg(|c| c.socket = Some(dir.path().join("none.sock"))),
            metrics.clone(),
            CancellationToken::new(),
        )
        .unwrap();
        for _ in 0..10 {
            exchange(&tap);
        }
        assert_eq!(metrics.dnstap_dropped_count(DnstapDrop::queue_full), 12);
    }

    #[tokio::test]
    async fn a_file_gets_start_frames_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tap.fstrm");
        let metrics = Arc::new(Metrics::new());
        let token = CancellationToken::new();
        let (tap, writer) = Tap::new(
            &cfg(|c| {
                c.file = Some(path.clone());
                c.log_queries = false;
            }),
            metrics.clone(),
            token.clone(),
        )
        .unwrap();
        let writer = tokio::spawn(writer);
        while metrics.dnstap_connected.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        exchange(&tap);
        while metrics.dnstap_sent.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        token.cancel();
        writer.await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut start = Vec::new();
        encode::control(&mut start, Control::Start);
        assert!(bytes.starts_with(&start));
        let mut stop = Vec::new();
        encode::control(&mut stop, Control::Stop);
        assert!(bytes.ends_with(&stop));
        let frame_len = u32::from_be_bytes(bytes[start.len()..start.len() + 4].try_into().unwrap());
        assert_eq!(
            start.len() + 4 + frame_len as usize + stop.len(),
            bytes.len(),
            "one response message only"
        );
    }
}
