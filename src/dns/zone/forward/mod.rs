//! Forwarding names outside ruddr's zones to upstream resolvers, in order, with a timeout each;
//! UDP first and TCP when the upstream truncates. The upstream's answer is passed through:
//! rcode, flags, TTLs and every record (DNSSEC ones included) as received, except that TTLs
//! count down while it sits in the cache and the question name takes each client's case.
//!
//! ```text
//! forward ─▶ cache hit? ──yes──▶ answer (TTLs reduced by the time cached)
//!               │ no
//!               ▼
//!           same question in flight? ──yes──▶ wait for that query's outcome (coalesce)
//!               │ no
//!               ▼
//!           a socket from the bound (udp) ─▶ upstreams in order ─▶ cache ─▶ followers, answer
//! ```

mod cache;
mod coalesce;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use futures_util::StreamExt;
use hickory_proto::op::{
    DnsRequest, DnsRequestOptions, Message, MessageType, OpCode, Query, ResponseCode,
};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::xfer::{DnsExchange, DnsHandle};
use hickory_server::server::Request;
use prometheus_client::metrics::counter::Counter;
use tracing::debug;

use crate::config::ForwardConfig;
use crate::dns::answer::Relayed;
use crate::metrics::Metrics;
use cache::Answers;
pub use cache::Key;
use coalesce::{InFlight, Role};
use udp::Sockets;

/// Upstream resolvers, tried in order; one that failed recently is tried after the others
/// (for `PENALTY`), so a dead first upstream does not cost every query a timeout.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    /// Per upstream: milliseconds after `epoch` of its last failure, 0 for none.
    failed_at: Vec<AtomicU64>,
    epoch: Instant,
    timeout: Duration,
    limits: Arc<Limits>,
    sockets: Sockets,
    answers: Answers,
    flights: InFlight,
    counters: Counters,
    /// dnstap, for the upstream exchanges (FORWARDER_QUERY / FORWARDER_RESPONSE).
    tap: Option<Arc<crate::dnstap::Tap>>,
}

/// The forwarder's counters (see `Metrics`); unregistered ones when built without metrics.
#[derive(Default)]
struct Counters {
    cache_hit: Counter,
    cache_miss: Counter,
    coalesced: Counter,
    sockets_exhausted: Counter,
}

/// Caps on forwarded queries in flight, overall and per client network.
struct Limits {
    max: usize,
    max_per_client: usize,
    /// In flight overall, and per client network. A std `Mutex`: held for one map update,
    /// never across an await.
    in_flight: Mutex<(usize, HashMap<IpNet, usize>)>,
}

/// Why a query may not be forwarded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `forward.max_in_flight` queries are already waiting for upstreams.
    Total,
    /// This client's network has `forward.max_in_flight_per_client` waiting.
    Client,
}

/// A forwarded query's place in the limits, given back when dropped.
pub struct Admitted {
    limits: Arc<Limits>,
    net: IpNet,
}

impl Limits {
    /// Whether one more query may go upstream with `total` in flight, `mine` of them from the
    /// client's network.
    fn check(&self, total: usize, mine: usize) -> Result<(), Limited> {
        if total >= self.max {
            Err(Limited::Total)
        } else if mine >= self.max_per_client {
            Err(Limited::Client)
        } else {
            Ok(())
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpNet, usize>)> {
        // A poisoned lock still holds valid counts: each update is a few integer operations.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut guard = self.limits.counts();
        let (total, per_net) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_net.get_mut(&self.net) {
            *n -= 1;
            if *n == 0 {
                per_net.remove(&self.net);
            }
        }
    }
}

/// The client network a limit counts against: /24 for IPv4, /56 for IPv6.
fn client_net(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() { 24 } else { 56 };
    // The prefix lengths are valid for their families.
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or(IpNet::from(ip))
}

const PENALTY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Error,
}

impl Forwarder {
    /// A forwarder as `cfg` says, counting cache hits, coalesced queries and socket
    /// shortages in `metrics`.
    pub fn from_config(cfg: &ForwardConfig, metrics: &Metrics) -> Self {
        Self::build(
            cfg,
            Counters {
                cache_hit: metrics.forward_cache(crate::metrics::CacheResult::hit),
                cache_miss: metrics.forward_cache(crate::metrics::CacheResult::miss),
                coalesced: metrics.forward_coalesced.clone(),
                sockets_exhausted: metrics.forward_sockets_exhausted.clone(),
            },
        )
    }

    fn build(cfg: &ForwardConfig, counters: Counters) -> Self {
        Self {
            failed_at: cfg.upstreams.iter().map(|_| AtomicU64::new(0)).collect(),
            upstreams: cfg.upstreams.clone(),
            epoch: Instant::now(),
            timeout: cfg.timeout,
            limits: Arc::new(Limits {
                max: cfg.max_in_flight,
                max_per_client: cfg.max_in_flight_per_client,
                in_flight: Mutex::new((0, HashMap::new())),
            }),
            sockets: Sockets::new(cfg.max_sockets, udp::SOCKET_WAIT),
            answers: Answers::new(cfg.cache_bytes, cfg.cache_max_ttl, cfg.cache_front_bytes),
            flights: InFlight::default(),
            counters,
            tap: None,
        }
    }

