//! The DNS answer core: [`Handler::answer`] decides a whole response from a [`Question`], the
//! [`Client`], a [`Snapshot`] and its [`Freshness`]: protocol checks, routing to the most
//! specific zone, freshness and the stale TTL, cached built answers, negative answers with the
//! zone's SOA, the order of the answers. Every zone answers through it: registry names
//! ([`super::zone::registry`]), SkyDNS zones, static zone files and the forward cache. It does
//! no I/O and never touches etcd; [`super::respond`] runs it for the transports.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use rand::Rng;
use tracing::{debug, warn};

use super::answer::Rendered;
use super::answer_cache::{AnswerCache, AnswerKey};
use super::locality::{Located, Policy};
use super::name::{self, Target};
use super::observe::ZoneKind;
use super::reply::{Client, Question, Reply, Via};
use super::route::{route, Route};
use super::wire;
use super::zone::file::StaticZones;
use super::zone::forward::{Forwarder, Key as ForwardKey};
use super::zone::registry::{Builder, Built, Outcome, Zone};
use super::zone::skydns::{SkyZone, SoaCache};
use crate::cache::{Freshness, Mirror, Snapshot};
use crate::config::{DnsConfig, LocalityConfig};
use crate::metrics::Metrics;
use crate::registry::Status;

/// Answers DNS queries for one zone from the mirror.
pub struct Handler {
    pub(super) zone: Zone,
    pub(super) apex: LowerName,
    pub(super) mirror: Arc<Mirror>,
    /// Built answers per (name, type, stale, client locality). Derived data only: each entry
    /// records the service generation it was built from (the snapshot's change count for the
    /// service types), and an entry from another generation is never served. The locality is
    /// part of the key only for names whose answer follows it, so answers for one locality
    /// never reach another.
    pub(super) answers: AnswerCache,
    /// Where clients are (`[locality]`).
    pub(super) locality: Policy,
    /// The SOA for the snapshot revision it was built for (the revision is the serial).
    pub(super) soa: SoaCache,
    pub(super) ns: Record,
    pub(super) max_udp_payload: u16,
    pub(super) stale_ttl: u32,
    pub(super) status: Arc<Status>,
    pub(super) metrics: Arc<Metrics>,
    /// Static zones, swapped whole on reload.
    pub(super) zones: Arc<ArcSwap<StaticZones>>,
    pub(super) forwarder: Option<Arc<Forwarder>>,
    pub(super) allow_recursion: Vec<ipnet::IpNet>,
    /// Zones answered from SkyDNS sources.
    pub(super) sky: Vec<SkyZone>,
    /// Whether hitting the forwarding limits was logged (once per process).
    pub(super) forward_limit_logged: std::sync::atomic::AtomicBool,
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
        let mut answers = AnswerCache::new(cfg.answer_cache_bytes, cfg.answer_front_bytes);
        answers.count_into(&metrics);
        Ok(Self {
            apex: LowerName::new(&origin),
            ns: zone.ns(),
            zone,
            mirror,
            answers,
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

    /// The discovery zone's settings (which instances are served, locality), for the xDS
    /// server to select instances as answers do.
    pub fn zone(&self) -> &Zone {
        &self.zone
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
        forwarder: Option<Arc<Forwarder>>,
        allow_recursion: Vec<ipnet::IpNet>,
    ) -> Self {
        self.zones = zones;
        self.forwarder = forwarder;
        self.allow_recursion = allow_recursion;
        self
    }

    pub(super) fn may_recurse(&self, ip: IpAddr) -> bool {
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
        let mut built = Builder::new(snapshot.changes);
        let served = snapshot.instances_at(ip).into_iter();
        for (svc, i) in served.filter(|(_, i)| i.is_served(self.zone.serve_warning)) {
            if let Some(target) = self.zone.instance_name(svc.name.as_str(), i.id.as_str()) {
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
        let mut starts = [0u8; 128];
        let (count, _) = wire::label_starts(name, &mut starts);
        let starts = starts.map(usize::from);
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
    /// any input. A forwarded name missing from the forward cache comes back with
    /// [`Reply::via`] set to [`Via::Forward`], for the upstream to decide.
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
                reply.zone = ZoneKind::Static;
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
                reply.zone = match route {
                    Route::Sky(_) => ZoneKind::Skydns,
                    _ => ZoneKind::Registry,
                };
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
                reply.zone = ZoneKind::Registry;
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
                reply.relay(&relayed, age);
                reply
            }
            None => {
                reply.via = Via::Forward;
                reply.zone = ZoneKind::Forward;
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
        reply.echo_subnet(located.answer_subnet(false));
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
                let changes = snapshot.changes;
                let built = self.answers.get_or_build(&key, changes, changes, || {
                    let ttl = freshness.ttl(self.zone.ttl, self.stale_ttl);
                    let services = snapshot.services.values().map(|s| &**s);
                    self.zone.browse(services, changes, qname, qtype, ttl)
                });
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
                // Known current at this snapshot's change count (the steady state), or at an
                // earlier one with the service unchanged since (under churn): no need to look
                // the service up to check the answer's generation.
                let current = self
                    .answers
                    .get_current(&key, snapshot.changes, |at| snapshot.unchanged_since(s, at));
                let answer = current.or_else(|| {
                    self.service_answer(s, target, qname, qtype, key, snapshot, freshness)
                });
                match answer {
                    None => Outcome::NxDomain,
                    Some(built) => {
                        let outcome = built.outcome;
                        reply
                            .echo_subnet(located.answer_subnet(built.locality.depends_on_client()));
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
        Some(
            self.answers
                .get_or_build(&key, svc.generation, snapshot.changes, || {
                    let ttl = freshness.ttl(self.zone.ttl, self.stale_ttl);
                    let b = self
                        .zone
                        .build(svc, target, qname, qtype, ttl, key.locality());
                    if b.panic {
                        warn!(
                            service = %svc.name,
                            threshold = self.zone.panic_threshold,
                            "too few healthy instances: answering with all of them",
                        );
                    }
                    b
                }),
        )
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
        let changes = snapshot.changes;
        let built = self
            .answers
            .get_current(&key, changes, |_| false)
            .unwrap_or_else(|| {
                self.answers.get_or_build(&key, changes, changes, || {
                    sky.build(snapshot, qname, qtype, freshness, self.stale_ttl)
                })
            });
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

#[cfg(test)]
mod tests;
