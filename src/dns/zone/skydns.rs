//! SkyDNS zones: names answered from the CoreDNS etcd plugin's layout, as CoreDNS answers them.
//!
//! A name's records come from every entry at or below its reversed key path: the entries under
//! `/skydns/local/skydns/east/` all answer `east.skydns.local.`. With entries below the name, the
//! entry at the name itself is not used (CoreDNS reads the subtree first and the exact key only
//! when the subtree is empty). A `*` (or `any`) label matches any one label.
//!
//! | qtype    | from each entry                                                            |
//! |----------|----------------------------------------------------------------------------|
//! | A/AAAA   | an IP `host` of that family; a host name becomes a CNAME when no IP exists |
//! | SRV      | priority (0 means 10), weight shared out per priority, port, target        |
//! | TXT      | `text`                                                                     |
//!
//! An SRV target is the host name (less `targetstrip` labels), or for an IP host the entry's own
//! name, whose address goes in the additional section.

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{CNAME, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use std::sync::Arc;

use super::registry::{address_record, host_name, split_255, Builder, Built, Outcome, Zone};
use crate::cache::Freshness;
use crate::cache::{Address, DomainRecord, Snapshot, SourceId};
use crate::dns::answer::Rendered;

/// CoreDNS's priority for entries that give none.
const DEFAULT_PRIORITY: u16 = 10;
/// CoreDNS's weight for entries that give none, before sharing out.
const DEFAULT_WEIGHT: u32 = 100;

/// One zone answered from a SkyDNS source.
#[derive(Debug, Clone)]
pub struct SkyZone {
    pub apex: LowerName,
    /// SOA and NS for the zone.
    pub zone: Zone,
    pub source: SourceId,
    /// TTL of entries without their own.
    pub ttl: u32,
    /// The zone's SOA, rendered once per serial.
    pub soa: SoaCache,
}

/// A zone's SOA rendered for the latest revision (the serial), shared by the threads that
/// answer: negative answers copy its bytes.
#[derive(Debug, Clone, Default)]
pub struct SoaCache(Arc<arc_swap::ArcSwapOption<(i64, Arc<Rendered>)>>);

impl SoaCache {
    /// The SOA of `zone` at `revision`: the rendered one when the revision is unchanged.
    pub fn get(&self, zone: &Zone, revision: i64) -> Arc<Rendered> {
        if let Some(current) = self.0.load().as_deref() {
            if current.0 == revision {
                return current.1.clone();
            }
        }
        // The serial follows the etcd revision (mod 2^32, as RFC 1982 serials wrap).
        let record = Arc::new(Rendered::new(zone.soa(revision as u32)));
        self.0.store(Some(Arc::new((revision, record.clone()))));
        record
    }
}

/// The entries a query name covers.
fn covered<'a>(
    snapshot: &'a Snapshot,
    source: SourceId,
    qname: &LowerName,
) -> Vec<(&'a str, &'a DomainRecord)> {
    let segments: Vec<String> = qname
        .iter()
        .rev()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let wild = |s: &str| s == "*" || s == "any";
    match segments.iter().position(|s| wild(s)) {
        None => {
            let path = segments.join("/");
            let (exact, below): (Vec<_>, Vec<_>) = snapshot
                .domain_subtree(source, &path)
                .partition(|(p, _)| p.len() == path.len());
            if below.is_empty() {
                exact
            } else {
                below
            }
        }
        Some(first) => {
            let base = segments[..first].join("/");
            snapshot
                .domain_subtree(source, &base)
                .filter(|(p, _)| {
                    let parts: Vec<&str> = p.split('/').collect();
                    parts.len() >= segments.len()
                        && segments.iter().zip(&parts).all(|(q, k)| wild(q) || q == k)
                })
                .collect()
        }
    }
}

