//! Runs the answer core for the transports: the UDP fast path straight from a packet's bytes
//! ([`Handler::answer_fast`]), decoded requests ([`Handler::answer_now`]), forwarded names
//! that wait on an upstream ([`Handler::answer_later`], admitted by the forwarding limits
//! first), and the query metrics. Every response is written by [`wire::write_reply`].

use std::net::IpAddr;

use hickory_proto::op::{Header, ResponseCode};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseInfo};
use tracing::warn;

use super::answer::Locality;
use super::handler::Handler;
use super::observe::{Served, ZoneKind};
use super::reply::{Client, Question, Reply, Via};
use super::wire;
use super::zone::forward::{Admitted, Failure, Limited};
use crate::cache::Freshness;
use crate::metrics::{self, QueryLabels};

impl Handler {
    /// Counts one answered query by type, response code and transport, with its latency.
    fn observe(
        &self,
        request: &Request,
        started: std::time::Instant,
        info: &ResponseInfo,
        zone: ZoneKind,
        proto: metrics::Proto,
    ) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(u16::MAX, |q| q.query_type().into());
        self.observe_parts(
            qtype,
            info.response_code,
            proto,
            started,
            info.truncation,
            zone,
        );
    }

    fn observe_parts(
        &self,
        qtype: u16,
        rcode: ResponseCode,
        proto: metrics::Proto,
        started: std::time::Instant,
        truncated: bool,
        zone: ZoneKind,
    ) {
        let qtype = if qtype == u16::MAX {
            metrics::QType::OTHER
        } else {
            metrics::QType::from_u16(qtype)
        };
        let labels = QueryLabels {
            qtype,
            rcode: metrics::Rcode::from_u16(rcode.into()),
            proto,
            path: zone,
        };
        self.metrics
            .observe_query(&labels, started.elapsed(), truncated);
    }

    /// The UDP fast path: answers a plain query (see [`wire::parse_query`]) straight from its
    /// bytes when ruddr answers it itself (every zone, forward-cache hits, and SERVFAIL past the
    /// forwarding limits), writing the response into `out`. `None` when the query needs the
    /// general path (anything unusual, or a name to ask an upstream); nothing is written or
    /// counted then. The decisions are [`Handler::answer`]'s, as on the general path.
    pub fn answer_fast(&self, message: &[u8], src: IpAddr, out: &mut Vec<u8>) -> Option<Served> {
        let started = std::time::Instant::now();
        let q = wire::parse_query(message)?;
        let query = wire::lower_query(&q)?;
        let edns = q.edns.map(wire::EdnsInfo::to_edns);
        let question = Question {
            header: &q.header.metadata,
            edns: edns.as_ref(),
            query: Some(&query),
        };
        let client = Client {
            ip: src,
            protocol: Protocol::Udp,
        };
        let snapshot = self.mirror.load();
        let freshness = self.status.freshness();
        let mut reply =
            with_order_rng(|rng| self.answer(&question, &client, &snapshot, freshness, rng));
        if reply.via == Via::Forward {
            if self.forwarder.as_ref().is_some_and(|f| f.has_room(src)) {
                // An upstream is asked from a task: the general path admits and spawns it.
                return None;
            }
            // Past the forwarding limits: SERVFAIL here, with no decoding and no task, so a
            // flood of names to forward costs little more than one of registry names.
            self.note_forward_limited(src, None);
            reply = reply.code(ResponseCode::ServFail);
        }
        let written = wire::write_reply(out, q.header.metadata.id, q.question, &reply, true);
        self.observe_parts(
            q.qtype,
            written.rcode,
            metrics::Proto::udp,
            started,
            written.truncated,
            reply.zone,
        );
        self.count_reply(&reply, freshness);
        Some(Served {
            zone: reply.zone,
            fast: true,
            stale: reply.from_registry && freshness.is_stale(),
            started,
        })
    }

    /// Answers `request` at once if ruddr itself answers it, writing the encoded response into
    /// `out`. A forwarded name not in the cache comes back as [`Deferred`], for
    /// [`Handler::answer_later`] (which waits on the network), once the forwarding limits have
    /// admitted it; past them, it is answered SERVFAIL here, without a task.
    pub fn answer_now(
        &self,
        request: &Request,
        out: &mut Vec<u8>,
        proto: metrics::Proto,
    ) -> Result<Served, Deferred> {
        let started = std::time::Instant::now();
        let snapshot = self.mirror.load();
        let freshness = self.status.freshness();
        let mut reply = with_order_rng(|rng| {
            self.answer(
                &Question::of(request),
                &Client::of(request),
                &snapshot,
                freshness,
                rng,
            )
        });
        if reply.via == Via::Forward {
            match self.admit(request.src().ip()) {
                Some(admitted) => {
                    return Err(Deferred {
                        reply: Box::new(reply),
                        admitted,
                        started,
                        proto,
                    })
                }
                None => reply = reply.code(ResponseCode::ServFail),
            }
        }
        let info = encode_reply(request, &reply, out, proto);
        self.observe(request, started, &info, reply.zone, proto);
        self.count_reply(&reply, freshness);
        Ok(Served {
            zone: reply.zone,
            fast: false,
            stale: reply.from_registry && freshness.is_stale(),
            started,
        })
    }

    /// A place among the forwarded queries in flight for `client`, or `None` (counted, and
    /// logged once) when the forwarding limits are reached.
    fn admit(&self, client: IpAddr) -> Option<Admitted> {
        let forwarder = self.forwarder.as_ref()?;
        match forwarder.admit(client) {
            Ok(a) => Some(a),
            Err(limited) => {
                self.note_forward_limited(client, Some(limited));
                None
            }
        }
    }

    /// Counts a query answered SERVFAIL at the forwarding limits (logged once).
    fn note_forward_limited(&self, client: IpAddr, limited: Option<Limited>) {
        self.metrics.forward_limited.inc();
        if !self
            .forward_limit_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                %client,
                ?limited,
                "too many forwarded queries in flight: answering SERVFAIL (logged once; see ruddr_dns_forward_limited_total)",
            );
        }
    }

    /// Counts what a reply ruddr gave itself says beyond its response code: stale data,
    /// locality.
    fn count_reply(&self, reply: &Reply, freshness: Freshness) {
        if reply.from_registry && freshness.is_stale() {
            self.metrics.stale_answers.inc();
        }
        let result = match reply.locality {
            Locality::Ignored => None,
            Locality::Unlocated => Some(metrics::LocalityResult::no_locality),
            Locality::Local => Some(metrics::LocalityResult::local),
            Locality::SpillOver => Some(metrics::LocalityResult::spill_over),
        };
        if let Some(result) = result {
            self.metrics.observe_locality(result);
        }
    }

    /// Answers a request [`Handler::answer_now`] deferred: asks an upstream.
    pub async fn answer_later(
        &self,
        request: &Request,
        deferred: Deferred,
        out: &mut Vec<u8>,
    ) -> Served {
        let Deferred {
            reply,
            admitted,
            started,
            proto,
        } = deferred;
        let reply = self.forward(request, *reply).await;
        drop(admitted);
        let info = encode_reply(request, &reply, out, proto);
        self.observe(request, started, &info, ZoneKind::Forward, proto);
        Served {
            zone: ZoneKind::Forward,
            fast: false,
            stale: false,
            started,
        }
    }

    /// A SERVFAIL for `request`, when the server cannot take on more work for it.
    /// Only forwarded names wait on anything, so the answer counts as theirs.
    pub fn answer_busy(&self, request: &Request, out: &mut Vec<u8>) -> Served {
        let started = std::time::Instant::now();
        let mut reply = Reply::to(request, self.max_udp_payload).code(ResponseCode::ServFail);
        reply.meta.recursion_available = self.may_recurse(request.src().ip());
        let info = encode_reply(request, &reply, out, metrics::Proto::udp);
        self.observe(
            request,
            started,
            &info,
            ZoneKind::Forward,
            metrics::Proto::udp,
        );
        Served {
            zone: ZoneKind::Forward,
            fast: false,
            stale: false,
            started,
        }
    }

    /// The upstream's answer, or SERVFAIL when no upstream answered.
    async fn forward(&self, request: &Request, mut reply: Reply) -> Reply {
        let Some(forwarder) = &self.forwarder else {
            return reply.code(ResponseCode::Refused);
        };
        let metrics = &self.metrics;
        let upstream = forwarder
            .forward(request, reply.payload, |addr, result| {
                let result = match result {
                    Ok(()) => metrics::ForwardResult::answered,
                    Err(Failure::Timeout) => metrics::ForwardResult::timeout,
                    Err(Failure::Error) => metrics::ForwardResult::error,
                };
                metrics.observe_forward(addr, result);
            })
            .await;
        match upstream {
            Some((_, relayed, age)) => reply.relay(&relayed, age),
            None => {
                warn!(name = ?request.queries.queries().first().map(|q| q.name().to_string()), "no upstream answered");
                reply.meta.recursion_available = true;
                reply = reply.code(ResponseCode::ServFail);
            }
        }
        reply
    }
}

