//! The hickory [`RequestHandler`]: protocol checks, zone matching, cached answers, per-response
//! ordering and EDNS. Never touches etcd: it reads the current [`Snapshot`] of the mirror.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use moka::sync::Cache;
use rand::Rng;
use tracing::{debug, warn};

use super::forward::{Failure, Forwarder};
use super::name::{self, Target};
use super::records::{Built, Outcome, Zone};
use super::skydns::SkyZone;
use super::zones::StaticZones;
use crate::cache::{Mirror, Snapshot};
use crate::config::DnsConfig;
use crate::metrics::{self, Metrics, QueryLabels};
use crate::registry::Status;

/// Answers DNS queries for one zone from the mirror.
pub struct Handler {
    zone: Zone,
    apex: LowerName,
    mirror: Arc<Mirror>,
    /// Built answers per (name, type, stale). Derived data only: each entry records the service
    /// generation it was built from, and an entry from another generation is never served.
    answers: Cache<(LowerName, RecordType, bool), Arc<Built>>,
    /// The SOA for the snapshot revision it was built for (the revision is the serial).
    soa: ArcSwap<(i64, Record)>,
    ns: Record,
    max_udp_payload: u16,
    max_stale: Option<std::time::Duration>,
    stale_ttl: u32,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    /// Static zones, swapped whole on reload.
    zones: Arc<ArcSwap<StaticZones>>,
    forwarder: Option<Forwarder>,
    allow_recursion: Vec<ipnet::IpNet>,
    /// Zones answered from SkyDNS sources.
    sky: Vec<SkyZone>,
    /// Whether hitting the forwarding limits was logged (once per process).
    forward_limit_logged: std::sync::atomic::AtomicBool,
}

/// Who answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// ruddr itself, with the records in the [`Reply`].
    Reply,
    /// A static zone, through hickory's catalog.
    Static,
    /// An upstream resolver.
    Forward,
}

/// What to send: header, EDNS and records, owned until the response is written.
struct Reply {
    meta: Metadata,
    edns: Option<Edns>,
    built: Option<Arc<Built>>,
    /// Indexes into `built.answers`, in response order.
    order: Vec<usize>,
    /// How many of the ordered answers get their SRV target address in the additional section.
    with_additionals: usize,
    /// Answers not from `built` (apex records).
    extra: Vec<Record>,
    soa: Option<Record>,
    /// Whether the answer came from registry data.
    from_registry: bool,
    route: Route,
    /// UDP payload limit for this client.
    payload: u16,
}

impl Handler {
    pub fn new(
        cfg: &DnsConfig,
        mirror: Arc<Mirror>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let origin = Name::from_ascii(&cfg.zone)?;
        let default_ns = Name::from_ascii("ns.dns")?.append_name(&origin)?;
        let default_hostmaster = Name::from_ascii("hostmaster")?.append_name(&origin)?;
        let zone = Zone {
            ns_name: cfg
                .ns_name
                .as_deref()
                .map(Name::from_ascii)
                .transpose()?
                .unwrap_or(default_ns),
            hostmaster: cfg
                .hostmaster
                .as_deref()
                .map(Name::from_ascii)
                .transpose()?
                .unwrap_or(default_hostmaster),
            ttl: cfg.ttl,
            negative_ttl: cfg.negative_ttl,
            serve_warning: cfg.serve_warning,
            panic_threshold: cfg.panic_threshold,
            origin: origin.clone(),
        };
        let soa = ArcSwap::from_pointee((-1, zone.soa(0)));
        Ok(Self {
            apex: LowerName::new(&origin),
            ns: zone.ns(),
            zone,
            mirror,
            answers: Cache::builder()
                .max_capacity(cfg.answer_cache_bytes)
                .weigher(
                    |(name, _, _): &(LowerName, RecordType, bool), built: &Arc<Built>| {
                        let bytes = built.memory_size() + name.len() + 64;
                        u32::try_from(bytes).unwrap_or(u32::MAX)
                    },
                )
                .build(),
            soa,
            max_udp_payload: cfg.max_udp_payload,
            max_stale: cfg.max_stale,
            stale_ttl: cfg.stale_ttl,
            status,
            metrics,
            zones: Arc::new(ArcSwap::from_pointee(StaticZones::empty())),
            forwarder: None,
            allow_recursion: Vec::new(),
            sky: Vec::new(),
            forward_limit_logged: Default::default(),
        })
    }

    /// Also answers the zones of SkyDNS sources.
    pub fn with_sky(mut self, sky: Vec<SkyZone>) -> Self {
        self.sky = sky;
        self
    }