/// The name a key path spells (`local/skydns/east/1` is `1.east.skydns.local.`).
fn path_name(path: &str) -> Option<Name> {
    let labels: Vec<&str> = path.split('/').rev().collect();
    let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// `name` without its first `n` labels (CoreDNS `targetstrip`).
fn strip(name: Name, n: u8) -> Name {
    if n == 0 || usize::from(n) >= usize::from(name.num_labels()) {
        return name;
    }
    name.trim_to(usize::from(name.num_labels() - n))
}

impl SkyZone {
    /// An entry's TTL: its own, else the zone's, as [`Freshness::ttl`] has it while stale.
    fn ttl_of(&self, r: &DomainRecord, freshness: Freshness, stale_ttl: u32) -> u32 {
        freshness.ttl(r.ttl.unwrap_or(self.ttl), stale_ttl)
    }

    /// Builds the answer for `qname` and `qtype` from `snapshot`, with TTLs as `freshness`
    /// has them (`stale_ttl` while stale).
    pub fn build(
        &self,
        snapshot: &Snapshot,
        qname: &LowerName,
        qtype: RecordType,
        freshness: Freshness,
        stale_ttl: u32,
    ) -> Built {
        let entries = covered(snapshot, self.source, qname);
        if entries.is_empty() {
            return Built::negative(snapshot.changes, Outcome::NxDomain);
        }
        let owner = Name::from(qname);
        let mut built = Builder::new(snapshot.changes);
        let hosts: Vec<&(&str, &DomainRecord)> =
            entries.iter().filter(|(_, r)| r.host.is_some()).collect();
        let want = |ip: &IpAddr| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        };
        if matches!(
            qtype,
            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::CNAME
        ) {
            let any_ip = hosts
                .iter()
                .any(|(_, r)| matches!(r.host, Some(Address::Ip(_))));
            let mut seen = HashSet::new();
            for (_, r) in &hosts {
                let ttl = self.ttl_of(r, freshness, stale_ttl);
                match &r.host {
                    Some(Address::Ip(ip)) if want(ip) && seen.insert(*ip) => {
                        built.push(address_record(&owner, *ip, ttl), 0, r.weight.max(1), None);
                    }
                    // One name holds one CNAME: offer each, send one.
                    // Not for ANY: a CNAME cannot stand beside the TXT records it also gets.
                    Some(Address::Host(h)) if !any_ip && qtype != RecordType::ANY => {
                        let Some(target) = host_name(h) else { continue };
                        if target == owner {
                            continue; // x CNAME x is a loop
                        }
                        let record =
                            Record::from_rdata(owner.clone(), ttl, RData::CNAME(CNAME(target)));
                        built.push(record, 0, r.weight.max(1), None);
                        built.single = true;
                    }
                    _ => {}
                }
            }
        }
        if qtype == RecordType::SRV {
            // CoreDNS shares 100 out per priority: weight = floor(100 * w / sum), at least 1.
            let prio = |r: &DomainRecord| {
                if r.priority == 0 {
                    DEFAULT_PRIORITY
                } else {
                    r.priority
                }
            };
            let weight = |r: &DomainRecord| {
                if r.weight == 0 {
                    DEFAULT_WEIGHT
                } else {
                    u32::from(r.weight)
                }
            };
            let mut sums: std::collections::HashMap<u16, u32> = std::collections::HashMap::new();
            for (_, r) in &hosts {
                *sums.entry(prio(r)).or_default() += weight(r);
            }
            let mut seen = HashSet::new();
            for (path, r) in &hosts {
                let Some(port) = r.port else { continue };
                let share =
                    (100 * weight(r) / sums[&prio(r)].max(1)).clamp(1, u32::from(u16::MAX)) as u16;
                let ttl = self.ttl_of(r, freshness, stale_ttl);
                let (target, additional) = match &r.host {
                    Some(Address::Host(h)) => match host_name(h) {
                        Some(t) => (strip(t, r.target_strip), None),
                        None => continue,
                    },
                    Some(Address::Ip(ip)) => {
                        let Some(own) = path_name(path) else { continue };
                        let own = strip(own, r.target_strip);
                        let add = address_record(&own, *ip, ttl);
                        (own, Some(add))
                    }
                    None => continue,
                };
                if !seen.insert((target.clone(), port)) {
                    continue;
                }
                let srv = SRV::new(prio(r), share, port, target);
                let record = Record::from_rdata(owner.clone(), ttl, RData::SRV(srv));
                built.push(record, prio(r), share, additional);
            }
        }
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            let mut seen = HashSet::new();
            for (_, r) in &entries {
                let Some(text) = &r.text else { continue };
                if !seen.insert(text.as_str()) {
                    continue;
                }
                let ttl = self.ttl_of(r, freshness, stale_ttl);
                let record =
                    Record::from_rdata(owner.clone(), ttl, RData::TXT(TXT::new(split_255(text))));
                built.push(record, 0, 1, None);
            }
        }
        built.finish(&owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{DomainKey, Mirror, Update};

    const SKY: SourceId = SourceId(5);

    fn entry(path: &str, json: &str) -> Update {
        let src = crate::registry::Source {
            id: SKY,
            prefix: "/skydns/".into(),
            layout: crate::registry::Layout::Skydns {
                zones: vec![],
                ttl: 300,
            },
        };
        src.put(format!("/skydns/{path}").as_bytes(), json.as_bytes())
            .unwrap()
            .unwrap()
    }

    fn sky() -> SkyZone {
        let origin = Name::from_ascii("skydns.local.").unwrap();
        SkyZone {
            soa: Default::default(),
            apex: LowerName::new(&origin),
            zone: Zone {
                ns_name: Name::from_ascii("ns.dns.skydns.local.").unwrap(),
                hostmaster: Name::from_ascii("hostmaster.skydns.local.").unwrap(),
                origin,
                ttl: 5,
                negative_ttl: 5,
                serve_warning: true,
                panic_threshold: 0.0,
                locality: Default::default(),
                min_healthy: 1,
            },
            source: SKY,
            ttl: 300,
        }
    }

    fn q(n: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(n).unwrap())
    }

    fn mirror() -> Mirror {
        let m = Mirror::new();
        m.apply(
            [
                entry(
                    "local/skydns/east/production/rails/1",
                    r#"{"host":"10.0.0.1","port":8080,"ttl":60}"#,
                ),
                entry(
                    "local/skydns/east/production/rails/2",
                    r#"{"host":"10.0.0.2","port":8080,"weight":3}"#,
                ),
                entry(
                    "local/skydns/east/production/rails/3",
                    r#"{"host":"fd00::3","port":8080,"priority":20}"#,
                ),
                entry(
                    "local/skydns/west/production/db/1",
                    r#"{"host":"db.example.com","port":5432,"targetstrip":1}"#,
                ),
                entry("local/skydns/west/production/db/t", r#"{"text":"hello"}"#),
            ],
            1,
        );
        m
    }

    fn data(b: &Built) -> Vec<String> {
        b.answers()
            .iter()
            .map(|a| a.record.data.to_string())
            .collect()
    }

    #[test]
    fn subtree_answers_with_ttls() {
        let m = mirror();
        let s = m.load();
        let a = sky().build(
            &s,
            &q("rails.production.east.skydns.local."),
            RecordType::A,
            Freshness::Current,
            30,
        );
        assert_eq!(a.outcome, Outcome::Answer);
        assert_eq!(data(&a), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(a.answers()[0].record.ttl, 60, "the entry's ttl");
        assert_eq!(a.answers()[1].record.ttl, 300, "the source default");
        let stale = sky().build(
            &s,
            &q("rails.production.east.skydns.local."),
            RecordType::A,
            Freshness::Stale { age: None },
            30,
        );
        // Stale: every TTL is replaced by the stale TTL, longer or shorter (RFC 8767).
        assert!(stale.answers().iter().all(|a| a.record.ttl == 30));
        // A whole region answers from everything below it.
        let east = sky().build(
            &s,
            &q("east.skydns.local."),
            RecordType::AAAA,
            Freshness::Current,
            30,
        );
        assert_eq!(data(&east), ["fd00::3"]);
        let one = sky().build(
            &s,
            &q("1.rails.production.east.skydns.local."),
            RecordType::A,
            Freshness::Current,
            30,
        );
        assert_eq!(data(&one), ["10.0.0.1"]);
        let none = sky().build(
            &s,
            &q("nope.skydns.local."),
            RecordType::A,
            Freshness::Current,
            30,
        );
        assert_eq!(none.outcome, Outcome::NxDomain);
        let mx = sky().build(
            &s,
            &q("rails.production.east.skydns.local."),
            RecordType::MX,
            Freshness::Current,
            30,
        );
        assert_eq!(mx.outcome, Outcome::NoData);
    }

    #[test]
    fn srv_weights_targets_and_additionals() {
        let m = mirror();
        let s = m.load();
        let srv = sky().build(
            &s,
            &q("rails.production.east.skydns.local."),
            RecordType::SRV,
            Freshness::Current,
            30,
        );
        let recs: Vec<(u16, u16, u16, String)> = srv
            .answers()
            .iter()
            .map(|a| match &a.record.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_string()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            recs,
            [
                (
                    10,
                    97,
                    8080,
                    "1.rails.production.east.skydns.local.".to_string()
                ),
                (
                    10,
                    2,
                    8080,
                    "2.rails.production.east.skydns.local.".to_string()
                ),
                (
                    20,
                    100,
                    8080,
                    "3.rails.production.east.skydns.local.".to_string()
                ),
            ]
        );
        let answers = srv.answers();
        let add = answers[0].glue.first().unwrap();
        assert_eq!(
            add.name.to_string(),
            "1.rails.production.east.skydns.local."
        );
        let db = sky().build(
            &s,
            &q("db.production.west.skydns.local."),
            RecordType::SRV,
            Freshness::Current,
            30,
        );
        let RData::SRV(t) = &db.answers()[0].record.data else {
            panic!()
        };
        assert_eq!(t.target.to_string(), "example.com.", "targetstrip 1");
        assert!(db.answers()[0].glue.is_empty());
    }

    #[test]
    fn host_names_text_and_wildcards() {
        let m = mirror();
        let s = m.load();
        let a = sky().build(
            &s,
            &q("db.production.west.skydns.local."),
            RecordType::A,
            Freshness::Current,
            30,
        );
        assert_eq!(
            (data(&a), a.single),
            (vec!["db.example.com.".to_string()], true)
        );
        let cname = sky().build(
            &s,
            &q("db.production.west.skydns.local."),
            RecordType::CNAME,
            Freshness::Current,
            30,
        );
        assert_eq!(data(&cname), ["db.example.com."]);
        let any = sky().build(
            &s,
            &q("db.production.west.skydns.local."),
            RecordType::ANY,
            Freshness::Current,
            30,
        );
        assert_eq!((data(&any), any.single), (vec!["hello".to_string()], false));
        let txt = sky().build(
            &s,
            &q("db.production.west.skydns.local."),
            RecordType::TXT,
            Freshness::Current,
            30,
        );
        assert_eq!(data(&txt), ["hello"]);
        let wild = sky().build(
            &s,
            &q("rails.production.*.skydns.local."),
            RecordType::A,
            Freshness::Current,
            30,
        );
        assert_eq!(wild.answers().len(), 2);
        let any = sky().build(
            &s,
            &q("*.production.any.skydns.local."),
            RecordType::SRV,
            Freshness::Current,
            30,
        );
        assert_eq!(any.answers().len(), 4);
        let key: DomainKey = (SKY, "local/skydns/east/production/rails/1".into());
        assert!(s.domains.contains_key(&key));
    }
}