thread_local! {
    /// The generator of answer orders: load spreading needs an even spread, not secrecy, so a
    /// small fast generator per thread, seeded from the OS-seeded thread generator.
    static ORDER_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_rng(&mut rand::rng()));
}

pub(crate) fn with_order_rng<T>(f: impl FnOnce(&mut rand::rngs::SmallRng) -> T) -> T {
    ORDER_RNG.with(|rng| f(&mut rng.borrow_mut()))
}

/// A request [`Handler::answer_now`] did not answer itself, with what it decided so far and
/// its place among the forwarded queries in flight.
pub struct Deferred {
    reply: Box<Reply>,
    admitted: Admitted,
    started: std::time::Instant,
    proto: metrics::Proto,
}

/// Writes a reply with [`wire::write_reply`], the question as the client sent it (or, for a
/// question the fast parser does not take, as the request holds it).
pub(crate) fn encode_reply(
    request: &Request,
    reply: &Reply,
    out: &mut Vec<u8>,
    proto: metrics::Proto,
) -> ResponseInfo {
    let single = request.queries.queries().len() == 1;
    let question = match wire::question(request.as_slice()) {
        Some(q) => q,
        None if single => request.queries.as_bytes(),
        None => &[],
    };
    let udp = proto == metrics::Proto::udp;
    let written = wire::write_reply(out, request.metadata.id, question, reply, udp);
    // RFC 8467: over an encrypted transport, a padded query gets a padded response.
    if matches!(proto, metrics::Proto::dot | metrics::Proto::doh) && wire::asks_padding(request) {
        wire::pad_reply(out, wire::RESPONSE_PAD_BLOCK);
    }
    let mut header = Header {
        metadata: reply.meta,
        counts: Default::default(),
    };
    header.metadata.id = request.metadata.id;
    header.metadata.response_code = written.rcode;
    header.metadata.truncation = written.truncated;
    ResponseInfo::from(header)
}
