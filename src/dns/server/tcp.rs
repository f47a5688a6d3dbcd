//! TCP: accepting within the connection caps, and serving one connection: length-prefixed
//! queries, answered in any order, pipelined up to a limit, with idle and session timeouts.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use hickory_server::net::xfer::Protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, warn};

use super::connections::Slot;
use super::tls::{Certs, Encrypted};
use super::{decode, first_time, format_error, is_answerable, Decoded, Transport};
use crate::dns::observe::Served;
use crate::dnstap;
use crate::metrics::Proto;

/// At shutdown, how long a connection that is idle (nothing in flight, nothing sent) waits for
/// its client's next query before it closes. The close then follows that query's answer at once,
/// so a client that waits for each answer before sending again sees the close before its next
/// query instead of sending one into it.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// What a stream connection carries DNS over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stream {
    Tcp,
    Tls,
}

impl Stream {
    fn labels(self) -> (Proto, dnstap::Transport) {
        match self {
            Stream::Tcp => (Proto::tcp, dnstap::Transport::Tcp),
            Stream::Tls => (Proto::dot, dnstap::Transport::Dot),
        }
    }
}

impl Transport {
    /// Accepts on `listener` until shutdown.
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) {
        let this = self.clone();
        self.tasks
            .spawn(async move { this.accept_loop(listener, None).await });
    }

    /// Accepts DNS over TLS (`Encrypted::Dot`) or HTTPS (`Encrypted::Doh`) on `listener` until
    /// shutdown: the same connection table and caps as TCP.
    pub fn serve_encrypted(
        self: &Arc<Self>,
        listener: TcpListener,
        kind: Encrypted,
        certs: Arc<Certs>,
    ) {
        let this = self.clone();
        self.tasks
            .spawn(async move { this.accept_loop(listener, Some((kind, certs))).await });
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<(Encrypted, Arc<Certs>)>,
    ) {
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
            let (slot, evicted) = self.connections.admit(peer.ip(), &self.cfg);
            if evicted > 0 {
                self.metrics.tcp_evicted.inc_by(evicted);
                if first_time(&self.logged.tcp_full) {
                    warn!(
                        max = self.cfg.tcp_max_connections,
                        per_client = self.cfg.tcp_max_connections_per_client,
                        "TCP connection limit reached: closing the longest-idle connections to make room (logged once; see ruddr_dns_tcp_evicted_total)",
                    );
                }
            }
            self.metrics.tcp_connections.inc();
            let this = self.clone();
            let tls = tls.clone();
            self.tasks.spawn(async move {
                match tls {
                    None => {
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().ok();
                        this.connection(stream, peer, local, &slot, Stream::Tcp)
                            .await;
                    }
                    Some((kind, certs)) => {
                        this.encrypted(stream, peer, &slot, kind, &certs).await;
                    }
                }
                this.metrics.tcp_connections.dec();
                drop(slot);
            });
        }
    }

    /// Serves one TCP or DNS-over-TLS connection: length-prefixed queries (RFC 7766), answered
    /// in any order, at most `tcp_max_pipelined` at once.
    pub(super) async fn connection<S>(
        self: &Arc<Self>,
        stream: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        slot: &Slot,
        kind: Stream,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (proto, tap) = kind.labels();
        let (read, mut write) = tokio::io::split(stream);
        let mut frames = FramedRead::new(
            read,
            LengthDelimitedCodec::builder()
                .length_field_length(2)
                .max_frame_length(usize::from(u16::MAX))
                .new_codec(),
        );
        type Pending = Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>;
        let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let session = tokio::time::sleep(self.cfg.tcp_session_timeout);
        tokio::pin!(session);
        let idle = tokio::time::sleep(self.cfg.tcp_idle_timeout);
        tokio::pin!(idle);
        let mut out = Vec::with_capacity(4096);
        let mut reading = true;
        // After shutdown: answer what is in flight and what the client already sent, then
        // close between queries, right after an answer (a FIN: the client sees every query it
        // sent before it answered, and asks again elsewhere for any it sends later).
        let mut draining = false;
        // An answer was written since the drain began: close as soon as nothing is left.
        let mut answered_while_draining = false;
        loop {
            let can_read = reading && in_flight.len() < self.cfg.tcp_max_pipelined;
            let frame = if draining && in_flight.is_empty() {
                let next = if !reading {
                    None
                } else if answered_while_draining {
                    // Only what has arrived already: nothing more is waited for.
                    frames.next().now_or_never()
                } else {
                    // Idle since the drain began: close after the client's next query, if it
                    // comes soon (DRAIN_WAIT).
                    tokio::time::timeout(DRAIN_WAIT, frames.next()).await.ok()
                };
                match next {
                    Some(frame) => {
                        answered_while_draining = true;
                        frame
                    }
                    _ => {
                        // FIN, then read (and drop) until the client closes, for at most a
                        // second: closing with unread input would send a reset instead.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = write.shutdown().await;
                            while let Some(Ok(_)) = frames.next().await {}
                        })
                        .await;
                        return;
                    }
                }
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled(), if !draining => { draining = true; continue }
                    _ = slot.closed.cancelled() => return,
                    _ = &mut session => return,
                    _ = &mut idle, if in_flight.is_empty() => return,
                    Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                        slot.busy.fetch_sub(1, Relaxed);
                        if !self.write(&mut write, &response).await {
                            return;
                        }
                        answered_while_draining = draining;
                        slot.touch(&self.connections);
                        idle.as_mut().reset(tokio::time::Instant::now() + self.cfg.tcp_idle_timeout);
                        continue;
                    }
                    frame = frames.next(), if can_read => frame,
                    else => return,
                }
            };
            let bytes = match frame {
                Some(Ok(bytes)) => bytes,
                // The client closed its side (finish what is in flight) or sent a frame that
                // cannot be read (close).
                None => {
                    reading = false;
                    if in_flight.is_empty() {
                        return;
                    }
                    continue;
                }
                Some(Err(error)) => {
                    debug!(%peer, %error, "tcp read");
                    return;
                }
            };
            slot.touch(&self.connections);
            idle.as_mut()
                .reset(tokio::time::Instant::now() + self.cfg.tcp_idle_timeout);
            let started = std::time::Instant::now();
            let live = self.live();
            let request = match decode(&bytes, peer, Protocol::Tcp) {
                Decoded::Drop => {
                    self.metrics.dropped.inc();
                    continue;
                }
                Decoded::Malformed(header) => {
                    format_error(&header, &mut out);
                    live.observer
                        .served(&bytes, &out, peer, local, tap, &Served::unzoned(started));
                    if !self.write(&mut write, &out).await {
                        return;
                    }
                    continue;
                }
                Decoded::Request(r) => r,
            };
            match live.handler.answer_now(&request, &mut out, proto) {
                Ok(served) => {
                    live.observer
                        .served(&bytes, &out, peer, local, tap, &served);
                    if !self.write(&mut write, &out).await {
                        return;
                    }
                }
                Err(deferred) => {
                    slot.busy.fetch_add(1, Relaxed);
                    in_flight.push(Box::pin(async move {
                        let mut out = Vec::new();
                        let served = live
                            .handler
                            .answer_later(&request, deferred, &mut out)
                            .await;
                        live.observer
                            .served(request.as_slice(), &out, peer, local, tap, &served);
                        out
                    }));
                }
            }
        }
    }

    /// Writes one length-prefixed message; false when the connection is gone or the client
    /// does not read it within the idle timeout.
    async fn write(
        &self,
        write: &mut (impl tokio::io::AsyncWrite + Unpin),
        message: &[u8],
    ) -> bool {
        let Ok(len) = u16::try_from(message.len()) else {
            return false;
        };
        let mut frame = Vec::with_capacity(message.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(message);
        // The flush matters for TLS, which may keep records buffered.
        let sent = async {
            write.write_all(&frame).await?;
            write.flush().await
        };
        matches!(
            tokio::time::timeout(self.cfg.tcp_idle_timeout, sent).await,
            Ok(Ok(()))
        )
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