    /// A [`Zone`] like the discovery zone's (same TTLs) for another origin: a SkyDNS zone's SOA
    /// and NS, with `ns.dns.<origin>` and `hostmaster.<origin>` as CoreDNS names them.
    pub fn zone_for(&self, origin: Name) -> anyhow::Result<Zone> {
        Ok(Zone {
            ns_name: Name::from_ascii("ns.dns")?.append_name(&origin)?,
            hostmaster: Name::from_ascii("hostmaster")?.append_name(&origin)?,
            origin,
            ..self.zone.clone()
        })
    }

    /// Serves `zones` (shared, so a reload can swap them) and forwards other names to
    /// `forwarder` for clients in `allow_recursion`.
    pub fn with_outside(
        mut self,
        zones: Arc<ArcSwap<StaticZones>>,
        forwarder: Option<Forwarder>,
        allow_recursion: Vec<ipnet::IpNet>,
    ) -> Self {
        self.zones = zones;
        self.forwarder = forwarder;
        self.allow_recursion = allow_recursion;
        self
    }

    fn may_recurse(&self, request: &Request) -> bool {
        let ip = request.src().ip().to_canonical();
        self.allow_recursion.iter().any(|net| net.contains(&ip))
    }

    /// PTR records for a registered (and served) address, if `qname` is its reverse name.
    fn reverse(&self, snapshot: &Snapshot, qname: &LowerName) -> Vec<Record> {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let Some(ip) = name::reverse_address(&labels) else {
            return Vec::new();
        };
        let owner = Name::from(qname);
        snapshot
            .instances_at(ip)
            .iter()
            .filter(|(svc, key)| {
                snapshot
                    .service(svc.as_str())
                    .and_then(|s| s.instances.get(key))
                    .is_some_and(|i| i.is_served(self.zone.serve_warning))
            })
            .filter_map(|(svc, (id, _))| self.zone.instance_name(svc.as_str(), id.as_str()))
            .map(|target| {
                Record::from_rdata(
                    owner.clone(),
                    self.zone.ttl,
                    hickory_proto::rr::RData::PTR(hickory_proto::rr::rdata::PTR(target)),
                )
            })
            .collect()
    }

    /// The zone apex this handler is authoritative for.
    pub fn origin(&self) -> &Name {
        &self.zone.origin
    }

    fn soa_for(&self, snapshot: &Snapshot) -> Record {
        let current = self.soa.load();
        if current.0 == snapshot.revision {
            return current.1.clone();
        }
        // The serial follows the etcd revision (mod 2^32, as RFC 1982 serials wrap).
        let record = self.zone.soa(snapshot.revision as u32);
        self.soa
            .store(Arc::new((snapshot.revision, record.clone())));
        record
    }

    /// Decides the whole response for one request. Never panics on any input.
    fn reply(&self, request: &Request) -> Reply {
        let mut meta = Metadata::response_from_request(&request.metadata);
        let mut reply = Reply {
            meta,
            edns: None,
            built: None,
            order: Vec::new(),
            with_additionals: 0,
            extra: Vec::new(),
            soa: None,
            from_registry: false,
            route: Route::Reply,
            payload: 512,
        };
        if let Some(req_edns) = &request.edns {
            let mut edns = Edns::new();
            reply.payload = req_edns.max_payload().clamp(512, self.max_udp_payload);
            edns.set_max_payload(reply.payload);
            reply.edns = Some(edns);
            if req_edns.version() > 0 {
                return reply.code(ResponseCode::BADVERS);
            }
        }
        if request.metadata.op_code != OpCode::Query {
            return reply.code(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return reply.code(ResponseCode::FormErr);
        };
        let query = info.query;
        let qname = query.name();
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            return reply.code(ResponseCode::Refused);
        }
        // The most specific zone answers: a static zone inside the discovery zone wins there,
        // a static parent of the discovery zone does not shadow it.
        let sky = self
            .sky
            .iter()
            .filter(|z| z.apex.zone_of(qname))
            .max_by_key(|z| z.apex.num_labels());
        let static_zone = self.zones.load().origin_of(qname).is_some_and(|o| {
            (!self.apex.zone_of(qname) || o.num_labels() > self.apex.num_labels())
                && sky.is_none_or(|z| o.num_labels() > z.apex.num_labels())
        });
        if static_zone {
            if qtype == RecordType::ANY {
                // RFC 8482: a minimal answer instead of every record set.
                reply.meta.authoritative = true;
                let hinfo = hickory_proto::rr::rdata::HINFO::new("RFC8482".into(), String::new());
                reply.extra.push(Record::from_rdata(
                    Name::from(qname),
                    self.zone.ttl,
                    hickory_proto::rr::RData::HINFO(hinfo),
                ));
                return reply;
            }
            reply.route = Route::Static;
            return reply;
        }
        if let Some(sky) = sky {
            return self.reply_sky(reply, request, sky, qname, qtype);
        }
        if !self.apex.zone_of(qname) {
            if qtype == RecordType::PTR && !self.status.is_too_stale(self.max_stale) {
                let ptrs = self.reverse(&self.mirror.load(), qname);
                if !ptrs.is_empty() {
                    reply.meta.authoritative = true;
                    reply.extra = ptrs;
                    return reply;
                }
            }
            if self.forwarder.is_some()
                && request.metadata.recursion_desired
                && !matches!(qtype, RecordType::AXFR | RecordType::IXFR)
                && self.may_recurse(request)
            {
                reply.route = Route::Forward;
                return reply;
            }
            return reply.code(ResponseCode::Refused);
        }
        meta.authoritative = true;
        reply.meta = meta;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return reply.code(ResponseCode::Refused);
        }