    /// Sends the upstream exchanges to `tap` too.
    pub fn with_tap(mut self, tap: Option<Arc<crate::dnstap::Tap>>) -> Self {
        self.tap = tap;
        self
    }

    /// Hands one upstream exchange to dnstap (when on).
    fn tap_exchange(
        &self,
        upstream: SocketAddr,
        asked_at: Option<std::time::SystemTime>,
        query: &Message,
        answer: &Message,
    ) {
        let (Some(tap), Some(asked_at)) = (&self.tap, asked_at) else {
            return;
        };
        let (Ok(q), Ok(r)) = (query.to_vec(), answer.to_vec()) else {
            return;
        };
        // The query left from a fresh socket on a random port: only its family is known.
        let from: SocketAddr = if upstream.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        tap.exchange(
            crate::dnstap::Role::Forwarder,
            crate::dnstap::Transport::Udp,
            from,
            Some(upstream),
            asked_at,
            &q,
            &r,
        );
    }

    /// Whether `client` would be admitted now ([`Forwarder::admit`] without taking a place).
    pub fn has_room(&self, client: IpAddr) -> bool {
        let guard = self.limits.counts();
        let (total, per_net) = &*guard;
        let mine = per_net.get(&client_net(client)).copied().unwrap_or(0);
        self.limits.check(*total, mine).is_ok()
    }

