//! Builds DNS records from the mirror. Pure: no I/O, no randomness (answers are ordered per
//! response, see [`super::answer`]).

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::cache::{Address, Instance, Service};
use crate::config::LocalityMode;
use crate::dns::name::Target;

/// Zone-wide settings the records need.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: Name,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub serve_warning: bool,
    /// Below this share of served instances, serve all of them (0: never).
    pub panic_threshold: f64,
    pub ns_name: Name,
    pub hostmaster: Name,
    /// What the client's locality does to answers for sets of instances.
    pub locality: LocalityMode,
    /// `only`: the fewest served local instances that are answered alone.
    pub min_healthy: usize,
}

pub use crate::dns::answer::{wire_size, Builder, Built, Locality, Outcome};

/// What [`Zone::select`] found for a name.
#[derive(Debug)]
pub struct Selection<'s> {
    /// The instances, each with the port the name reaches it on (`None`: no such port).
    pub selected: Vec<(&'s Instance, Option<u16>)>,
    /// Too few were healthy: every instance is served.
    pub panic: bool,
    /// What the client's locality did.
    pub locality: Locality,
    /// `prefer` was applied for this locality: its instances rank first.
    pub prefer: Option<&'s str>,
}

impl Selection<'_> {
    /// 1 for an instance outside the preferred locality, else 0.
    pub fn rank(&self, i: &Instance) -> u16 {
        u16::from(self.prefer.is_some_and(|l| !i.is_in(l)))
    }

    /// The instance's priority, lower first: its registry priority, and under `prefer` twice
    /// that plus its rank (local instances ahead within each registry priority).
    pub fn priority(&self, i: &Instance) -> u16 {
        match self.prefer {
            Some(_) => u16::try_from(2 * u32::from(i.priority) + u32::from(self.rank(i)))
                .unwrap_or(u16::MAX),
            None => i.priority,
        }
    }
}

/// The longest service name that fits a `_<service>` label (63 bytes with the `_`).
pub const MAX_BROWSED_SERVICE: usize = 62;