        let snapshot = self.mirror.load();
        let below = usize::from(qname.num_labels().saturating_sub(self.apex.num_labels()));
        let mut labels: [&[u8]; 3] = [&[]; 3];
        let target = if below > labels.len() {
            Target::None
        } else {
            for (slot, label) in labels.iter_mut().zip(qname.iter()) {
                *slot = label;
            }
            name::parse(&labels[..below])
        };
        reply.from_registry = !matches!(target, Target::Apex);
        let outcome = match target {
            Target::Apex => {
                match qtype {
                    RecordType::SOA | RecordType::ANY => reply.extra.push(self.soa_for(&snapshot)),
                    RecordType::NS => reply.extra.push(self.ns.clone()),
                    _ => {}
                }
                if reply.extra.is_empty() {
                    Outcome::NoData
                } else {
                    Outcome::Answer
                }
            }
            Target::TcpNode if !snapshot.services.is_empty() => Outcome::NoData,
            Target::TcpNode | Target::None => Outcome::NxDomain,
            // Every other name is a registry name. With no data yet (no sync, no snapshot) or
            // past max_stale, ruddr cannot say that a name does not exist: SERVFAIL, not a
            // cacheable NXDOMAIN.
            _ if !self.status.has_data() || self.status.is_too_stale(self.max_stale) => {
                reply.meta.authoritative = false;
                return reply.code(ResponseCode::ServFail);
            }
            Target::Service(s)
            | Target::ServiceSrv(s)
            | Target::ServiceNode(s)
            | Target::Instance { service: s, .. }
            | Target::NamedPort { service: s, .. }
            | Target::Tag { service: s, .. } => match snapshot.service(s) {
                None => Outcome::NxDomain,
                Some(svc) => {
                    let stale = !self.status.is_connected();
                    let key = (qname.clone(), qtype, stale);
                    let built = match self.answers.get(&key) {
                        Some(b) if b.generation == svc.generation => b,
                        _ => {
                            let ttl = if stale { self.stale_ttl } else { self.zone.ttl };
                            let b = Arc::new(self.zone.build(svc, target, qname, qtype, ttl));
                            if b.panic {
                                warn!(
                                    service = %svc.name,
                                    threshold = self.zone.panic_threshold,
                                    "too few healthy instances: answering with all of them",
                                );
                            }
                            self.answers.insert(key, b.clone());
                            b
                        }
                    };
                    let outcome = built.outcome;
                    place(&mut reply, built, request.protocol(), qname);
                    outcome
                }
            },
        };
        debug!(name = %qname, %qtype, ?outcome, "query");
        reply.settle(outcome, || self.soa_for(&snapshot))
    }
}

impl Handler {
    /// A name in a SkyDNS zone.
    fn reply_sky(
        &self,
        mut reply: Reply,
        request: &Request,
        sky: &SkyZone,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Reply {
        reply.meta.authoritative = true;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return reply.code(ResponseCode::Refused);
        }
        let snapshot = self.mirror.load();
        let serial = snapshot.revision as u32;
        if *qname == sky.apex {
            // The apex holds SOA and NS only: entries below it answer their own names.
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                reply.extra.push(sky.zone.soa(serial));
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                reply.extra.push(sky.zone.ns());
            }
            if reply.extra.is_empty() {
                reply.soa = Some(sky.zone.soa(serial));
            }
            return reply;
        }
        reply.from_registry = true;
        if !self.status.has_data() || self.status.is_too_stale(self.max_stale) {
            reply.meta.authoritative = false;
            return reply.code(ResponseCode::ServFail);
        }
        let stale = !self.status.is_connected();
        let built = sky.build(&snapshot, qname, qtype, stale.then_some(self.stale_ttl));
        let outcome = built.outcome;
        place(&mut reply, Arc::new(built), request.protocol(), qname);
        debug!(name = %qname, %qtype, ?outcome, "skydns query");
        reply.settle(outcome, || sky.zone.soa(serial))
    }
}

