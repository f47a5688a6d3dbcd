//! The DNS answer core and its adapter to hickory's request types.
//!
//! [`Handler::answer`] decides a whole response from a [`Question`], the [`Client`], a
//! [`Snapshot`] and its [`Freshness`]: protocol checks, zone routing, freshness, cached answers,
//! per-response order and UDP fitting. It does no I/O, so it is tested in-process; the transport
//! ([`super::server`]) decodes packets, calls [`Handler::answer_now`] and sends what it encodes.
//! Static zones (hickory's catalog) and forwarding need to wait, so they come back as
//! [`Deferred`] for [`Handler::answer_later`]. Never touches etcd.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseInfo};
use rand::Rng;
use tracing::{debug, warn};

use super::answer::{Locality, Rendered};
use super::answer_cache::{AnswerCache, AnswerKey};
use super::forward::{Admitted, Failure, Forwarder, Key as ForwardKey, Relayed};
use super::locality::{Located, Policy};
use super::name::{self, Target};
use super::records::{Built, Outcome, Zone};
use super::route::{route, Route};
use super::skydns::{SkyZone, SoaCache};
use super::wire;
use super::zone::file::StaticZones;
use crate::cache::{Freshness, Mirror, Snapshot};
use crate::config::{DnsConfig, LocalityConfig};
use crate::metrics::{self, Metrics, QueryLabels};
use crate::registry::Status;

/// Answers DNS queries for one zone from the mirror.
pub struct Handler {
    zone: Zone,
    apex: LowerName,
    mirror: Arc<Mirror>,
    /// Built answers per (name, type, stale, client locality). Derived data only: each entry
    /// records the service generation it was built from (the snapshot's change count for the
    /// service types), and an entry from another generation is never served. The locality is
    /// part of the key only for names whose answer follows it, so answers for one locality
    /// never reach another.
    answers: AnswerCache,
    /// Where clients are (`[locality]`).
    locality: Policy,
    /// The SOA for the snapshot revision it was built for (the revision is the serial).
    soa: SoaCache,
    ns: Record,
    max_udp_payload: u16,
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

/// The question of a request, as the answer core reads it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'r> {
    /// The request's header fields.
    pub header: &'r Metadata,
    pub edns: Option<&'r Edns>,
    /// The query, when the request holds exactly one.
    pub query: Option<&'r LowerQuery>,
}

impl<'r> Question<'r> {
    pub fn of(request: &'r Request) -> Self {
        let queries = request.queries.queries();
        Self {
            header: &request.metadata,
            edns: request.edns.as_ref(),
            query: (queries.len() == 1).then(|| &queries[0]),
        }
    }
}

/// Who asks, and how.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub protocol: Protocol,
}

impl Client {
    pub fn of(request: &Request) -> Self {
        Self {
            ip: request.src().ip(),
            protocol: request.protocol(),
        }
    }
}

/// Who sends the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// ruddr itself, with the records in the [`Reply`] (every zone, and forwarded answers
    /// from the cache).
    Reply,
    /// An upstream resolver (not in the forward cache).
    Forward,
}

/// A decided response: header, EDNS and records, owned until the response is encoded.
pub struct Reply {
    pub meta: Metadata,
    pub edns: Option<Edns>,
    pub built: Option<Arc<Built>>,
    /// Indexes into `built.answers`, in response order.
    pub order: super::answer::Order,
    /// Seconds to take off every TTL (an answer that waited in the forward cache).
    pub age: u32,
    /// Answers not from `built` (apex, reverse and RFC 8482 records).
    pub extra: Vec<Record>,
    /// The zone's SOA, in the authority section of a negative answer.
    pub soa: Option<Arc<Rendered>>,
    /// The answer came from registry data (counted as stale while etcd is away).
    pub from_registry: bool,
    pub via: Via,
    /// UDP payload limit for this client.
    pub payload: u16,
    /// What the client's locality did to the answer.
    pub locality: Locality,
}

impl Reply {
    /// An empty NOERROR response to `header`, with our OPT record if the client sent one
    /// (its buffer size clamped to 512..=`max_udp`).
    fn new(q: &Question<'_>, max_udp: u16) -> Self {
        let mut reply = Reply {
            meta: Metadata::response_from_request(q.header),
            edns: None,
            built: None,
            order: Default::default(),
            age: 0,
            extra: Vec::new(),
            soa: None,
            from_registry: false,
            via: Via::Reply,
            payload: 512,
            locality: Locality::Ignored,
        };
        if let Some(req) = q.edns {
            let mut edns = Edns::new();
            reply.payload = req.max_payload().clamp(512, max_udp);
            edns.set_max_payload(reply.payload);
            // RFC 3225: the DO bit of the query is copied into the response.
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            reply.edns = Some(edns);
        }
        reply
    }

    fn to(request: &Request, max_udp: u16) -> Self {
        Self::new(&Question::of(request), max_udp)
    }

    /// Echoes the query's client subnet option (if any), with the scope the answer used.
    fn echo_subnet(&mut self, located: &Located, depends: bool) {
        if let (Some(edns), Some(subnet)) = (self.edns.as_mut(), located.answer_subnet(depends)) {
            let options = edns.options_mut();
            options.remove(hickory_proto::rr::rdata::opt::EdnsCode::Subnet);
            options.insert(subnet);
        }
    }

    /// Relays an upstream's answer that waited `age` seconds in the forward cache: its response
    /// code and flags, its records in its order, our OPT with its DO bit.
    fn relay(&mut self, relayed: Arc<Relayed>, age: u32) {
        self.meta.response_code = relayed.response_code;
        self.meta.authoritative = relayed.authoritative;
        self.meta.authentic_data = relayed.authentic_data;
        self.meta.recursion_available = true;
        if let Some(edns) = self.edns.as_mut() {
            edns.set_dnssec_ok(relayed.dnssec_ok);
        }
        self.order = (0..relayed.built.answers.len() as u32).collect();
        self.built = Some(relayed.built.clone());
        self.age = age;
    }