/// Splits `s` into pieces of at most 255 bytes, on character boundaries.
pub(crate) fn split_255(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if cur.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

impl Zone {
    pub fn soa(&self, serial: u32) -> Record {
        let soa = SOA::new(
            self.ns_name.clone(),
            self.hostmaster.clone(),
            serial,
            3600,
            600,
            86400,
            self.negative_ttl,
        );
        // RFC 2308: the SOA in a negative answer carries the negative TTL.
        Record::from_rdata(self.origin.clone(), self.negative_ttl, RData::SOA(soa))
    }

    pub fn ns(&self) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.ttl,
            RData::NS(NS(self.ns_name.clone())),
        )
    }

    fn address(&self, owner: &Name, ip: IpAddr, ttl: u32) -> Record {
        address_record(owner, ip, ttl)
    }

    /// A CNAME at `owner` to a host name (`None` if the name does not convert).
    fn alias(&self, owner: &Name, host: &str, ttl: u32) -> Option<Record> {
        let target = host_name(host)?;
        Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::CNAME(CNAME(target)),
        ))
    }

    /// Whether `svc` has so few served instances that all of them should be answered.
    fn in_panic(&self, svc: &Service) -> bool {
        let total = svc.instances.len();
        let served = svc
            .instances
            .values()
            .filter(|i| i.is_served(self.serve_warning))
            .count();
        total > 0 && (served as f64) < self.panic_threshold * total as f64
    }

    /// `<id>.<service>.<zone>`, the SRV target and instance name.
    pub fn instance_name(&self, service: &str, id: &str) -> Option<Name> {
        Name::from_ascii(id)
            .ok()?
            .append_name(&Name::from_ascii(service).ok()?)
            .ok()?
            .append_name(&self.origin)
            .ok()
    }

    /// Whether `svc` has a served instance with a port, and so a `_<svc>._tcp` in the service
    /// types (browsing follows the panic threshold like every other answer).
    fn is_browsable(&self, svc: &Service) -> bool {
        let panic = self.in_panic(svc);
        svc.name.as_str().len() <= MAX_BROWSED_SERVICE
            && svc
                .instances
                .values()
                .any(|i| i.port.is_some() && (panic || i.is_served(self.serve_warning)))
    }

    /// The DNS-SD service types (`_services._dns-sd._udp`): a PTR to `_<svc>._tcp.<zone>`
    /// per browsable service, built from the whole registry, as of `generation`.
    pub fn browse<'s>(
        &self,
        services: impl Iterator<Item = &'s Service>,
        generation: u64,
        qname: &Name,
        qtype: RecordType,
        ttl: u32,
    ) -> Built {
        let mut built = Builder::new(generation);
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return built.finish(qname);
        }
        let mut names: Vec<&str> = services
            .filter(|s| self.is_browsable(s))
            .map(|s| s.name.as_str())
            .collect();
        // Sorted, so that an answer cut to a TCP message keeps the same services every time.
        names.sort_unstable();
        for svc in names {
            let Some(target) = self.service_type(svc) else {
                continue;
            };
            let record = Record::from_rdata(qname.clone(), ttl, RData::PTR(PTR(target)));
            built.push(record, 0, 1, None);
        }
        built.finish(qname)
    }

    /// `_<svc>._tcp.<zone>`.
    fn service_type(&self, service: &str) -> Option<Name> {
        Name::from_ascii(format!("_{service}._tcp"))
            .ok()?
            .append_name(&self.origin)
            .ok()
    }

    /// Orders or filters `selected` by the client's locality `local` (see
    /// [`LocalityMode`]); returns what it did.
    fn localize(
        &self,
        selected: &mut Vec<(&Instance, Option<u16>)>,
        local: Option<&str>,
    ) -> Locality {
        let Some(local) = local else {
            return Locality::Unlocated;
        };
        let served_local = selected
            .iter()
            .filter(|(i, _)| i.is_in(local) && i.is_served(self.serve_warning))
            .count();
        match self.locality {
            LocalityMode::Off => Locality::Ignored,
            LocalityMode::Only if served_local >= self.min_healthy => {
                selected.retain(|(i, _)| i.is_in(local));
                Locality::Local
            }
            LocalityMode::Prefer if selected.iter().any(|(i, _)| i.is_in(local)) => Locality::Local,
            LocalityMode::Only | LocalityMode::Prefer => Locality::SpillOver,
        }
    }

    /// The instances `target` (one that names `svc`) covers for a client in locality `local`,
    /// each with the port it is reached on: the served ones (all of them in panic), then kept
    /// or ordered by locality. `None` when there are none. DNS answers and xDS assignments
    /// both start here.
    pub fn select<'s>(
        &self,
        svc: &'s Service,
        target: Target<'_>,
        local: Option<&'s str>,
    ) -> Option<Selection<'s>> {
        let panic = self.in_panic(svc);
        let served = svc
            .instances
            .values()
            .filter(|i| panic || i.is_served(self.serve_warning));
        // The instances the name covers, with the port its SRV records use.
        let mut selected: Vec<(&Instance, Option<u16>)> = match target {
            Target::Service(_) | Target::ServiceSrv(_) | Target::ServiceNode(_) => {
                served.map(|i| (i, i.port)).collect()
            }
            Target::SdInstance { id, .. } => served
                .filter(|i| i.id.as_str() == id && i.port.is_some())
                .map(|i| (i, i.port))
                .collect(),
            Target::Instance { id, .. } => served
                .filter(|i| i.id.as_str() == id)
                .map(|i| (i, i.port))
                .collect(),
            Target::NamedPort { port, .. } => served
                .filter_map(|i| i.ports.get(port).map(|p| (i, Some(*p))))
                .collect(),
            Target::Tag { tag, .. } => served
                .filter(|i| i.has_tag(tag))
                .map(|i| (i, i.port))
                .collect(),
            Target::Apex
            | Target::TcpNode
            | Target::None
            | Target::ServiceTypes
            | Target::BrowseDomain
            | Target::EmptyNode => Vec::new(),
        };
        if selected.is_empty() {
            return None;
        }
        // The panic threshold decided the served set; locality orders or filters it.
        let locality = if target.follows_locality() && self.locality != LocalityMode::Off {
            self.localize(&mut selected, local)
        } else {
            Locality::Ignored
        };
        // `prefer`: local instances rank ahead (A/AAAA, PTR), SRV priority 2p or 2p + 1.
        let prefer = match (locality, self.locality, local) {
            (Locality::Local | Locality::SpillOver, LocalityMode::Prefer, Some(l)) => Some(l),
            _ => None,
        };
        Some(Selection {
            selected,
            panic,
            locality,
            prefer,
        })
    }

    /// Builds the answer for `target` (one that names `svc`) and `qtype`, owner `qname`,
    /// with records of TTL `ttl`, for a client in locality `local` (used for names that
    /// [follow locality](Target::follows_locality) when locality is on).
    pub fn build(
        &self,
        svc: &Service,
        target: Target<'_>,
        qname: &Name,
        qtype: RecordType,
        ttl: u32,
        local: Option<&str>,
    ) -> Built {
        let gen = svc.generation;
        let Some(selection) = self.select(svc, target, local) else {
            return Built::negative(gen, Outcome::NxDomain);
        };
        let (panic, locality) = (selection.panic, selection.locality);
        let rank = |i: &Instance| selection.rank(i);
        let srv_priority = |i: &Instance| selection.priority(i);
        let selected = &selection.selected;
        let srv_only = matches!(target, Target::ServiceSrv(_) | Target::NamedPort { .. });
        let mut built = Builder::new(gen);
        built.panic = panic;
        built.locality = locality;
        if matches!(target, Target::ServiceNode(_)) {
            return built.finish(qname);
        }
        if let Target::SdInstance { .. } = target {
            return self.sd_instance(built, svc, selected[0].0, qname, qtype, ttl);
        }
        if let Target::ServiceSrv(_) = target {
            if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                // DNS-SD: the instance list, `<id>._<svc>._tcp.<zone>` per instance with a port.
                for (i, port) in selected {
                    let Some(instance) = port
                        .and_then(|_| Name::from_ascii(i.id.as_str()).ok())
                        .and_then(|id| id.append_name(qname).ok())
                    else {
                        continue;
                    };
                    let record = Record::from_rdata(qname.clone(), ttl, RData::PTR(PTR(instance)));
                    built.push(record, rank(i), i.weight, None);
                }
                if qtype == RecordType::PTR {
                    return built.finish(qname);
                }
            }
        }
        let want_addr = |ip: &IpAddr| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        };
        // An instance registered by host name: its own name is a CNAME, whatever the type.
        if let Target::Instance { .. } = target {
            if let Address::Host(host) = &selected[0].0.address {
                if let Some(cname) = self.alias(qname, host, ttl) {
                    built.push(cname, 0, 1, None);
                }
                return built.finish(qname);
            }
        }
        let any_ip = selected.iter().any(|(i, _)| i.address.ip().is_some());
        let addressable = matches!(
            qtype,
            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::CNAME
        );
        if !srv_only && any_ip {
            for (i, _) in selected {
                match i.address.ip() {
                    Some(ip) if want_addr(&ip) => {
                        built.push(self.address(qname, ip, ttl), rank(i), i.weight, None);
                    }
                    _ => {}
                }
            }
        } else if !srv_only && addressable {
            // Only host names: one of them (weighted, as for addresses) as a CNAME, since a
            // name holds at most one CNAME and nothing beside it.
            for (i, _) in selected {
                let Address::Host(host) = &i.address else {
                    continue;
                };
                if let Some(cname) = self.alias(qname, host, ttl) {
                    built.push(cname, rank(i), i.weight, None);
                    built.single = true;
                }
            }
        }
        let want_srv = qtype == RecordType::SRV || (srv_only && qtype == RecordType::ANY);
        if want_srv {
            for (i, port) in selected {
                let Some(port) = port else { continue };
                let priority = srv_priority(i);
                if let Some((record, glue)) = self.srv(svc, i, *port, priority, qname, ttl) {
                    built.push(record, priority, i.weight, glue);
                }
            }
        }
        if qtype == RecordType::TXT {
            if let Target::Instance { .. } = target {
                let (i, _) = selected[0];
                let mut strings: Vec<String> =
                    i.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
                strings.extend(i.tags.iter().map(|t| format!("tag={t}")));
                // A TXT character-string holds at most 255 bytes: split longer ones.
                let strings: Vec<String> = strings.iter().flat_map(|s| split_255(s)).collect();
                if !strings.is_empty() {
                    let record =
                        Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(strings)));
                    built.push(record, 0, 1, None);
                }
            }
        }
        built.finish(qname)
    }
}

