//! UDP: a thread per socket, a batch of queries per system call; plain queries answered on
//! the fast path, the rest decoded; forwarded names that wait go to a task; response rate
//! limiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_server::net::xfer::Protocol;
use tracing::{debug, warn};

use super::batch::{is_timeout, Batch};
use super::{decode, first_time, format_error, is_answerable, Decoded, Live, Transport};
use crate::dns::observe::Served;
use crate::dns::rrl::{Kind, Verdict};
use crate::dns::wire;
use crate::dnstap;

impl Transport {
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

    /// Serves one UDP socket on this (blocking) thread until shutdown: receives a batch,
    /// answers each query, sends the batch.
    fn udp_thread(
        self: Arc<Self>,
        socket: Arc<std::net::UdpSocket>,
        runtime: tokio::runtime::Handle,
    ) {
        let mut batch = Batch::new();
        // For dnstap's response address; a wildcard bind says nothing, so it is left out.
        let local = socket
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified());
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
            // One configuration per batch (a reload swaps it between batches).
            let live = self.live();
            for slot in 0..received {
                let Some((query, src, out)) = batch.query(slot) else {
                    self.metrics.dropped.inc();
                    continue;
                };
                if !self.answer_udp(&live, query, src, local, out, &socket, &runtime) {
                    out.clear();
                }
            }
            batch.send(&socket, received);
        }
    }

    /// Answers one UDP query into `out` (left empty when nothing is to be sent now). Queries
    /// that wait for an upstream go to a task (on the forwarding thread) that sends its own answer.
    #[allow(clippy::too_many_arguments)]
    fn answer_udp(
        self: &Arc<Self>,
        live: &Arc<Live>,
        query: &[u8],
        src: SocketAddr,
        local: Option<SocketAddr>,
        out: &mut Vec<u8>,
        socket: &Arc<std::net::UdpSocket>,
        runtime: &tokio::runtime::Handle,
    ) -> bool {
        if self.cfg.udp_fast_path && is_answerable(src) {
            if let Some(served) = live.handler.answer_fast(query, src.ip(), out) {
                return live.finish_udp(out, src, local, query, &served);
            }
        }
        let started = Instant::now();
        let request = match decode(query, src, Protocol::Udp) {
            Decoded::Drop => {
                self.metrics.dropped.inc();
                return false;
            }
            Decoded::Malformed(header) => {
                format_error(&header, out);
                return live.finish_udp(out, src, local, query, &Served::unzoned(started));
            }
            Decoded::Request(r) => r,
        };
        let deferred = match live
            .handler
            .answer_now(&request, out, crate::metrics::Proto::udp)
        {
            Ok(served) => return live.finish_udp(out, src, local, query, &served),
            Err(deferred) => deferred,
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            self.metrics.pending_limited.inc();
            if first_time(&self.logged.pending) {
                warn!(
                    limit = self.cfg.max_pending,
                    "too many queries waiting on upstreams: answering SERVFAIL (logged once; see ruddr_dns_pending_limited_total)",
                );
            }
            let served = live.handler.answer_busy(&request, out);
            return live.finish_udp(out, src, local, query, &served);
        };
        let (live, socket) = (live.clone(), socket.clone());
        let forwarded = async move {
            let mut out = Vec::new();
            let served = live
                .handler
                .answer_later(&request, deferred, &mut out)
                .await;
            drop(permit);
            if live.finish_udp(&mut out, src, local, request.as_slice(), &served) {
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
        };
        self.tasks
            .spawn_on(forwarded, self.forwarding.as_ref().unwrap_or(runtime));
        false
    }
}

/// The UDP end of an answer, under the settings it was answered with.
impl Live {
    /// Shapes the response in `out` ([`Live::shape_udp`]) and, when it goes out, records
    /// it (query log, dnstap); whether to send it.
    fn finish_udp(
        &self,
        out: &mut Vec<u8>,
        to: SocketAddr,
        local: Option<SocketAddr>,
        query: &[u8],
        served: &Served,
    ) -> bool {
        let send = self.shape_udp(out, to, query);
        if send {
            self.observer
                .served(query, out, to, local, dnstap::Transport::Udp, served);
        }
        send
    }

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