    /// Negative answers (NODATA, NXDOMAIN) carry the zone's SOA (RFC 2308).
    fn settle(mut self, outcome: Outcome, soa: impl FnOnce() -> Arc<Rendered>) -> Self {
        match outcome {
            Outcome::Answer | Outcome::Referral => {}
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

    /// Puts `built` in a fresh random order. What fits a UDP message is decided when the
    /// reply is written ([`wire::write_reply`]).
    fn place(&mut self, built: Arc<Built>, rng: &mut impl Rng) {
        debug_assert_eq!(
            built.wire.spans.len(),
            built.answers.len(),
            "answers are placed after Built::finish"
        );
        self.order = built.order(rng);
        self.locality = built.locality;
        self.built = Some(built);
    }
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
            locality: Default::default(),
            min_healthy: 1,
        };
        let soa = SoaCache::default();
        Ok(Self {
            apex: LowerName::new(&origin),
            ns: zone.ns(),
            zone,
            mirror,
            answers: AnswerCache::new(cfg.answer_cache_bytes, cfg.answer_front_bytes),
            locality: Policy::default(),
            soa,
            max_udp_payload: cfg.max_udp_payload,
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

    /// Shapes answers by the client's locality as `[locality]` says.
    pub fn with_locality(mut self, cfg: &LocalityConfig) -> Self {
        self.locality = Policy::new(cfg);
        self.zone.locality = cfg.mode;
        self.zone.min_healthy = cfg.min_healthy;
        self
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

    fn may_recurse(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_recursion.iter().any(|net| net.contains(&ip))
    }

    /// The PTR answer for a registered (and served) address, if `qname` is its reverse name;
    /// its TTL follows freshness like every registry answer.
    fn reverse(
        &self,
        snapshot: &Snapshot,
        qname: &LowerName,
        freshness: Freshness,
    ) -> Option<Built> {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let ip = name::reverse_address(&labels)?;
        let owner = Name::from(qname);
        let ttl = freshness.ttl(self.zone.ttl, self.stale_ttl);
        let mut built = Built::negative(snapshot.changes, Outcome::NoData);
        for (svc, (id, _)) in snapshot.instances_at(ip).iter().filter(|(svc, key)| {
            snapshot
                .service(svc.as_str())
                .and_then(|s| s.instances.get(key))
                .is_some_and(|i| i.is_served(self.zone.serve_warning))
        }) {
            if let Some(target) = self.zone.instance_name(svc.as_str(), id.as_str()) {
                let ptr = RData::PTR(hickory_proto::rr::rdata::PTR(target));
                built.push(Record::from_rdata(owner.clone(), ttl, ptr), 0, 0, None);
            }
        }
        (!built.answers.is_empty()).then(|| built.finish(&owner))
    }

    /// The end of the wire-form name `name` that is the zone it falls in (the discovery zone,
    /// a SkyDNS zone, else its last two labels): what response rate limiting counts NXDOMAIN
    /// answers by.
    pub fn zone_suffix<'n>(&self, name: &'n [u8]) -> &'n [u8] {
        let mut starts = [0usize; 128];
        let mut count = 0;
        let mut at = 0;
        while let Some(&len) = name.get(at) {
            if len == 0 || count == starts.len() || at + 1 + usize::from(len) > name.len() {
                break;
            }
            starts[count] = at;
            count += 1;
            at += 1 + usize::from(len);
        }
        let zone_labels = |apex: &LowerName| usize::from(apex.num_labels());
        let wanted = std::iter::once(&self.apex)
            .chain(self.sky.iter().map(|z| &z.apex))
            .filter(|apex| {
                let n = zone_labels(apex);
                n <= count && {
                    let mut labels = starts[count - n..count]
                        .iter()
                        .map(|&at| &name[at + 1..at + 1 + usize::from(name[at])]);
                    apex.iter()
                        .all(|l| labels.next().is_some_and(|w| w.eq_ignore_ascii_case(l)))
                }
            })
            .map(zone_labels)
            .max()
            .unwrap_or(2)
            .min(count);
        if wanted == 0 {
            return &name[name.len().saturating_sub(1)..];
        }
        &name[starts[count - wanted]..]
    }

    /// The zone apex this handler is authoritative for.
    pub fn origin(&self) -> &Name {
        &self.zone.origin
    }

    fn soa_for(&self, snapshot: &Snapshot) -> Arc<Rendered> {
        self.soa.get(&self.zone, snapshot.revision)
    }

    /// Decides the whole response to `q` from `client`, answering registry names from
    /// `snapshot` as `freshness` allows, in an order drawn from `rng`. No I/O; never panics on
    /// any input. Static zones and forwarding come back with [`Reply::via`] set, undecided.
    pub fn answer(
        &self,
        q: &Question<'_>,
        client: &Client,
        snapshot: &Snapshot,
        freshness: Freshness,
        rng: &mut impl Rng,
    ) -> Reply {
        let mut reply = Reply::new(q, self.max_udp_payload);
        if q.edns.is_some_and(|e| e.version() > 0) {
            return reply.code(ResponseCode::BADVERS);
        }
        if q.header.op_code != OpCode::Query {
            return reply.code(ResponseCode::NotImp);
        }
        let Some(query) = q.query else {
            return reply.code(ResponseCode::FormErr);
        };
        let qname = query.name();
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            return reply.code(ResponseCode::Refused);
        }
        let zones = self.zones.load();
        match route(qname, &self.apex, &self.sky, zones.zone_of(qname)) {
            Route::Static(zone) => {
                reply.meta.authoritative = true;
                if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
                    return reply.code(ResponseCode::Refused);
                }
                let built = zone.lookup(qname, qtype);
                let outcome = built.outcome;
                if outcome == Outcome::Referral {
                    // A referral is not an authoritative answer (RFC 1034 4.3.2).
                    reply.meta.authoritative = false;
                }
                reply.place(built, rng);
                reply.settle(outcome, || zone.soa.clone())
            }
            Route::Outside => self.outside(reply, q, client, snapshot, freshness, rng),
            route @ (Route::Registry | Route::Sky(_)) => {
                // Both kinds of zone are ours: authoritative, no transfers, and registry names
                // only while the data is usable.
                reply.meta.authoritative = true;
                if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
                    return reply.code(ResponseCode::Refused);
                }
                match route {
                    Route::Sky(sky) => {
                        self.sky_name(reply, sky, qname, qtype, snapshot, freshness, rng)
                    }
                    _ => {
                        let located = self.locality.locate(client.ip, q.edns);
                        self.registry_name(reply, qname, qtype, &located, snapshot, freshness, rng)
                    }
                }
            }
        }
    }

    /// A name outside our zones: the reverse name of a registered address, else forwarded
    /// (for allowed clients asking for recursion), else refused.
    fn outside(
        &self,
        mut reply: Reply,
        q: &Question<'_>,
        client: &Client,
        snapshot: &Snapshot,
        freshness: Freshness,
        rng: &mut impl Rng,
    ) -> Reply {
        let Some(query) = q.query else {
            return reply.code(ResponseCode::FormErr);
        };
        let qtype = query.query_type();
        if qtype == RecordType::PTR && freshness.is_usable() {
            if let Some(ptrs) = self.reverse(snapshot, query.name(), freshness) {
                reply.meta.authoritative = true;
                reply.from_registry = true;
                reply.place(Arc::new(ptrs), rng);
                return reply;
            }
        }
        let Some(forwarder) = &self.forwarder else {
            return reply.code(ResponseCode::Refused);
        };
        if !q.header.recursion_desired
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
            || !self.may_recurse(client.ip)
        {
            return reply.code(ResponseCode::Refused);
        }
        reply.meta.recursion_available = true;
        let key = ForwardKey::new(
            query.original(),
            q.edns.is_some_and(|e| e.flags().dnssec_ok),
            q.header.checking_disabled,
            q.header.recursion_desired,
        );
        match forwarder.cached(&key) {
            Some((relayed, age)) => {
                reply.relay(relayed, age);
                reply
            }
            None => {
                reply.via = Via::Forward;
                reply
            }
        }
    }

    /// Registry names are answered only from usable data: with none yet (no sync, no snapshot)
    /// or past `max_stale`, ruddr cannot say that a name does not exist, so SERVFAIL rather than
    /// a cacheable NXDOMAIN.
    fn unusable(reply: Reply) -> Reply {
        let mut reply = reply.code(ResponseCode::ServFail);
        reply.meta.authoritative = false;
        reply
    }

    /// A name in the discovery zone.
    #[allow(clippy::too_many_arguments)]
    fn registry_name(
        &self,
        mut reply: Reply,
        qname: &LowerName,
        qtype: RecordType,
        located: &Located,
        snapshot: &Snapshot,
        freshness: Freshness,
        rng: &mut impl Rng,
    ) -> Reply {
        reply.echo_subnet(located, false);
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
        reply.from_registry = !matches!(
            target,
            Target::Apex | Target::BrowseDomain | Target::EmptyNode
        );
        let outcome = match target {
            Target::Apex => {
                return self.apex(reply, qtype, || self.soa_for(snapshot), || self.ns.clone())
            }
            Target::TcpNode if !snapshot.services.is_empty() => Outcome::NoData,
            Target::TcpNode | Target::None => Outcome::NxDomain,
            // Ours, like the apex: they hold no registry data.
            Target::EmptyNode => Outcome::NoData,
            Target::BrowseDomain => {
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    let apex = hickory_proto::rr::rdata::PTR(self.zone.origin.clone());
                    reply.extra.push(Record::from_rdata(
                        Name::from(qname),
                        self.zone.ttl,
                        RData::PTR(apex),
                    ));
                    Outcome::Answer
                } else {
                    Outcome::NoData
                }
            }
            _ if !freshness.is_usable() => return Self::unusable(reply),
            Target::ServiceTypes => {
                let stale = freshness.is_stale();
                let key = AnswerKey::new(qname, qtype, stale, None);
                // Any change may add or remove a service type: keyed to the whole snapshot.
                let built = match self.answers.get(&key) {
                    Some(b) if b.generation == snapshot.changes => b,
                    _ => {
                        let ttl = freshness.ttl(self.zone.ttl, self.stale_ttl);
                        let services = snapshot.services.values().map(|s| &**s);
                        let b = self
                            .zone
                            .browse(services, snapshot.changes, qname, qtype, ttl);
                        let b = Arc::new(b);
                        self.answers.insert(key, b.clone());
                        b
                    }
                };
                let outcome = built.outcome;
                reply.place(built, rng);
                outcome
            }
            Target::Service(s)
            | Target::ServiceSrv(s)
            | Target::ServiceNode(s)
            | Target::Instance { service: s, .. }
            | Target::NamedPort { service: s, .. }
            | Target::Tag { service: s, .. }
            | Target::SdInstance { service: s, .. } => {
                let stale = freshness.is_stale();
                let local = located
                    .locality
                    .clone()
                    .filter(|_| target.follows_locality());
                let key = AnswerKey::new(qname, qtype, stale, local);
                // Known current at this snapshot's change count (the steady state): no need
                // to look the service up to check the answer's generation.
                let current = self.answers.get_current(&key, snapshot.changes);
                let answer = current.or_else(|| {
                    self.service_answer(s, target, qname, qtype, key, snapshot, freshness)
                });
                match answer {
                    None => Outcome::NxDomain,
                    Some(built) => {
                        let outcome = built.outcome;
                        reply.echo_subnet(located, built.locality.depends_on_client());
                        reply.place(built, rng);
                        outcome
                    }
                }
            }
        };
        debug!(name = %qname, %qtype, ?outcome, "query");
        reply.settle(outcome, || self.soa_for(snapshot))
    }

    /// The answer for `key` about service `name` in `snapshot`: from the cache when its
    /// generation is the service's, else built and cached. `None` when there is no such service.
    #[allow(clippy::too_many_arguments)]
    fn service_answer(
        &self,
        name: &str,
        target: Target<'_>,
        qname: &LowerName,
        qtype: RecordType,
        key: AnswerKey,
        snapshot: &Snapshot,
        freshness: Freshness,
    ) -> Option<Arc<Built>> {
        let svc = snapshot.service(name)?;
        let built = match self.answers.get(&key) {
            Some(b) if b.generation == svc.generation => b,
            _ => {
                let ttl = freshness.ttl(self.zone.ttl, self.stale_ttl);
                let b = self
                    .zone
                    .build(svc, target, qname, qtype, ttl, key.locality());
                let b = Arc::new(b);
                if b.panic {
                    warn!(
                        service = %svc.name,
                        threshold = self.zone.panic_threshold,
                        "too few healthy instances: answering with all of them",
                    );
                }
                self.answers.insert(key.clone(), b.clone());
                b
            }
        };
        self.answers.confirm(&key, &built, snapshot.changes);
        Some(built)
    }

    /// A name in a SkyDNS zone: the same apex, freshness, TTL and caching rules as registry
    /// names. Any change may touch a SkyDNS name (its records come from a subtree of keys),
    /// so its answers are keyed to the whole snapshot.
    #[allow(clippy::too_many_arguments)]
    fn sky_name(
        &self,
        reply: Reply,
        sky: &SkyZone,
        qname: &LowerName,
        qtype: RecordType,
        snapshot: &Snapshot,
        freshness: Freshness,
        rng: &mut impl Rng,
    ) -> Reply {
        let soa = || sky.soa.get(&sky.zone, snapshot.revision);
        if *qname == sky.apex {
            // The apex holds SOA and NS only: entries below it answer their own names.
            return self.apex(reply, qtype, soa, || sky.zone.ns());
        }
        let mut reply = reply;
        reply.from_registry = true;
        if !freshness.is_usable() {
            return Self::unusable(reply);
        }
        let key = AnswerKey::new(qname, qtype, freshness.is_stale(), None);
        let built = match self.answers.get_current(&key, snapshot.changes) {
            Some(b) => b,
            None => {
                let b = match self.answers.get(&key) {
                    Some(b) if b.generation == snapshot.changes => b,
                    _ => {
                        let b = sky.build(snapshot, qname, qtype, freshness, self.stale_ttl);
                        let b = Arc::new(b);
                        self.answers.insert(key.clone(), b.clone());
                        b
                    }
                };
                self.answers.confirm(&key, &b, snapshot.changes);
                b
            }
        };
        let outcome = built.outcome;
        reply.place(built, rng);
        debug!(name = %qname, %qtype, ?outcome, "skydns query");
        reply.settle(outcome, soa)
    }

    /// The apex of the discovery zone or a SkyDNS zone: its SOA and NS; ANY gets the SOA alone
    /// (RFC 8482); other types NODATA.
    fn apex(
        &self,
        mut reply: Reply,
        qtype: RecordType,
        soa: impl Fn() -> Arc<Rendered>,
        ns: impl FnOnce() -> Record,
    ) -> Reply {
        match qtype {
            RecordType::SOA | RecordType::ANY => reply.extra.push(soa().record.clone()),
            RecordType::NS => reply.extra.push(ns()),
            _ => return reply.settle(Outcome::NoData, soa),
        }
        reply
    }
}