impl Zone {
    /// The SRV record at `qname` for instance `i` of `svc` on `port`, with the target's
    /// address for the additional section. An address gets the instance name as its target;
    /// a host name is the target itself (RFC 2782: a target must not be an alias).
    fn srv(
        &self,
        svc: &Service,
        i: &Instance,
        port: u16,
        priority: u16,
        qname: &Name,
        ttl: u32,
    ) -> Option<(Record, Option<Record>)> {
        let (target_name, additional) = match &i.address {
            Address::Ip(ip) => {
                let name = self.instance_name(svc.name.as_str(), i.id.as_str())?;
                let additional = self.address(&name, *ip, ttl);
                (name, Some(additional))
            }
            Address::Host(host) => (host_name(host)?, None),
        };
        let srv = SRV::new(priority, i.weight, port, target_name);
        Some((
            Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)),
            additional,
        ))
    }

    /// A DNS-SD service instance (`<id>._<svc>._tcp`): its SRV (with the target's address),
    /// and a TXT of its `meta`, one `key=value` string per pair (RFC 6763 section 6): pairs
    /// over 255 bytes are left out, and no meta is one empty string (the TXT must exist).
    fn sd_instance(
        &self,
        mut built: Builder,
        svc: &Service,
        i: &Instance,
        qname: &Name,
        qtype: RecordType,
        ttl: u32,
    ) -> Built {
        let any = qtype == RecordType::ANY;
        if qtype == RecordType::SRV || any {
            let port = i.port.unwrap_or_default();
            if let Some((record, glue)) = self.srv(svc, i, port, i.priority, qname, ttl) {
                built.push(record, 0, 1, glue);
            }
        }
        if qtype == RecordType::TXT || any {
            let mut strings: Vec<String> = i
                .meta
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .filter(|s| s.len() <= 255)
                .collect();
            if strings.is_empty() {
                strings.push(String::new());
            }
            let record = Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(strings)));
            built.push(record, 0, 1, None);
        }
        built.finish(qname)
    }
}