/// Puts `built` into `reply` in a fresh random order, cut to what fits a UDP answer.
fn place(reply: &mut Reply, built: Arc<Built>, protocol: Protocol, qname: &LowerName) {
    reply.order = shuffle(&built.order);
    if built.single {
        reply.order.truncate(1);
    }
    reply.with_additionals = if protocol == Protocol::Udp {
        let limit = usize::from(reply.payload);
        let (answers, additionals) = fit_udp(&built, &reply.order, qname, limit);
        if answers < reply.order.len() {
            // Cut here rather than let the encoder run out of room: that way the OPT record
            // always fits (RFC 6891 7) and TC says the rest is on TCP.
            reply.order.truncate(answers);
            reply.meta.truncation = true;
        }
        additionals
    } else {
        reply.order.len()
    };
    reply.built = Some(built);
}

impl Reply {
    /// Negative answers (NODATA, NXDOMAIN) carry the zone's SOA (RFC 2308).
    fn settle(mut self, outcome: Outcome, soa: impl FnOnce() -> Record) -> Self {
        match outcome {
            Outcome::Answer => {}
            Outcome::NoData => self.soa = Some(soa()),
            Outcome::NxDomain => {
                self.meta.response_code = ResponseCode::NXDomain;
                self.soa = Some(soa());
            }
        }
        self
    }

    fn code(mut self, code: ResponseCode) -> Self {
        self.meta.response_code = code;
        self
    }
}

/// A fresh random order: by priority, then weighted random (a higher weight is more likely to
/// come first; Efraimidis-Spirakis keys `-ln(u)/w`). Weight 0 ranks last but still rotates.
fn shuffle(order: &[(u16, u16)]) -> Vec<usize> {
    let mut rng = rand::rng();
    let mut keyed: Vec<(u16, f64, usize)> = order
        .iter()
        .enumerate()
        .map(|(i, &(prio, weight))| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let w = if weight == 0 { 0.01 } else { f64::from(weight) };
            (prio, -u.ln() / w, i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// How much of a built answer fits in a UDP message of `limit` bytes, with the question and an
/// OPT record (upper bounds): the number of ordered answers, and of their SRV target addresses.
/// Additional records are optional: they are cut rather than making the answer truncated.
fn fit_udp(built: &Built, order: &[usize], qname: &Name, limit: usize) -> (usize, usize) {
    const HEADER: usize = 12;
    const QUESTION_FIXED: usize = 4;
    const OPT: usize = 11;
    // The question is copied from the request as raw bytes, so the first owner name is written
    // in full: count the name twice.
    let mut size = HEADER + 2 * (qname.len() + 1) + QUESTION_FIXED + OPT;
    for (n, &i) in order.iter().enumerate() {
        size += built.answer_sizes.get(i).copied().unwrap_or(0);
        if size > limit {
            return (n, 0);
        }
    }
    for (n, &i) in order.iter().enumerate() {
        if let Some(Some(rec)) = built.additionals.get(i) {
            size += super::records::wire_size(rec);
            if size > limit {
                return (order.len(), n);
            }
        }
    }
    (order.len(), order.len())
}

impl Handler {
    /// Counts one answered query by type, response code and transport, with its latency.
    fn observe(&self, request: &Request, started: std::time::Instant, info: &ResponseInfo) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(metrics::QType::OTHER, |q| {
                metrics::QType::from_u16(q.query_type().into())
            });
        let proto = match request.protocol() {
            Protocol::Udp => metrics::Proto::udp,
            _ => metrics::Proto::tcp,
        };
        let labels = QueryLabels {
            qtype,
            rcode: metrics::Rcode::from_u16(info.response_code.into()),
            proto,
        };
        self.metrics
            .observe_query(&labels, started.elapsed(), info.truncation);
    }

    /// Sends the upstream's answer through, or SERVFAIL when no upstream answered.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        reply: Reply,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Some(forwarder) = &self.forwarder else {
            return send_code(request, reply, ResponseCode::Refused, response_handle).await;
        };
        let _admitted = match forwarder.admit(request.src().ip()) {
            Ok(a) => a,
            Err(limited) => {
                self.metrics.forward_limited.inc();
                if !self
                    .forward_limit_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!(
                        client = %request.src().ip(),
                        ?limited,
                        "too many forwarded queries in flight: answering SERVFAIL (logged once; see ruddr_dns_forward_limited_total)",
                    );
                }
                let mut reply = reply;
                reply.meta.recursion_available = true;
                return send_code(request, reply, ResponseCode::ServFail, response_handle).await;
            }
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
        let Some((_, message)) = upstream else {
            warn!(name = ?request.queries.queries().first().map(|q| q.name().to_string()), "no upstream answered");
            let mut reply = reply;
            reply.meta.recursion_available = true;
            return send_code(request, reply, ResponseCode::ServFail, response_handle).await;
        };
        let mut meta = message.metadata;
        meta.id = request.metadata.id;
        meta.message_type = hickory_proto::op::MessageType::Response;
        // Our own OPT towards the client: its buffer size, the upstream's DO bit.
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(reply.payload);
            if let Some(up) = &message.edns {
                e.set_dnssec_ok(up.flags().dnssec_ok);
            }
            e
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let empty: &[Record] = &[];
        let response = builder.build(
            meta,
            message.answers.iter(),
            message.authorities.iter(),
            empty.iter(),
            message.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "failed to send a forwarded response");
                unsent(meta)
            }
        }
    }
}