impl Handler {
    /// Counts one answered query by type, response code and transport, with its latency.
    fn observe(&self, request: &Request, started: std::time::Instant, info: &ResponseInfo) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(u16::MAX, |q| q.query_type().into());
        self.observe_parts(
            qtype,
            info.response_code,
            request.protocol(),
            started,
            info.truncation,
        );
    }

    fn observe_parts(
        &self,
        qtype: u16,
        rcode: ResponseCode,
        protocol: Protocol,
        started: std::time::Instant,
        truncated: bool,
    ) {
        let qtype = if qtype == u16::MAX {
            metrics::QType::OTHER
        } else {
            metrics::QType::from_u16(qtype)
        };
        let proto = match protocol {
            Protocol::Udp => metrics::Proto::udp,
            _ => metrics::Proto::tcp,
        };
        let labels = QueryLabels {
            qtype,
            rcode: metrics::Rcode::from_u16(rcode.into()),
            proto,
        };
        self.metrics
            .observe_query(&labels, started.elapsed(), truncated);
    }

    /// The UDP fast path: answers a plain query (see [`wire::parse_query`]) straight from its
    /// bytes when ruddr answers it itself, writing the response into `out`. `false` when the
    /// query needs the general path (anything unusual, static zones, forwarding); nothing is
    /// written or counted then. The decisions are [`Handler::answer`]'s, as on the general path.
    pub fn answer_fast(&self, message: &[u8], src: IpAddr, out: &mut Vec<u8>) -> bool {
        let started = std::time::Instant::now();
        let Some(q) = wire::parse_query(message) else {
            return false;
        };
        let Some(query) = wire::lower_query(&q) else {
            return false;
        };
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
        let reply =
            with_order_rng(|rng| self.answer(&question, &client, &snapshot, freshness, rng));
        if reply.via != Via::Reply {
            return false;
        }
        let written = wire::write_reply(out, q.header.metadata.id, q.question, &reply, true);
        self.observe_parts(
            q.qtype,
            written.rcode,
            Protocol::Udp,
            started,
            written.truncated,
        );
        self.count_reply(&reply, freshness);
        true
    }

    /// Answers `request` at once if ruddr itself answers it, writing the encoded response into
    /// `out`. A forwarded name not in the cache comes back as [`Deferred`], for
    /// [`Handler::answer_later`] (which waits on the network), once the forwarding limits have
    /// admitted it; past them, it is answered SERVFAIL here, without a task.
    pub fn answer_now(&self, request: &Request, out: &mut Vec<u8>) -> Result<(), Deferred> {
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
                    })
                }
                None => reply = reply.code(ResponseCode::ServFail),
            }
        }
        let info = encode_reply(request, &reply, out);
        self.observe(request, started, &info);
        self.count_reply(&reply, freshness);
        Ok(())
    }

    /// A place among the forwarded queries in flight for `client`, or `None` (counted, and
    /// logged once) when the forwarding limits are reached.
    fn admit(&self, client: IpAddr) -> Option<Admitted> {
        let forwarder = self.forwarder.as_ref()?;
        match forwarder.admit(client) {
            Ok(a) => Some(a),
            Err(limited) => {
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
                None
            }
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
    pub async fn answer_later(&self, request: &Request, deferred: Deferred, out: &mut Vec<u8>) {
        let Deferred {
            reply,
            admitted,
            started,
        } = deferred;
        let reply = self.forward(request, *reply).await;
        drop(admitted);
        let info = encode_reply(request, &reply, out);
        self.observe(request, started, &info);
    }

    /// A SERVFAIL for `request`, when the server cannot take on more work for it.
    pub fn answer_busy(&self, request: &Request, out: &mut Vec<u8>) {
        let started = std::time::Instant::now();
        let mut reply = Reply::to(request, self.max_udp_payload).code(ResponseCode::ServFail);
        reply.meta.recursion_available = self.may_recurse(request.src().ip());
        let info = encode_reply(request, &reply, out);
        self.observe(request, started, &info);
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
            Some((_, relayed, age)) => reply.relay(relayed, age),
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

fn with_order_rng<T>(f: impl FnOnce(&mut rand::rngs::SmallRng) -> T) -> T {
    ORDER_RNG.with(|rng| f(&mut rng.borrow_mut()))
}

/// A request [`Handler::answer_now`] did not answer itself, with what it decided so far and
/// its place among the forwarded queries in flight.
pub struct Deferred {
    reply: Box<Reply>,
    admitted: Admitted,
    started: std::time::Instant,
}

/// Writes a reply with [`wire::write_reply`], the question as the client sent it (or, for a
/// question the fast parser does not take, as the request holds it).
fn encode_reply(request: &Request, reply: &Reply, out: &mut Vec<u8>) -> ResponseInfo {
    let single = request.queries.queries().len() == 1;
    let question = match wire::question(request.as_slice()) {
        Some(q) => q,
        None if single => request.queries.as_bytes(),
        None => &[],
    };
    let udp = request.protocol() == Protocol::Udp;
    let written = wire::write_reply(out, request.metadata.id, question, reply, udp);
    let mut header = Header {
        metadata: reply.meta,
        counts: Default::default(),
    };
    header.metadata.id = request.metadata.id;
    header.metadata.response_code = written.rcode;
    header.metadata.truncation = written.truncated;
    ResponseInfo::from(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message hickory encodes for `reply`'s records, in its order: the reference the
    /// wire writer's bytes are compared with.
    fn reference_message(request: &Request, reply: &Reply) -> Message {
        let mut m = Message::new(
            request.metadata.id,
            hickory_proto::op::MessageType::Response,
            OpCode::Query,
        );
        m.metadata = reply.meta;
        m.metadata.id = request.metadata.id;
        m.add_query(request.queries.queries()[0].original().clone());
        if let Some(built) = &reply.built {
            for &i in &reply.order {
                m.add_answer(built.answers[i as usize].record.clone());
            }
            m.authorities.extend(built.authority.iter().cloned());
            for &i in &reply.order {
                m.additionals
                    .extend(built.answers[i as usize].glue.iter().cloned());
            }
            m.additionals.extend(built.additional.iter().cloned());
        }
        m.answers.extend(reply.extra.iter().cloned());
        if let Some(soa) = &reply.soa {
            m.add_authority(soa.record.clone());
        }
        if let Some(edns) = &reply.edns {
            m.set_edns(edns.clone());
        }
        Message::from_vec(&m.to_vec().unwrap()).unwrap()
    }
    use crate::cache::{Health, Instance, InstanceId, ServiceName, SourceId, Update};
    use hickory_proto::op::{Message, Query};
    use rand::SeedableRng;

    const STALE: Freshness = Freshness::Stale { age: None };

    fn instance(id: &str, addr: &str, port: u16) -> Instance {
        Instance::for_test(id, addr, Some(port))
    }

    /// A handler for `svc.internal.` over a mirror with `web` (3 instances) and `big` (200).
    fn handler() -> Handler {
        let mirror = Arc::new(Mirror::new());
        let mut updates = Vec::new();
        for (i, ip) in ["10.0.0.1", "10.0.0.2", "fd00::3"].iter().enumerate() {
            updates.push(Update::Put {
                service: ServiceName::new("web").unwrap(),
                instance: instance(&format!("w{i}"), ip, 8080),
            });
        }
        for i in 0..200u16 {
            updates.push(Update::Put {
                service: ServiceName::new("big").unwrap(),
                instance: instance(
                    &format!("b{i}"),
                    &format!("10.1.{}.{}", i / 250, i % 250),
                    80,
                ),
            });
        }
        mirror.apply(updates, 7);
        let cfg = DnsConfig {
            zone: "svc.internal.".into(),
            ..DnsConfig::default()
        };
        // answer_now reads the status: a connected registry.
        let status = Arc::new(Status::default());
        status.set_connected();
        Handler::new(&cfg, mirror, status, Arc::new(Metrics::new())).unwrap()
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn with_edns(mut m: Message, payload: u16, version: u8) -> Message {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        e.set_version(version);
        m.set_edns(e);
        m
    }

    /// Answers `m` as a UDP query and decodes what would be sent.
    fn ask(h: &Handler, m: &Message, freshness: Freshness) -> (Reply, Message) {
        ask_over(h, m, freshness, Protocol::Udp)
    }

    fn ask_over(
        h: &Handler,
        m: &Message,
        freshness: Freshness,
        protocol: Protocol,
    ) -> (Reply, Message) {
        let request = Request::from_bytes(
            m.to_vec().unwrap(),
            "127.0.0.1:5300".parse().unwrap(),
            protocol,
        )
        .unwrap();
        let snapshot = h.mirror.load();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let reply = h.answer(
            &Question::of(&request),
            &Client::of(&request),
            &snapshot,
            freshness,
            &mut rng,
        );
        let mut out = Vec::new();
        encode_reply(&request, &reply, &mut out);
        (reply, Message::from_vec(&out).unwrap())
    }

    fn rcode(h: &Handler, name: &str, qtype: RecordType, f: Freshness) -> ResponseCode {
        ask(h, &query(name, qtype), f).0.meta.response_code
    }

    #[test]
    fn protocol_checks_come_first() {
        let h = handler();
        let bad_version = with_edns(query("web.svc.internal.", RecordType::A), 1232, 1);
        assert_eq!(
            ask(&h, &bad_version, Freshness::Current)
                .0
                .meta
                .response_code,
            ResponseCode::BADVERS
        );
        let mut notify = query("web.svc.internal.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(
            ask(&h, &notify, Freshness::Current).0.meta.response_code,
            ResponseCode::NotImp
        );
        let mut chaos = query("web.svc.internal.", RecordType::A);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(
            ask(&h, &chaos, Freshness::Current).0.meta.response_code,
            ResponseCode::Refused
        );
        let mut two = query("web.svc.internal.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("x.svc.internal.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            ask(&h, &two, Freshness::Current).0.meta.response_code,
            ResponseCode::FormErr
        );
        assert_eq!(
            rcode(&h, "svc.internal.", RecordType::AXFR, Freshness::Current),
            ResponseCode::Refused
        );
        // Outside every zone, with no forwarder: REFUSED.
        assert_eq!(
            rcode(&h, "example.com.", RecordType::A, Freshness::Current),
            ResponseCode::Refused
        );
    }

    #[test]
    fn positive_negative_and_apex_answers() {
        let h = handler();
        let (reply, m) = ask(
            &h,
            &query("wEb.SvC.InTeRnAl.", RecordType::A),
            Freshness::Current,
        );
        assert_eq!(reply.meta.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 2);
        assert!(m.answers.iter().all(|r| r.ttl == 5));
        let (_, nx) = ask(
            &h,
            &query("nope.svc.internal.", RecordType::A),
            Freshness::Current,
        );
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            matches!(nx.authorities[0].data, RData::SOA(_)),
            "NXDOMAIN carries the SOA"
        );
        let (_, nodata) = ask(
            &h,
            &query("web.svc.internal.", RecordType::MX),
            Freshness::Current,
        );
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty() && matches!(nodata.authorities[0].data, RData::SOA(_)));
        let (_, soa) = ask(
            &h,
            &query("svc.internal.", RecordType::SOA),
            Freshness::Current,
        );
        let RData::SOA(s) = &soa.answers[0].data else {
            panic!()
        };
        assert_eq!(s.serial, 7, "the serial is the revision");
        assert_eq!(
            rcode(&h, "_tcp.svc.internal.", RecordType::A, Freshness::Current),
            ResponseCode::NoError
        );
        assert_eq!(
            rcode(
                &h,
                "a.b.c.d.svc.internal.",
                RecordType::A,
                Freshness::Current
            ),
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn freshness_decides_registry_names_only() {
        let h = handler();
        for f in [Freshness::Empty, Freshness::Expired] {
            let (reply, m) = ask(&h, &query("web.svc.internal.", RecordType::A), f);
            assert_eq!(reply.meta.response_code, ResponseCode::ServFail, "{f:?}");
            assert!(!reply.meta.authoritative);
            assert!(m.answers.is_empty());
            assert_eq!(
                rcode(&h, "nope.svc.internal.", RecordType::A, f),
                ResponseCode::ServFail
            );
            // The apex is ruddr's own, not registry data.
            assert_eq!(
                rcode(&h, "svc.internal.", RecordType::SOA, f),
                ResponseCode::NoError
            );
        }
        let (reply, _) = ask(&h, &query("web.svc.internal.", RecordType::SRV), STALE);
        let built = reply.built.unwrap();
        assert!(
            built.answers.iter().all(|a| a.record.ttl == 30),
            "stale TTL replaces the TTL"
        );
        assert!(built
            .answers
            .iter()
            .flat_map(|a| a.glue.iter())
            .all(|g| g.ttl == 30));
        assert!(reply.from_registry);
    }

    #[test]
    fn udp_answers_are_cut_to_the_clients_buffer_with_tc() {
        let h = handler();
        for (payload, edns) in [(512u16, false), (1232, true), (4096, true)] {
            let mut m = query("_big._tcp.svc.internal.", RecordType::SRV);
            if edns {
                m = with_edns(m, payload, 0);
            }
            let request = Request::from_bytes(
                m.to_vec().unwrap(),
                "127.0.0.1:5300".parse().unwrap(),
                Protocol::Udp,
            )
            .unwrap();
            let mut out = Vec::new();
            h.answer_now(&request, &mut out).ok().unwrap();
            // ruddr's own limit is 1232 whatever the client offers.
            assert!(
                out.len() <= usize::from(payload.min(1232)),
                "{} for {payload}",
                out.len()
            );
            let sent = Message::from_vec(&out).unwrap();
            assert!(
                sent.metadata.truncation,
                "200 SRV records do not fit {payload}"
            );
            assert!(!sent.answers.is_empty());
            assert_eq!(
                sent.edns.is_some(),
                edns,
                "OPT kept whenever the client sent one"
            );
        }
        // Over TCP everything is sent.
        let (_, all) = ask_over(
            &h,
            &query("_big._tcp.svc.internal.", RecordType::SRV),
            Freshness::Current,
            Protocol::Tcp,
        );
        assert_eq!(all.answers.len(), 200);
        assert_eq!(all.additionals.len(), 200);
        assert!(!all.metadata.truncation);
    }

    #[test]
    fn order_comes_from_the_rng() {
        let h = handler();
        let m = query("web.svc.internal.", RecordType::SRV);
        let request = Request::from_bytes(
            m.to_vec().unwrap(),
            "127.0.0.1:5300".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        let snapshot = h.mirror.load();
        let order = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            h.answer(
                &Question::of(&request),
                &Client::of(&request),
                &snapshot,
                Freshness::Current,
                &mut rng,
            )
            .order
        };
        assert_eq!(order(1), order(1), "same seed, same order");
        let firsts: std::collections::HashSet<u32> = (0..50).map(|s| order(s)[0]).collect();
        assert_eq!(firsts.len(), 3, "every instance comes first for some seed");
    }

    /// A handler over `web` with a1, a2 in locality `a`, b1 in `b`, with `[locality]` mode
    /// `mode`: 127.0.0.2 is in `a`, 127.0.0.3 in `b`, 127.0.0.4 is a trusted forwarder.
    fn zoned_handler(mode: crate::config::LocalityMode) -> Handler {
        let h = handler();
        let updates = [
            ("a1", "10.0.1.1", "a"),
            ("a2", "10.0.1.2", "a"),
            ("b1", "10.0.2.1", "b"),
        ]
        .into_iter()
        .map(|(id, ip, loc)| {
            let mut i = instance(id, ip, 8080);
            i.locality = Some(loc.into());
            i.meta.insert("v".into(), id.into());
            Update::Put {
                service: ServiceName::new("zoned").unwrap(),
                instance: i,
            }
        });
        h.mirror.apply(updates, 8);
        let net = |s: &str| s.parse().unwrap();
        h.with_locality(&LocalityConfig {
            mode,
            min_healthy: 1,
            trust_client_subnet: vec![net("127.0.0.4/32")],
            clients: vec![
                crate::config::ClientLocality {
                    networks: vec![net("127.0.0.2/32"), net("10.1.0.0/16")],
                    locality: "a".into(),
                },
                crate::config::ClientLocality {
                    networks: vec![net("127.0.0.3/32")],
                    locality: "b".into(),
                },
            ],
        })
    }

    /// Answers `m` from `src` over UDP.
    fn ask_from(h: &Handler, m: &Message, src: &str) -> (Reply, Message) {
        let request = Request::from_bytes(
            m.to_vec().unwrap(),
            format!("{src}:5300").parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        let snapshot = h.mirror.load();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let reply = h.answer(
            &Question::of(&request),
            &Client::of(&request),
            &snapshot,
            Freshness::Current,
            &mut rng,
        );
        let mut out = Vec::new();
        encode_reply(&request, &reply, &mut out);
        (reply, Message::from_vec(&out).unwrap())
    }

    fn answer_data(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.to_string(),
                RData::PTR(p) => p.0.to_string(),
                RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
                other => format!("{other:?}"),
            })
            .collect();
        v.sort();
        v
    }

    fn with_subnet(m: Message, subnet: &str) -> Message {
        let mut m = with_edns(m, 1232, 0);
        let mut e = m.edns.take().unwrap();
        e.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
                subnet.parse().unwrap(),
            ));
        m.set_edns(e);
        m
    }

    fn scope(m: &Message) -> Option<u8> {
        use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
        match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
            EdnsOption::Subnet(s) => Some(s.scope_prefix()),
            _ => None,
        }
    }

    #[test]
    fn localities_never_share_cached_answers() {
        let h = zoned_handler(crate::config::LocalityMode::Only);
        let q = query("zoned.svc.internal.", RecordType::A);
        for _ in 0..3 {
            let (reply, a) = ask_from(&h, &q, "127.0.0.2");
            assert_eq!(answer_data(&a), ["10.0.1.1", "10.0.1.2"]);
            assert_eq!(reply.locality, Locality::Local);
            let (_, b) = ask_from(&h, &q, "127.0.0.3");
            assert_eq!(answer_data(&b), ["10.0.2.1"]);
            let (reply, all) = ask_from(&h, &q, "127.0.0.1");
            assert_eq!(answer_data(&all).len(), 3);
            assert_eq!(reply.locality, Locality::Unlocated);
        }
        // An instance's own name answers whoever asks.
        let (_, own) = ask_from(
            &h,
            &query("b1.zoned.svc.internal.", RecordType::A),
            "127.0.0.2",
        );
        assert_eq!(answer_data(&own), ["10.0.2.1"]);
        // DNS-SD instance lists follow locality too.
        let ptr = query("_zoned._tcp.svc.internal.", RecordType::PTR);
        let (_, b) = ask_from(&h, &ptr, "127.0.0.3");
        assert_eq!(answer_data(&b), ["b1._zoned._tcp.svc.internal."]);
        // The last local instance gone critical: spill-over at once.
        let mut b1 = instance("b1", "10.0.2.1", 8080);
        b1.locality = Some("b".into());
        b1.health = Health::Critical;
        h.mirror.apply(
            [Update::Put {
                service: ServiceName::new("zoned").unwrap(),
                instance: b1,
            }],
            9,
        );
        let (reply, b) = ask_from(&h, &q, "127.0.0.3");
        assert_eq!(answer_data(&b), ["10.0.1.1", "10.0.1.2"]);
        assert_eq!(reply.locality, Locality::SpillOver);
    }

    #[test]
    fn a_trusted_client_subnet_decides_and_is_echoed_with_its_scope() {
        let h = zoned_handler(crate::config::LocalityMode::Only);
        let q = with_subnet(query("zoned.svc.internal.", RecordType::A), "10.1.2.0/24");
        let (_, via) = ask_from(&h, &q, "127.0.0.4");
        assert_eq!(answer_data(&via), ["10.0.1.1", "10.0.1.2"]);
        assert_eq!(scope(&via), Some(16), "the matched client network's prefix");
        // From an untrusted source the option is ignored (and echoed with scope 0).
        let (_, direct) = ask_from(&h, &q, "127.0.0.3");
        assert_eq!(answer_data(&direct), ["10.0.2.1"]);
        assert_eq!(scope(&direct), Some(32));
        let (_, nobody) = ask_from(&h, &q, "127.0.0.1");
        assert_eq!(answer_data(&nobody).len(), 3);
        assert_eq!(scope(&nobody), Some(0));
        // An instance's own name does not depend on locality: scope 0.
        let own = with_subnet(
            query("a1.zoned.svc.internal.", RecordType::A),
            "10.1.2.0/24",
        );
        assert_eq!(scope(&ask_from(&h, &own, "127.0.0.4").1), Some(0));
        // Without the option, none is added.
        let (_, plain) = ask_from(
            &h,
            &with_edns(query("zoned.svc.internal.", RecordType::A), 1232, 0),
            "127.0.0.4",
        );
        assert_eq!(scope(&plain), None);
    }

    #[test]
    fn prefer_puts_local_instances_first() {
        let h = zoned_handler(crate::config::LocalityMode::Prefer);
        let q = query("zoned.svc.internal.", RecordType::A);
        for _ in 0..20 {
            let (_, b) = ask_from(&h, &q, "127.0.0.3");
            assert_eq!(b.answers.len(), 3);
            let RData::A(first) = &b.answers[0].data else {
                panic!()
            };
            assert_eq!(first.to_string(), "10.0.2.1");
        }
        let (_, srv) = ask_from(
            &h,
            &query("_zoned._tcp.svc.internal.", RecordType::SRV),
            "127.0.0.2",
        );
        assert_eq!(
            answer_data(&srv),
            [
                "0 1 8080 a1.zoned.svc.internal.",
                "0 1 8080 a2.zoned.svc.internal.",
                "1 1 8080 b1.zoned.svc.internal."
            ]
        );
    }

    #[test]
    fn dns_sd_browsing() {
        let h = handler();
        let types = query("_services._dns-sd._udp.svc.internal.", RecordType::PTR);
        let (reply, m) = ask(&h, &types, Freshness::Current);
        assert_eq!(
            answer_data(&m),
            ["_big._tcp.svc.internal.", "_web._tcp.svc.internal."]
        );
        assert!(reply.from_registry);
        let (_, list) = ask(
            &h,
            &query("_web._tcp.svc.internal.", RecordType::PTR),
            Freshness::Current,
        );
        assert_eq!(
            answer_data(&list),
            [
                "w0._web._tcp.svc.internal.",
                "w1._web._tcp.svc.internal.",
                "w2._web._tcp.svc.internal."
            ]
        );
        let (_, srv) = ask(
            &h,
            &query("w0._web._tcp.svc.internal.", RecordType::SRV),
            Freshness::Current,
        );
        assert_eq!(answer_data(&srv), ["0 1 8080 w0.web.svc.internal."]);
        assert_eq!(srv.additionals.len(), 1, "the target's address");
        let (_, txt) = ask(
            &h,
            &query("w0._web._tcp.svc.internal.", RecordType::TXT),
            Freshness::Current,
        );
        let RData::TXT(t) = &txt.answers[0].data else {
            panic!()
        };
        assert_eq!(t.txt_data.len(), 1);
        assert!(t.txt_data[0].is_empty(), "no meta: one empty string");
        for b in [
            "b._dns-sd._udp.svc.internal.",
            "lb._dns-sd._udp.svc.internal.",
        ] {
            let (_, m) = ask(&h, &query(b, RecordType::PTR), Freshness::Current);
            assert_eq!(answer_data(&m), ["svc.internal."]);
        }
        for n in [
            "_udp.svc.internal.",
            "_dns-sd._udp.svc.internal.",
            "_tcp.svc.internal.",
        ] {
            let (_, m) = ask(&h, &query(n, RecordType::PTR), Freshness::Current);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{n}");
            assert!(m.answers.is_empty() && !m.authorities.is_empty(), "{n}");
        }
        assert_eq!(
            rcode(
                &h,
                "zz._web._tcp.svc.internal.",
                RecordType::SRV,
                Freshness::Current
            ),
            ResponseCode::NXDomain
        );
        assert_eq!(
            rcode(
                &h,
                "_services._dns-sd._udp.svc.internal.",
                RecordType::PTR,
                Freshness::Expired
            ),
            ResponseCode::ServFail
        );
        // A service losing its last instance leaves the types at once (the cache is keyed to
        // the whole snapshot, not one service).
        h.mirror.apply(
            (0..3).map(|i| Update::Delete {
                service: ServiceName::new("web").unwrap(),
                id: InstanceId::new(&format!("w{i}")).unwrap(),
                source: SourceId::NATIVE,
            }),
            8,
        );
        let (_, m) = ask(&h, &types, Freshness::Current);
        assert_eq!(answer_data(&m), ["_big._tcp.svc.internal."]);
        let (_, stale) = ask(&h, &types, STALE);
        assert!(stale.answers.iter().all(|r| r.ttl == 30));
    }

    #[test]
    fn nxdomain_zone_for_rate_limiting() {
        let h = handler();
        let wire = |s: &str| {
            let mut out = Vec::new();
            let n = Name::from_ascii(s).unwrap();
            use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
            let mut e = BinEncoder::new(&mut out);
            n.emit(&mut e).unwrap();
            out
        };
        let name = wire("a.b.WEB.Svc.internal.");
        assert_eq!(h.zone_suffix(&name), wire("Svc.internal.").as_slice());
        let other = wire("x.y.example.com.");
        assert_eq!(h.zone_suffix(&other), wire("example.com.").as_slice());
        let root = wire(".");
        assert_eq!(h.zone_suffix(&root), root.as_slice());
        // Cut short: no panic.
        assert!(h.zone_suffix(&name[..5]).len() <= 5);
    }

    /// The sections of a response in a comparable form: per section, sorted (owner, TTL, data).
    fn sections(m: &Message, fold_case: bool) -> Vec<Vec<String>> {
        let show = |r: &Record| {
            let owner = r.name.to_string();
            let owner = if fold_case {
                owner.to_ascii_lowercase()
            } else {
                owner
            };
            format!("{owner} {} {}", r.ttl, r.data)
        };
        [&m.answers, &m.authorities, &m.additionals]
            .iter()
            .map(|sec| {
                let mut v: Vec<String> = sec.iter().map(show).collect();
                v.sort();
                v
            })
            .collect()
    }

    fn flags(m: &Message) -> String {
        let md = &m.metadata;
        let edns = m
            .edns
            .as_ref()
            .map(|e| (e.max_payload(), e.version(), e.flags().dnssec_ok));
        format!(
            "id={} qr={:?} op={:?} aa={} tc={} rd={} ra={} ad={} cd={} rcode={:?} q={:?} edns={edns:?}",
            md.id, md.message_type, md.op_code, md.authoritative, md.truncation, md.recursion_desired,
            md.recursion_available, md.authentic_data, md.checking_disabled, md.response_code, m.queries
        )
    }

    /// The corpus of the differential test: every name form and type, mixed case, EDNS on and
    /// off with large and small buffers, DO set.
    fn corpus() -> Vec<Vec<u8>> {
        let names = [
            "web.svc.internal.",
            "WeB.sVc.InTeRnAl.",
            "w0.web.svc.internal.",
            "W1.Web.svc.internal.",
            "_web._tcp.svc.internal.",
            "_big._tcp.svc.internal.",
            "big.svc.internal.",
            "svc.internal.",
            "SVC.Internal.",
            "_tcp.svc.internal.",
            "nope.svc.internal.",
            "a.b.c.d.svc.internal.",
            "x.nope.svc.internal.",
            "1.0.0.10.in-addr.arpa.",
            "example.com.",
        ];
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::TXT,
            RecordType::PTR,
            RecordType::ANY,
            RecordType::SOA,
            RecordType::NS,
            RecordType::MX,
            RecordType::CNAME,
        ];
        let mut out = Vec::new();
        for name in names {
            for qtype in types {
                for edns in [
                    None,
                    Some((512, false)),
                    Some((1232, true)),
                    Some((4096, false)),
                ] {
                    let mut m = query(name, qtype);
                    m.metadata.recursion_desired = qtype == RecordType::A;
                    if let Some((payload, dnssec_ok)) = edns {
                        let mut e = Edns::new();
                        e.set_max_payload(payload);
                        e.set_dnssec_ok(dnssec_ok);
                        m.set_edns(e);
                    }
                    out.push(m.to_vec().unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn answers_known_current_follow_every_registry_change() {
        let h = handler();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let addresses = |name: &str| {
            let mut out = Vec::new();
            let q = query(name, RecordType::A).to_vec().unwrap();
            assert!(h.answer_fast(&q, src, &mut out));
            let m = Message::from_vec(&out).unwrap();
            let mut ips: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
            ips.sort();
            (m.metadata.response_code, ips)
        };
        // Asked twice: built, then served as known current at this change count.
        for _ in 0..2 {
            assert_eq!(
                addresses("web.svc.internal."),
                (
                    ResponseCode::NoError,
                    vec!["10.0.0.1".into(), "10.0.0.2".into()]
                )
            );
        }
        let web = ServiceName::new("web").unwrap();
        h.mirror.apply(
            [Update::Put {
                service: web.clone(),
                instance: instance("w9", "10.0.0.9", 8080),
            }],
            8,
        );
        assert_eq!(
            addresses("web.svc.internal.").1,
            ["10.0.0.1", "10.0.0.2", "10.0.0.9"]
        );
        // A change to another service leaves this answer as it was, and it is still served.
        h.mirror.apply(
            [Update::Put {
                service: ServiceName::new("big").unwrap(),
                instance: instance("b999", "10.9.9.9", 80),
            }],
            9,
        );
        assert_eq!(addresses("web.svc.internal.").1.len(), 3);
        let deletes = ["w0", "w1", "w2", "w9"].map(|id| Update::Delete {
            service: web.clone(),
            id: InstanceId::new(id).unwrap(),
            source: SourceId::NATIVE,
        });
        h.mirror.apply(deletes, 10);
        assert_eq!(
            addresses("web.svc.internal."),
            (ResponseCode::NXDomain, vec![])
        );
    }

    #[test]
    fn the_fast_path_allocates_nothing_per_answer_in_steady_state() {
        let h = handler();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let mut queries = Vec::new();
        for (name, qtype) in [
            ("web.svc.internal.", RecordType::A),
            ("WeB.SVC.internal.", RecordType::AAAA),
            ("_web._tcp.svc.internal.", RecordType::SRV),
            ("w1.web.svc.internal.", RecordType::A),
            ("web.svc.internal.", RecordType::MX),
            ("nope.svc.internal.", RecordType::A),
        ] {
            queries.push(query(name, qtype).to_vec().unwrap());
            let mut m = with_edns(query(name, qtype), 1232, 0);
            m.metadata.id = 7;
            queries.push(m.to_vec().unwrap());
        }
        let mut out = Vec::with_capacity(4096);
        let mut answer_all = |rounds| {
            for _ in 0..rounds {
                for q in &queries {
                    out.clear();
                    assert!(h.answer_fast(q, src, &mut out));
                }
            }
        };
        // The first answers build and cache what later ones reuse (and create metric series).
        answer_all(3);
        let before = crate::alloc_count::on_this_thread();
        answer_all(100);
        let made = crate::alloc_count::on_this_thread() - before;
        assert_eq!(
            made,
            0,
            "{made} allocations for {} answers",
            100 * queries.len()
        );
    }

    #[test]
    fn fast_path_gives_the_general_paths_answers() {
        let h = handler();
        let src: std::net::SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let mut compared = 0;
        for stale in [false, true] {
            if stale {
                h.status.set_disconnected();
            }
            for bytes in corpus() {
                let mut fast = Vec::new();
                if !h.answer_fast(&bytes, src.ip(), &mut fast) {
                    continue;
                }
                let request = Request::from_bytes(bytes.clone(), src, Protocol::Udp).unwrap();
                let mut general = Vec::new();
                h.answer_now(&request, &mut general).ok().unwrap();
                let (fast, general) = (
                    Message::from_vec(&fast).unwrap(),
                    Message::from_vec(&general).unwrap(),
                );
                let what = format!(
                    "{:?} {:?}",
                    request.queries.queries()[0].original(),
                    request.edns.as_ref().map(|e| e.max_payload())
                );
                assert_eq!(flags(&fast), flags(&general), "{what}");
                // Hickory's encoder for the same decision: the reference for the bytes.
                let reply = h.answer(
                    &Question::of(&request),
                    &Client::of(&request),
                    &h.mirror.load(),
                    h.status.freshness(),
                    &mut rand::rng(),
                );
                let mut reference = reference_message(&request, &reply);
                // The reference holds every record: the writer alone decides what fits.
                reference.metadata.truncation = fast.metadata.truncation;
                assert_eq!(flags(&fast), flags(&reference), "{what}");
                if fast.metadata.truncation {
                    // Which records made it (and so how many: SRV targets differ in length)
                    // depends on the order drawn.
                    let (a, b) = (fast.answers.len(), general.answers.len());
                    assert!(a > 0 && a.abs_diff(b) <= 2, "{a} and {b} answers: {what}");
                    assert!(fast.additionals.len() <= 1 + a, "{what}");
                } else {
                    assert_eq!(sections(&fast, false), sections(&general, false), "{what}");
                    assert_eq!(sections(&fast, true), sections(&reference, true), "{what}");
                }
                if stale
                    && !fast.answers.is_empty()
                    && fast.metadata.response_code == ResponseCode::NoError
                    && what.contains("web")
                {
                    assert!(
                        fast.answers.iter().all(|r| r.ttl == 30),
                        "stale TTL: {what}"
                    );
                }
                // The question's case comes back as sent, in the question and every owner
                // that is the question's name.
                assert_eq!(fast.queries, Message::from_vec(&bytes).unwrap().queries);
                for r in &fast.answers {
                    if r.name
                        .to_string()
                        .eq_ignore_ascii_case(&fast.queries[0].name().to_string())
                    {
                        assert_eq!(
                            r.name.to_string(),
                            fast.queries[0].name().to_string(),
                            "{what}"
                        );
                    }
                }
                compared += 1;
            }
        }
        assert!(compared > 500, "{compared} compared");
    }
}