/// The A or AAAA record for `ip`.
pub(crate) fn address_record(owner: &Name, ip: IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, rdata)
}

/// A host name from the registry as a fully qualified DNS name.
pub(crate) fn host_name(host: &str) -> Option<Name> {
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Health, InstanceId, ServiceName, SourceId};
    use std::collections::BTreeMap;

    fn zone() -> Zone {
        let origin = Name::from_ascii("svc.internal.").unwrap();
        Zone {
            ns_name: Name::from_ascii("ns.dns.svc.internal.").unwrap(),
            hostmaster: Name::from_ascii("hostmaster.svc.internal.").unwrap(),
            origin,
            ttl: 5,
            negative_ttl: 7,
            serve_warning: true,
            panic_threshold: 0.0,
            locality: LocalityMode::Off,
            min_healthy: 1,
        }
    }

    fn inst(id: &str, addr: &str, health: Health) -> Instance {
        Instance {
            id: InstanceId::new(id).unwrap(),
            address: Address::parse(addr).unwrap(),
            port: Some(8080),
            ports: [("grpc".to_string(), 9090)].into_iter().collect(),
            tags: vec!["v2".into()],
            weight: 3,
            priority: 1,
            health,
            meta: [("az".to_string(), "a".to_string())].into_iter().collect(),
            source: SourceId::NATIVE,
            locality: None,
        }
    }

    fn web() -> Service {
        let mut instances = BTreeMap::new();
        for i in [
            inst("a", "10.0.0.1", Health::Passing),
            inst("b", "fd00::2", Health::Warning),
            inst("c", "10.0.0.3", Health::Critical),
        ] {
            instances.insert((i.id.clone(), i.source), i);
        }
        Service {
            name: ServiceName::new("web").unwrap(),
            instances: instances.into_values().collect(),
            generation: 42,
        }
    }

    fn q(n: &str) -> Name {
        Name::from_ascii(n).unwrap()
    }

    #[test]
    fn service_a_aaaa_srv_skip_critical() {
        let z = zone();
        let svc = web();
        let t = Target::Service("web");
        let a = z.build(&svc, t, &q("web.svc.internal."), RecordType::A, 5, None);
        assert_eq!(
            (a.outcome, a.answers().len(), a.generation),
            (Outcome::Answer, 1, 42)
        );
        assert_eq!(a.answers()[0].record.ttl, 5);
        let aaaa = z.build(&svc, t, &q("web.svc.internal."), RecordType::AAAA, 5, None);
        assert_eq!(aaaa.answers().len(), 1);
        let srv = z.build(&svc, t, &q("web.svc.internal."), RecordType::SRV, 5, None);
        assert_eq!(srv.answers().len(), 2);
        let RData::SRV(s) = &srv.answers()[0].record.data else {
            panic!()
        };
        assert_eq!((s.priority, s.weight, s.port), (1, 3, 8080));
        assert_eq!(s.target, q("a.web.svc.internal."));
        let answers = srv.answers();
        let add = answers[0].glue.first().unwrap();
        assert_eq!(&add.name, &q("a.web.svc.internal."));
        let mx = z.build(&svc, t, &q("web.svc.internal."), RecordType::MX, 5, None);
        assert_eq!(mx.outcome, Outcome::NoData);
    }

    #[test]
    fn warning_excluded_when_configured() {
        let mut z = zone();
        z.serve_warning = false;
        let aaaa = z.build(
            &web(),
            Target::Service("web"),
            &q("web.svc.internal."),
            RecordType::AAAA,
            5,
            None,
        );
        assert_eq!(aaaa.outcome, Outcome::NoData);
    }

    #[test]
    fn instance_named_port_tag_forms() {
        let z = zone();
        let svc = web();
        let i = z.build(
            &svc,
            Target::Instance {
                service: "web",
                id: "a",
            },
            &q("a.web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(i.outcome, Outcome::Answer);
        let txt = z.build(
            &svc,
            Target::Instance {
                service: "web",
                id: "a",
            },
            &q("a.web.svc.internal."),
            RecordType::TXT,
            5,
            None,
        );
        let RData::TXT(t) = &txt.answers()[0].record.data else {
            panic!()
        };
        let strings: Vec<&[u8]> = t.txt_data.iter().map(|s| &s[..]).collect();
        assert_eq!(strings, [&b"az=a"[..], b"tag=v2"]);
        let crit = z.build(
            &svc,
            Target::Instance {
                service: "web",
                id: "c",
            },
            &q("c.web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(
            crit.outcome,
            Outcome::NxDomain,
            "critical instance is not served"
        );
        let port = z.build(
            &svc,
            Target::NamedPort {
                service: "web",
                port: "grpc",
            },
            &q("_grpc._tcp.web.svc.internal."),
            RecordType::SRV,
            5,
            None,
        );
        assert_eq!(port.answers().len(), 2);
        let RData::SRV(s) = &port.answers()[0].record.data else {
            panic!()
        };
        assert_eq!(s.port, 9090);
        let port_a = z.build(
            &svc,
            Target::NamedPort {
                service: "web",
                port: "grpc",
            },
            &q("_grpc._tcp.web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(port_a.outcome, Outcome::NoData);
        let none = z.build(
            &svc,
            Target::NamedPort {
                service: "web",
                port: "http",
            },
            &q("_http._tcp.web.svc.internal."),
            RecordType::SRV,
            5,
            None,
        );
        assert_eq!(none.outcome, Outcome::NxDomain);
        let tag = z.build(
            &svc,
            Target::Tag {
                service: "web",
                tag: "V2",
            },
            &q("v2._tag.web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(tag.answers().len(), 1);
        let notag = z.build(
            &svc,
            Target::Tag {
                service: "web",
                tag: "v3",
            },
            &q("v3._tag.web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(notag.outcome, Outcome::NxDomain);
    }

    #[test]
    fn no_healthy_instance_is_nxdomain() {
        let z = zone();
        let mut svc = web();
        for i in svc.instances.values_mut() {
            i.health = Health::Critical;
        }
        let b = z.build(
            &svc,
            Target::Service("web"),
            &q("web.svc.internal."),
            RecordType::A,
            5,
            None,
        );
        assert_eq!(b.outcome, Outcome::NxDomain);
    }

    #[test]
    fn panic_mode_serves_all_when_too_few_are_healthy() {
        let mut z = zone();
        let svc = web(); // 2 of 3 served
        let name = q("web.svc.internal.");
        z.panic_threshold = 0.5;
        let b = z.build(&svc, Target::Service("web"), &name, RecordType::A, 5, None);
        assert!(!b.panic);
        assert_eq!(b.answers().len(), 1, "critical 10.0.0.3 not served");
        z.panic_threshold = 0.8;
        let b = z.build(&svc, Target::Service("web"), &name, RecordType::A, 5, None);
        assert!(b.panic);
        assert_eq!(
            b.answers().len(),
            2,
            "in panic mode the critical instance is served too"
        );
    }

    #[test]
    fn ttl_is_the_one_asked_for() {
        let b = zone().build(
            &web(),
            Target::Service("web"),
            &q("web.svc.internal."),
            RecordType::SRV,
            30,
            None,
        );
        assert!(b.answers().iter().all(|a| a.record.ttl == 30));
        assert!(b
            .answers()
            .iter()
            .flat_map(|a| a.glue.iter())
            .all(|r| r.ttl == 30));
    }

    #[test]
    fn long_txt_strings_are_split() {
        let mut svc = web();
        let a = (InstanceId::new("a").unwrap(), SourceId::NATIVE);
        svc.instances
            .get_mut(&a)
            .unwrap()
            .meta
            .insert("big".into(), "é".repeat(300));
        let t = zone().build(
            &svc,
            Target::Instance {
                service: "web",
                id: "a",
            },
            &q("a.web.svc.internal."),
            RecordType::TXT,
            5,
            None,
        );
        let RData::TXT(txt) = &t.answers()[0].record.data else {
            panic!()
        };
        assert!(txt.txt_data.iter().all(|s| s.len() <= 255));
        assert_eq!(
            txt.txt_data.iter().map(|s| s.len()).sum::<usize>(),
            "az=a".len() + "big=".len() + 600 + "tag=v2".len()
        );
        // And it encodes.
        let mut m = hickory_proto::op::Message::new(
            1,
            hickory_proto::op::MessageType::Response,
            hickory_proto::op::OpCode::Query,
        );
        m.add_answers(t.answers().iter().map(|a| a.record.clone()));
        assert!(m.to_vec().is_ok());
    }

    #[test]
    fn host_names_become_cnames_and_srv_targets() {
        let z = zone();
        let mut svc = web();
        svc.instances = Default::default();
        for (id, host, w) in [("h1", "db1.example.com", 5), ("h2", "db2.example.com", 1)] {
            let mut i = inst(id, host, Health::Passing);
            i.weight = w;
            svc.instances.insert(i);
        }
        let name = q("web.svc.internal.");
        let a = z.build(&svc, Target::Service("web"), &name, RecordType::A, 5, None);
        assert_eq!(
            (a.outcome, a.answers().len(), a.single),
            (Outcome::Answer, 2, true)
        );
        let RData::CNAME(c) = &a.answers()[0].record.data else {
            panic!("{:?}", a.answers()[0])
        };
        assert_eq!(c.0, q("db1.example.com."));
        let srv = z.build(
            &svc,
            Target::Service("web"),
            &name,
            RecordType::SRV,
            5,
            None,
        );
        let RData::SRV(s) = &srv.answers()[0].record.data else {
            panic!()
        };
        assert_eq!(s.target, q("db1.example.com."));
        assert!(srv.answers().iter().all(|a| a.glue.is_empty()));
        let txt = z.build(
            &svc,
            Target::Instance {
                service: "web",
                id: "h2",
            },
            &q("h2.web.svc.internal."),
            RecordType::TXT,
            5,
            None,
        );
        let RData::CNAME(c) = &txt.answers()[0].record.data else {
            panic!()
        };
        assert_eq!(c.0, q("db2.example.com."));
        // Beside an address, host names stay out of the address answer (one CNAME only).
        let ip = inst("a", "10.0.0.1", Health::Passing);
        svc.instances.insert(ip);
        let a = z.build(&svc, Target::Service("web"), &name, RecordType::A, 5, None);
        assert_eq!((a.answers().len(), a.single), (1, false));
        assert!(matches!(a.answers()[0].record.data, RData::A(_)));
    }

    /// `web` with instances in two localities: a1, a2 (passing) and a3 (critical) in `a`,
    /// b1 (priority 1) and b2 (priority 0) in `b`, and n (no locality).
    fn zoned() -> Service {
        let mut svc = web();
        svc.instances = Default::default();
        for (id, addr, loc, health, priority) in [
            ("a1", "10.0.1.1", Some("a"), Health::Passing, 0),
            ("a2", "10.0.1.2", Some("a"), Health::Passing, 1),
            ("a3", "10.0.1.3", Some("a"), Health::Critical, 0),
            ("b1", "10.0.2.1", Some("b"), Health::Passing, 1),
            ("b2", "10.0.2.2", Some("b"), Health::Passing, 0),
            ("n", "10.0.3.1", None, Health::Passing, 0),
        ] {
            let mut i = inst(id, addr, health);
            i.locality = loc.map(Into::into);
            i.priority = priority;
            svc.instances.insert(i);
        }
        svc
    }

    fn addresses(b: &Built) -> Vec<String> {
        b.answers()
            .iter()
            .map(|a| match &a.record.data {
                RData::A(ip) => ip.to_string(),
                RData::SRV(s) => s.target.to_string(),
                RData::PTR(p) => p.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_mode_answers_local_instances_until_too_few_are_served() {
        let mut z = zone();
        z.locality = LocalityMode::Only;
        let svc = zoned();
        let name = q("web.svc.internal.");
        let t = Target::Service("web");
        let a = z.build(&svc, t, &name, RecordType::A, 5, Some("a"));
        assert_eq!(a.locality, Locality::Local);
        assert_eq!(addresses(&a), ["10.0.1.1", "10.0.1.2"], "critical a3 never");
        let b = z.build(&svc, t, &name, RecordType::A, 5, Some("b"));
        assert_eq!(addresses(&b), ["10.0.2.1", "10.0.2.2"]);
        // No locality, or one with no instance: everything served.
        let all = z.build(&svc, t, &name, RecordType::A, 5, None);
        assert_eq!(
            (all.locality, all.answers().len()),
            (Locality::Unlocated, 5)
        );
        let c = z.build(&svc, t, &name, RecordType::A, 5, Some("c"));
        assert_eq!((c.locality, c.answers().len()), (Locality::SpillOver, 5));
        // Fewer than min_healthy served local instances: spill over.
        z.min_healthy = 3;
        let spill = z.build(&svc, t, &name, RecordType::A, 5, Some("a"));
        assert_eq!(
            (spill.locality, spill.answers().len()),
            (Locality::SpillOver, 5)
        );
        // Tags, named ports and the RFC 2782 name follow locality; instance names do not.
        z.min_healthy = 1;
        let tag = z.build(
            &svc,
            Target::Tag {
                service: "web",
                tag: "v2",
            },
            &q("v2._tag.web.svc.internal."),
            RecordType::A,
            5,
            Some("b"),
        );
        assert_eq!(addresses(&tag), ["10.0.2.1", "10.0.2.2"]);
        let port = z.build(
            &svc,
            Target::NamedPort {
                service: "web",
                port: "grpc",
            },
            &q("_grpc._tcp.web.svc.internal."),
            RecordType::SRV,
            5,
            Some("b"),
        );
        assert_eq!(port.answers().len(), 2);
        let srv = z.build(
            &svc,
            Target::ServiceSrv("web"),
            &q("_web._tcp.svc.internal."),
            RecordType::SRV,
            5,
            Some("a"),
        );
        assert_eq!(
            addresses(&srv),
            ["a1.web.svc.internal.", "a2.web.svc.internal."]
        );
        let ptr = z.build(
            &svc,
            Target::ServiceSrv("web"),
            &q("_web._tcp.svc.internal."),
            RecordType::PTR,
            5,
            Some("b"),
        );
        assert_eq!(
            addresses(&ptr),
            ["b1._web._tcp.svc.internal.", "b2._web._tcp.svc.internal."]
        );
        let own = z.build(
            &svc,
            Target::Instance {
                service: "web",
                id: "b1",
            },
            &q("b1.web.svc.internal."),
            RecordType::A,
            5,
            Some("a"),
        );
        assert_eq!((own.locality, own.answers().len()), (Locality::Ignored, 1));
    }

    #[test]
    fn only_mode_counts_local_instances_after_the_panic_threshold() {
        let mut z = zone();
        z.locality = LocalityMode::Only;
        z.min_healthy = 3;
        // 5 of 6 served: above a 0.8 threshold, so a3 stays out and `a` has 2 < 3.
        z.panic_threshold = 0.8;
        let svc = zoned();
        let t = Target::Service("web");
        let name = q("web.svc.internal.");
        let b = z.build(&svc, t, &name, RecordType::A, 5, Some("a"));
        assert_eq!(
            (b.panic, b.locality, b.answers().len()),
            (false, Locality::SpillOver, 5)
        );
        // Panic serves a3 too, but it is still not healthy: `a` stays at 2 healthy.
        z.panic_threshold = 0.9;
        let b = z.build(&svc, t, &name, RecordType::A, 5, Some("a"));
        assert_eq!(
            (b.panic, b.locality, b.answers().len()),
            (true, Locality::SpillOver, 6)
        );
        z.min_healthy = 2;
        let b = z.build(&svc, t, &name, RecordType::A, 5, Some("a"));
        assert_eq!(
            (b.locality, addresses(&b)),
            (
                Locality::Local,
                vec!["10.0.1.1".into(), "10.0.1.2".into(), "10.0.1.3".into()]
            ),
            "in panic mode the local set includes the critical one"
        );
    }

    #[test]
    fn prefer_mode_ranks_local_instances_first() {
        let mut z = zone();
        z.locality = LocalityMode::Prefer;
        let svc = zoned();
        let name = q("web.svc.internal.");
        let t = Target::Service("web");
        let a = z.build(&svc, t, &name, RecordType::A, 5, Some("b"));
        assert_eq!((a.locality, a.answers().len()), (Locality::Local, 5));
        for ans in &a.answers() {
            let RData::A(ip) = &ans.record.data else {
                panic!()
            };
            let local = ip.to_string().starts_with("10.0.2.");
            assert_eq!(ans.priority, u16::from(!local), "{ip}");
        }
        // SRV: 2 x priority, + 1 outside the locality; priority still dominates.
        let srv = z.build(&svc, t, &name, RecordType::SRV, 5, Some("b"));
        let got: Vec<(String, u16, u16)> = srv
            .answers()
            .iter()
            .map(|ans| {
                let RData::SRV(s) = &ans.record.data else {
                    panic!()
                };
                (s.target.to_string(), s.priority, ans.priority)
            })
            .collect();
        for (target, priority, want) in [
            ("a1", 1, 1),
            ("a2", 3, 3),
            ("b1", 2, 2),
            ("b2", 0, 0),
            ("n", 1, 1),
        ] {
            let t = format!("{target}.web.svc.internal.");
            assert!(got.contains(&(t.clone(), priority, want)), "{t}: {got:?}");
        }
        // Saturates at 65535.
        let mut big = zoned();
        for i in big.instances.values_mut() {
            i.priority = 40_000;
        }
        let srv = z.build(&big, t, &name, RecordType::SRV, 5, Some("b"));
        assert!(srv.answers().iter().all(|a| a.priority == u16::MAX));
        // Nobody local: ranks are all alike.
        let none = z.build(&svc, t, &name, RecordType::A, 5, Some("c"));
        assert_eq!(none.locality, Locality::SpillOver);
        assert!(none.answers().iter().all(|a| a.priority == 1));
        // Off: locality is ignored.
        z.locality = LocalityMode::Off;
        let off = z.build(&svc, t, &name, RecordType::A, 5, Some("b"));
        assert_eq!(off.locality, Locality::Ignored);
        assert!(off.answers().iter().all(|a| a.priority == 0));
    }

    #[test]
    fn dns_sd_instance_srv_and_txt() {
        let z = zone();
        let svc = web();
        let t = Target::SdInstance {
            service: "web",
            id: "a",
        };
        let name = q("a._web._tcp.svc.internal.");
        let srv = z.build(&svc, t, &name, RecordType::SRV, 5, None);
        let RData::SRV(s) = &srv.answers()[0].record.data else {
            panic!()
        };
        assert_eq!((s.priority, s.weight, s.port), (1, 3, 8080));
        assert_eq!(s.target, q("a.web.svc.internal."));
        assert_eq!(
            srv.answers()[0].glue.first().unwrap().name,
            q("a.web.svc.internal.")
        );
        let txt = z.build(&svc, t, &name, RecordType::TXT, 5, None);
        let RData::TXT(t1) = &txt.answers()[0].record.data else {
            panic!()
        };
        let strings: Vec<&[u8]> = t1.txt_data.iter().map(|s| &s[..]).collect();
        assert_eq!(strings, [&b"az=a"[..]], "meta only, no tags");
        let a = z.build(&svc, t, &name, RecordType::A, 5, None);
        assert_eq!(a.outcome, Outcome::NoData);
        // No meta: one empty string; a pair over 255 bytes is left out.
        let mut bare = web();
        let key = (InstanceId::new("a").unwrap(), SourceId::NATIVE);
        let i = bare.instances.get_mut(&key).unwrap();
        i.meta.clear();
        i.meta.insert("big".into(), "x".repeat(300));
        let txt = z.build(&bare, t, &name, RecordType::TXT, 5, None);
        let RData::TXT(t2) = &txt.answers()[0].record.data else {
            panic!()
        };
        assert_eq!(t2.txt_data.len(), 1);
        assert!(t2.txt_data[0].is_empty());
        // Critical (c) or unknown: NXDOMAIN.
        for id in ["c", "zz"] {
            let t = Target::SdInstance { service: "web", id };
            let b = z.build(&svc, t, &name, RecordType::SRV, 5, None);
            assert_eq!(b.outcome, Outcome::NxDomain, "{id}");
        }
    }

    #[test]
    fn service_types_list_browsable_services() {
        let z = zone();
        let mut down = web();
        down.name = ServiceName::new("down").unwrap();
        for i in down.instances.values_mut() {
            i.health = Health::Critical;
        }
        let mut portless = web();
        portless.name = ServiceName::new("portless").unwrap();
        for i in portless.instances.values_mut() {
            i.port = None;
        }
        let mut long = web();
        long.name = ServiceName::new(&"l".repeat(63)).unwrap();
        let mut ok62 = web();
        ok62.name = ServiceName::new(&"k".repeat(62)).unwrap();
        let services = [web(), down, portless, long, ok62];
        let name = q("_services._dns-sd._udp.svc.internal.");
        let b = z.browse(services.iter(), 9, &name, RecordType::PTR, 5);
        assert_eq!(b.generation, 9);
        assert_eq!(
            addresses(&b),
            [
                format!("_{}._tcp.svc.internal.", "k".repeat(62)),
                "_web._tcp.svc.internal.".to_string()
            ]
        );
        assert_eq!(
            z.browse(services.iter(), 9, &name, RecordType::A, 5)
                .outcome,
            Outcome::NoData
        );
        assert_eq!(
            z.browse([].iter(), 9, &name, RecordType::PTR, 5).outcome,
            Outcome::NoData
        );
        // The panic threshold brings a service with no healthy instance back.
        let mut panicky = zone();
        panicky.panic_threshold = 0.5;
        let b = panicky.browse(services.iter(), 9, &name, RecordType::PTR, 5);
        assert_eq!(b.answers().len(), 3);
    }

    #[test]
    fn a_huge_browse_answer_is_cut_to_a_tcp_message() {
        let z = zone();
        let services: Vec<Service> = (0..5000)
            .map(|n| {
                let mut s = web();
                s.name = ServiceName::new(&format!("service-number-{n}")).unwrap();
                s
            })
            .collect();
        let name = q("_services._dns-sd._udp.svc.internal.");
        let b = z.browse(services.iter(), 1, &name, RecordType::PTR, 5);
        let total: usize = b.answers().iter().map(|a| a.size).sum();
        assert!(
            b.answers().len() < 5000 && total < 65_535,
            "{} {total}",
            b.answers().len()
        );
        let mut m = hickory_proto::op::Message::new(
            1,
            hickory_proto::op::MessageType::Response,
            hickory_proto::op::OpCode::Query,
        );
        m.add_query(hickory_proto::op::Query::query(name, RecordType::PTR));
        m.add_answers(b.answers().iter().map(|a| a.record.clone()));
        assert!(m.to_vec().unwrap().len() <= 65_535);
    }

    #[test]
    fn soa_carries_negative_ttl() {
        let z = zone();
        let soa = z.soa(9);
        assert_eq!(soa.ttl, 7);
        let RData::SOA(s) = &soa.data else { panic!() };
        assert_eq!((s.serial, s.minimum), (9, 7));
    }
}