/// What to report for a response that could not be sent.
fn unsent(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(hickory_proto::op::Header {
        metadata,
        counts: Default::default(),
    })
}

/// Sends `reply` with no records and response code `code`.
async fn send_code<R: ResponseHandler>(
    request: &Request,
    mut reply: Reply,
    code: ResponseCode,
    mut response_handle: R,
) -> ResponseInfo {
    reply.meta.response_code = code;
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = &reply.edns {
        builder.edns(e);
    }
    let response = builder.build_no_records(reply.meta);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => unsent(reply.meta),
    }
}

/// Passes responses on with their EDNS buffer size (which bounds a UDP answer's encoding,
/// setting TC past it) capped at `max`.
#[derive(Clone)]
struct CapUdpPayload<R> {
    inner: R,
    max: u16,
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for CapUdpPayload<R> {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let capped = match response.edns() {
            Some(e) if e.max_payload() > self.max => {
                let mut c = e.clone();
                c.set_max_payload(self.max);
                c
            }
            _ => return self.inner.send_response(response).await,
        };
        let mut response = response;
        response.set_edns(&capped);
        self.inner.send_response(response).await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = std::time::Instant::now();
        let reply = self.reply(request);
        match reply.route {
            Route::Reply => {}
            Route::Static => {
                let zones = self.zones.load_full();
                // hickory's catalog sizes UDP answers by the client's buffer alone: cap it at
                // ours, so a static zone is no reflection amplifier.
                let capped = CapUdpPayload {
                    inner: response_handle,
                    max: self.max_udp_payload,
                };
                let info = zones
                    .catalog
                    .handle_request::<CapUdpPayload<R>, T>(request, capped)
                    .await;
                self.observe(request, started, &info);
                return info;
            }
            Route::Forward => {
                let info = self.forward(request, reply, response_handle).await;
                self.observe(request, started, &info);
                return info;
            }
        }
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &reply.edns {
            builder.edns(edns);
        }
        let empty: &[Record] = &[];
        let (answers, additionals) = match &reply.built {
            Some(b) => (b.answers.as_slice(), b.additionals.as_slice()),
            None => (empty, &[][..]),
        };
        let ordered = reply.order.iter().filter_map(|&i| answers.get(i));
        let adds = reply
            .order
            .iter()
            .take(reply.with_additionals)
            .filter_map(|&i| additionals.get(i).and_then(Option::as_deref));
        let response = builder.build(
            reply.meta,
            ordered.chain(reply.extra.iter()),
            empty.iter(),
            reply.soa.iter(),
            adds,
        );
        let from_registry = reply.from_registry;
        match response_handle.send_response(response).await {
            Ok(info) => {
                self.observe(request, started, &info);
                if from_registry && !self.status.is_connected() && self.status.has_data() {
                    self.metrics.stale_answers.inc();
                }
                info
            }
            Err(error) => {
                warn!(%error, "failed to send a DNS response");
                let mut meta = reply.meta;
                meta.response_code = ResponseCode::ServFail;
                unsent(meta)
            }
        }
    }
}