    /// A place for one more forwarded query from `client`, or why there is none.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Limited> {
        let net = client_net(client);
        let mut guard = self.limits.counts();
        let (total, per_net) = &mut *guard;
        let mine = per_net.entry(net).or_insert(0);
        self.limits.check(*total, *mine)?;
        *mine += 1;
        *total += 1;
        Ok(Admitted {
            limits: self.limits.clone(),
            net,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Upstream indexes: the ones without a recent failure first, each group in config order.
    fn order(&self) -> Vec<usize> {
        let now = self.now_ms();
        let recent = |i: &usize| {
            let at = self.failed_at[*i].load(Relaxed);
            at != 0 && now.saturating_sub(at) < PENALTY.as_millis() as u64
        };
        let (bad, good): (Vec<usize>, Vec<usize>) = (0..self.upstreams.len()).partition(recent);
        good.into_iter().chain(bad).collect()
    }

    pub fn upstreams(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.upstreams.iter().copied()
    }

    /// The longest a leader can take: UDP then TCP at every upstream, after waiting for a
    /// socket. Followers wait no longer than this.
    fn budget(&self) -> Duration {
        let attempts = u32::try_from(self.upstreams.len() * 2).unwrap_or(u32::MAX);
        self.timeout.saturating_mul(attempts) + udp::SOCKET_WAIT
    }

    /// The cached answer for `key`, with the seconds it has waited there; counts a hit. The
    /// fast path's look-up: no task, no upstream.
    pub fn cached(&self, key: &Key) -> Option<(Arc<Relayed>, u32)> {
        if !self.answers.is_enabled() {
            return None;
        }
        // A miss is counted by `forward`, which looks again.
        let (_, relayed, age) = self.answers.get(key, Instant::now())?;
        self.counters.cache_hit.inc();
        Some((relayed, age))
    }

    /// The upstream answer for the request's question: from the cache, from an identical
    /// query already in flight, or as sent by the first upstream that answers, each failure
    /// being reported through `on_attempt` (only for queries this call sent), with the seconds
    /// it waited in the cache. `payload` is the UDP size ruddr accepts from upstreams on this
    /// client's behalf.
    pub async fn forward(
        &self,
        request: &Request,
        payload: u16,
        mut on_attempt: impl FnMut(SocketAddr, Result<(), Failure>),
    ) -> Option<(SocketAddr, Arc<Relayed>, u32)> {
        let query = request.queries.queries().first()?.original().clone();
        let key = Key::of(request)?;
        if self.answers.is_enabled() {
            if let Some(hit) = self.answers.get(&key, Instant::now()) {
                self.counters.cache_hit.inc();
                return Some(hit);
            }
            self.counters.cache_miss.inc();
        }
        // A follower whose leader gave up asks again, once: as the leader or behind a new one.
        for _ in 0..2 {
            match self.flights.join(key.clone()) {
                Role::Follow(slot) => {
                    self.counters.coalesced.inc();
                    match tokio::time::timeout(self.budget(), coalesce::wait(slot)).await {
                        Ok(Some(outcome)) => {
                            return outcome.as_ref().clone().map(|(a, r)| (a, r, 0))
                        }
                        Ok(None) => continue,
                        Err(_) => return None,
                    }
                }
                Role::Lead(lead) => {
                    let outcome = self.ask(request, &query, payload, &mut on_attempt).await;
                    let relayed = outcome.map(|(addr, message)| {
                        // Before `finish`: a question arriving after it finds the cache filled.
                        self.answers.insert(key, addr, &message, Instant::now());
                        (addr, Arc::new(Relayed::new(&message)))
                    });
                    lead.finish(Arc::new(relayed.clone()));
                    return relayed.map(|(a, r)| (a, r, 0));
                }
            }
        }
        None
    }

    /// Asks the upstreams in turn (see [`Forwarder::forward`]), holding one socket of the bound.
    async fn ask(
        &self,
        request: &Request,
        query: &Query,
        payload: u16,
        on_attempt: &mut impl FnMut(SocketAddr, Result<(), Failure>),
    ) -> Option<(SocketAddr, Message)> {
        let Some(_socket) = self.sockets.acquire().await else {
            self.counters.sockets_exhausted.inc();
            debug!("every upstream socket is in use: SERVFAIL");
            return None;
        };
        let mut msg = Message::new(0, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = request.metadata.recursion_desired;
        msg.metadata.checking_disabled = request.metadata.checking_disabled;
        msg.metadata.authentic_data = request.metadata.authentic_data;
        msg.add_query(query.clone());
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = request.metadata.recursion_desired;
        options.use_edns = request.edns.is_some();
        if let Some(edns) = &request.edns {
            // A fresh OPT: our buffer size and the client's DO bit, none of its options
            // (cookies and client subnet are between the client and us).
            let mut ours = hickory_proto::op::Edns::new();
            ours.set_max_payload(payload.max(512));
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            options.edns_payload_len = payload.max(512);
            options.edns_set_dnssec_ok = edns.flags().dnssec_ok;
            msg.set_edns(ours);
        }
        let mut fallback = None;
        for i in self.order() {
            let addr = self.upstreams[i];
            // A new random id for every attempt, as each goes from a new random port.
            msg.metadata.id = rand::random();
            let asked_at = self.tap.is_some().then(std::time::SystemTime::now);
            let result = tokio::time::timeout(self.timeout, udp::exchange(addr, &msg)).await;
            let message = match result {
                Ok(Some(m)) if m.metadata.truncation => {
                    // Truncated over UDP: ask the same upstream over TCP for the whole answer.
                    match self
                        .over_tcp(addr, DnsRequest::new(msg.clone(), options))
                        .await
                    {
                        Some(m) => m,
                        None => m,
                    }
                }
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.failed_at[i].store(self.now_ms(), Relaxed);
                    debug!(upstream = %addr, "upstream failed");
                    on_attempt(addr, Err(Failure::Error));
                    continue;
                }
                Err(_) => {
                    self.failed_at[i].store(self.now_ms(), Relaxed);
                    debug!(upstream = %addr, timeout = ?self.timeout, "upstream timed out");
                    on_attempt(addr, Err(Failure::Timeout));
                    continue;
                }
            };
            self.tap_exchange(addr, asked_at, &msg, &message);
            if matches!(
                message.metadata.response_code,
                ResponseCode::ServFail | ResponseCode::Refused
            ) {
                // This upstream cannot answer (broken, or not serving us): try the next one, and
                // pass this answer on only if none does better.
                self.failed_at[i].store(self.now_ms(), Relaxed);
                on_attempt(addr, Err(Failure::Error));
                fallback = Some((addr, message));
                continue;
            }
            self.failed_at[i].store(0, Relaxed);
            on_attempt(addr, Ok(()));
            return Some((addr, message));
        }
        fallback
    }

    async fn over_tcp(&self, addr: SocketAddr, req: DnsRequest) -> Option<Message> {
        let attempt = async {
            let tcp = TcpClientStream::exchange(
                addr,
                None,
                self.timeout,
                None,
                TokioRuntimeProvider::new(),
            )
            .await
            .ok()?;
            first_response(&tcp, req).await
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .ok()
            .flatten()
    }
}

async fn first_response(
    exchange: &DnsExchange<TokioRuntimeProvider>,
    req: DnsRequest,
) -> Option<Message> {
    let mut responses = exchange.send(req);
    match responses.next().await {
        Some(Ok(resp)) => Some(resp.into_message()),
        Some(Err(error)) => {
            debug!(%error, "upstream exchange failed");
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_limits_per_client_network_and_overall() {
        let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cfg = ForwardConfig {
            upstreams: vec![up],
            max_in_flight: 3,
            max_in_flight_per_client: 2,
            ..ForwardConfig::default()
        };
        let f = Forwarder::build(&cfg, Counters::default());
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = f.admit(a("10.0.0.1")).unwrap();
        let two = f.admit(a("10.0.0.2")).unwrap();
        // Same /24: its share is used up; another network still gets one.
        assert_eq!(f.admit(a("10.0.0.200")).err(), Some(Limited::Client));
        let three = f.admit(a("10.0.1.1")).unwrap();
        assert_eq!(f.admit(a("10.0.2.1")).err(), Some(Limited::Total));
        drop(one);
        assert!(
            f.admit(a("10.0.0.3")).is_ok(),
            "a finished query frees its place"
        );
        drop((two, three));
        assert_eq!(
            client_net(a("::ffff:10.0.0.9")),
            "10.0.0.0/24".parse().unwrap()
        );
        assert_eq!(
            client_net(a("fd00:1:2:3:4::1")),
            "fd00:1:2::/56".parse().unwrap()
        );
    }
}

#[cfg(test)]
mod tests;
