//! Static zones: every `<zone>.zone` file (RFC 1035 master file) in the zones directory, parsed
//! with hickory-proto's zone-file parser and turned once, at load, into ruddr's own rendered
//! answers: one [`Built`] per name and type (CNAME chains inside the zone followed, the
//! additional addresses of NS, MX and SRV targets attached), a referral per zone cut, and the
//! zone's SOA for negative answers. A query is a hash lookup of its lower-case wire name, then
//! of the type; wildcards (RFC 4592) answer names that do not exist below an existing one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

use smallvec::SmallVec;

use crate::dns::answer::{Builder, Built, Outcome, Rendered};
use crate::dns::wire::{label_starts, push_lower_wire};

/// A zone file that cannot be served. The message names the file and, when it can be found,
/// the line.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("cannot read zones directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read zone file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("zone file {path}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    #[error("zone file {path}: the file name must be <zone>.zone, e.g. example.internal.zone")]
    Name { path: PathBuf },
}

/// The static zones, ready to answer.
pub struct StaticZones {
    /// Longest origin first, for matching query names.
    pub zones: Vec<FileZone>,
    /// Record count per zone, for logging.
    pub summary: Vec<(String, usize)>,
}

/// The longest name in wire form.
const MAX_NAME: usize = 255;
/// CNAME records followed inside a zone before giving up (a loop, or a very long chain).
const MAX_CHAIN: usize = 8;

type Map<V> = HashMap<Box<[u8]>, V, foldhash::fast::FixedState>;

/// One static zone: its answers by lower-case wire name.
pub struct FileZone {
    pub origin: LowerName,
    nodes: Map<Node>,
    /// The zone's SOA as negative answers carry it: its TTL the smaller of the record's TTL and
    /// the SOA MINIMUM (RFC 2308 3).
    pub soa: Arc<Rendered>,
    nxdomain: Arc<Built>,
    nodata: Arc<Built>,
    /// Whether the zone has cuts (NS records below the apex) or wildcards: the lookup walks
    /// the name's ancestors only then.
    has_cuts: bool,
    has_wildcards: bool,
}

/// A name of the zone (or an empty non-terminal) and its answers.
#[derive(Default)]
struct Node {
    /// Per type; at a CNAME, the CNAME itself and the chain for each type the zone holds.
    sets: Vec<(RecordType, Arc<Built>)>,
    /// At a CNAME: the chain for a type the zone holds nowhere (the CNAME alone).
    chain: Option<Arc<Built>>,
    /// The answer to ANY (RFC 8482: one record set, the SOA at the apex).
    any: Option<Arc<Built>>,
    /// At a zone cut: the referral.
    referral: Option<Arc<Built>>,
}

impl Node {
    fn answer(&self, qtype: RecordType, zone: &FileZone) -> Arc<Built> {
        if qtype == RecordType::ANY {
            return self.any.clone().unwrap_or_else(|| zone.nodata.clone());
        }
        if let Some((_, b)) = self.sets.iter().find(|(t, _)| *t == qtype) {
            return b.clone();
        }
        self.chain.clone().unwrap_or_else(|| zone.nodata.clone())
    }
}

/// A name as a key of [`FileZone::nodes`]: lower-case wire form, on the stack.
type WireName = SmallVec<[u8; MAX_NAME + 1]>;

fn key(name: &Name) -> Box<[u8]> {
    let mut wire = WireName::new();
    push_lower_wire(name.iter(), &mut wire);
    wire.as_slice().into()
}

impl std::fmt::Debug for FileZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileZone")
            .field("origin", &self.origin)
            .field("names", &self.nodes.len())
            .finish()
    }
}

impl FileZone {
    /// The answer for `qname` (inside this zone) and `qtype`: the name's own, a referral at or
    /// below a cut, a wildcard's, NODATA or NXDOMAIN.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Arc<Built> {
        let mut wire = WireName::new();
        push_lower_wire(qname.iter(), &mut wire);
        let name = wire.as_slice();
        if !self.has_cuts {
            // Most zones: one hash look-up, and the ancestors only for a wildcard.
            if let Some(node) = self.nodes.get(name) {
                return node.answer(qtype, self);
            }
            if !self.has_wildcards {
                return self.nxdomain.clone();
            }
        }
        let mut starts = [0u8; 128];
        let (count, root) = label_starts(name, &mut starts);
        let starts = starts.map(usize::from);
        let below = count.saturating_sub(usize::from(self.origin.num_labels()));
        if self.has_cuts {
            // The cut nearest the apex answers for everything below it (the DS at a cut is the
            // parent's: no referral for it).
            for depth in 1..=below {
                let suffix = &name[starts[below - depth]..];
                if let Some(referral) = self.nodes.get(suffix).and_then(|n| n.referral.as_ref()) {
                    if depth == below && qtype == RecordType::DS {
                        break;
                    }
                    return referral.clone();
                }
            }
        }
        if let Some(node) = self.nodes.get(name) {
            return node.answer(qtype, self);
        }
        if self.has_wildcards {
            // The closest encloser is the longest existing ancestor; its wildcard child, if
            // any, answers (RFC 4592 3.3.1).
            for i in 1..=below {
                let encloser = &name[if i < count { starts[i] } else { root }..];
                if self.nodes.contains_key(encloser) {
                    let mut wild = [0u8; MAX_NAME + 2];
                    wild[..2].copy_from_slice(b"\x01*");
                    wild[2..2 + encloser.len()].copy_from_slice(encloser);
                    return match self.nodes.get(&wild[..2 + encloser.len()]) {
                        Some(node) => node.answer(qtype, self),
                        None => self.nxdomain.clone(),
                    };
                }
            }
        }
        self.nxdomain.clone()
    }

    /// Builds the zone from its records (an SOA at the apex among them).
    pub fn from_records(origin: &Name, records: Vec<Record>) -> Result<Self, String> {
        let lower_origin = LowerName::new(origin);
        // Record sets by name and type, for names in the zone (others are ignored).
        let mut sets: BTreeMap<LowerName, BTreeMap<RecordType, Vec<Record>>> = BTreeMap::new();
        for r in records {
            let owner = LowerName::new(&r.name);
            if !lower_origin.zone_of(&owner) {
                continue;
            }
            let mut r = r;
            r.name = Name::from(&owner);
            let rtype = r.record_type();
            sets.entry(owner)
                .or_default()
                .entry(rtype)
                .or_default()
                .push(r);
        }
        let soa = sets
            .get(&lower_origin)
            .and_then(|s| s.get(&RecordType::SOA))
            .and_then(|s| s.first())
            .cloned()
            .ok_or("no SOA record at the zone apex")?;
        let negative_ttl = match &soa.data {
            RData::SOA(s) => soa.ttl.min(s.minimum),
            _ => soa.ttl,
        };
        let mut negative_soa = soa.clone();
        negative_soa.ttl = negative_ttl;
        let cuts: HashSet<LowerName> = sets
            .iter()
            .filter(|(n, s)| **n != lower_origin && s.contains_key(&RecordType::NS))
            .map(|(n, _)| n.clone())
            .collect();
        let zone_types: HashSet<RecordType> = sets
            .values()
            .flat_map(|s| s.keys().copied())
            .filter(|t| *t != RecordType::CNAME)
            .collect();
        // Addresses of a name in the zone (for additional sections and glue).
        let addresses = |name: &Name| -> Vec<Record> {
            let lower = LowerName::new(name);
            sets.get(&lower)
                .into_iter()
                .flat_map(|s| {
                    s.get(&RecordType::A)
                        .into_iter()
                        .chain(s.get(&RecordType::AAAA))
                        .flatten()
                        .cloned()
                })
                .collect()
        };
        // At or below a cut; strictly below one, a name is occluded (the delegation's data).
        let below_cut = |n: &LowerName| cuts.iter().any(|cut| cut.zone_of(n));
        let occluded = |n: &LowerName| below_cut(n) && !cuts.contains(n);
        let mut zone = FileZone {
            origin: lower_origin.clone(),
            nodes: Map::default(),
            soa: Arc::new(Rendered::new(negative_soa)),
            nxdomain: Arc::new(Built::negative(0, Outcome::NxDomain)),
            nodata: Arc::new(Built::negative(0, Outcome::NoData)),
            has_cuts: !cuts.is_empty(),
            has_wildcards: false,
        };
        let qname_of = |n: &LowerName| Name::from(n);
        let mut exist = HashSet::new();
        for name in sets.keys() {
            let mut n = name.clone();
            while exist.insert(n.clone()) && n.num_labels() > lower_origin.num_labels() {
                n = n.base_name();
            }
        }
        let names = Names {
            sets: &sets,
            exist,
            below_cut: &below_cut,
        };
        for (name, types) in &sets {
            let mut node = Node::default();
            let owner = qname_of(name);
            if cuts.contains(name) {
                let mut referral = Builder::negative(0, Outcome::Referral);
                let ns = types.get(&RecordType::NS).cloned().unwrap_or_default();
                for r in &ns {
                    if let RData::NS(target) = &r.data {
                        referral.additional.extend(addresses(&target.0));
                    }
                }
                referral.authority = ns;
                node.referral = Some(Arc::new(referral.finish(&owner)));
                // A DS query at the cut is answered from above: NODATA unless the zone has one.
                if let Some(ds) = types.get(&RecordType::DS) {
                    let mut b = Builder::new(0);
                    for r in ds {
                        b.push_record(r.clone(), false, Vec::new());
                    }
                    node.sets.push((RecordType::DS, Arc::new(b.finish(&owner))));
                }
            } else if !occluded(name) {
                for (rtype, records) in types {
                    let mut b = Builder::new(0);
                    for r in records {
                        let glue = match &r.data {
                            RData::NS(n) => addresses(&n.0),
                            RData::MX(m) => addresses(&m.exchange),
                            RData::SRV(s) => addresses(&s.target),
                            _ => Vec::new(),
                        };
                        b.push_record(r.clone(), false, glue);
                    }
                    node.sets.push((*rtype, Arc::new(b.finish(&owner))));
                }
                if types.contains_key(&RecordType::CNAME) {
                    for t in &zone_types {
                        let chain = zone.chain(&names, &owner, Some(*t));
                        node.sets.push((*t, Arc::new(chain)));
                    }
                    node.chain = Some(Arc::new(zone.chain(&names, &owner, None)));
                }
                // RFC 8482: ANY gets one record set (the SOA at the apex).
                let any_type = if *name == lower_origin {
                    Some(RecordType::SOA)
                } else {
                    [RecordType::CNAME, RecordType::A, RecordType::AAAA]
                        .into_iter()
                        .find(|t| types.contains_key(t))
                        .or_else(|| types.keys().next().copied())
                };
                node.any = any_type.and_then(|t| {
                    node.sets
                        .iter()
                        .find(|(s, _)| *s == t)
                        .map(|(_, b)| b.clone())
                });
            }
            zone.has_wildcards |= name.is_wildcard();
            zone.nodes.insert(key(&owner), node);
            // Empty non-terminals: every ancestor up to the apex exists (NODATA).
            let mut parent = owner.base_name();
            while parent.num_labels() > origin.num_labels() {
                zone.nodes.entry(key(&parent)).or_default();
                parent = parent.base_name();
            }
        }
        Ok(zone)
    }

    /// The answer at CNAME `owner` for `qtype` (`None`: a type no name of the zone holds): the
    /// CNAME, then each CNAME its target holds in the zone, then the target's records of that
    /// type. The chain keeps its order; the final record set is shuffled per response. A chain
    /// that ends in the zone at a name that does not exist is NXDOMAIN, at one without that type
    /// NODATA (both with the SOA, RFC 2308 2.1-2.2); it stops at a zone cut (the data below is
    /// not the zone's to answer with).
    fn chain(&self, names: &Names<'_>, owner: &Name, qtype: Option<RecordType>) -> Built {
        let mut b = Builder::new(0);
        let mut at = LowerName::new(owner);
        let mut seen = HashSet::new();
        let mut first = true;
        let mut end = Outcome::Answer;
        while seen.insert(at.clone()) && seen.len() <= MAX_CHAIN {
            if !first && (names.below_cut)(&at) {
                break;
            }
            let Some(types) = names.sets.get(&at) else {
                end = if names.exist.contains(&at) {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                };
                break;
            };
            if let Some(cname) = types.get(&RecordType::CNAME).and_then(|c| c.first()) {
                b.push_record(cname.clone(), !first, Vec::new());
                b.lead += 1;
                first = false;
                let RData::CNAME(target) = &cname.data else {
                    break;
                };
                at = LowerName::new(&target.0);
                if !self.origin.zone_of(&at) {
                    break;
                }
                continue;
            }
            match qtype.and_then(|t| types.get(&t)) {
                Some(records) => {
                    for r in records {
                        b.push_record(r.clone(), true, Vec::new());
                    }
                }
                None => end = Outcome::NoData,
            }
            break;
        }
        let mut b = b.finish(owner);
        if end != Outcome::Answer {
            // The CNAMEs stay in the answer section; the rcode and SOA follow the chain's end.
            b.outcome = end;
        }
        b
    }
}

/// What a CNAME chain is followed through: the zone's record sets, every name that exists
/// (empty non-terminals included), and whether a name is at or below a cut.
struct Names<'a> {
    sets: &'a BTreeMap<LowerName, BTreeMap<RecordType, Vec<Record>>>,
    exist: HashSet<LowerName>,
    below_cut: &'a dyn Fn(&LowerName) -> bool,
}

impl StaticZones {
    pub fn empty() -> Self {
        Self {
            zones: Vec::new(),
            summary: Vec::new(),
        }
    }

    /// The most specific static zone holding `name`.
    pub fn zone_of(&self, name: &LowerName) -> Option<&FileZone> {
        // Sorted longest first.
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// Loads every `*.zone` file in `dir`. A missing directory means no zones.
    pub fn load_dir(dir: &Path) -> Result<Self, ZoneError> {
        let mut zones = Self::empty();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(zones),
            Err(source) => {
                return Err(ZoneError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zone"))
            .collect();
        files.sort();
        for path in files {
            let (zone, count) = load_file(&path)?;
            zones.summary.push((zone.origin.to_string(), count));
            zones.zones.push(zone);
        }
        zones
            .zones
            .sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        Ok(zones)
    }
}

/// The largest zone file read (a bound on what a reload reads into memory).
const MAX_ZONE_FILE: u64 = 256 << 20;

fn load_file(path: &Path) -> Result<(FileZone, usize), ZoneError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| ZoneError::Name {
            path: path.to_path_buf(),
        })?;
    let origin = Name::from_ascii(format!("{}.", stem.trim_end_matches('.'))).map_err(|_| {
        ZoneError::Name {
            path: path.to_path_buf(),
        }
    })?;
    let read_error = |source| ZoneError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_ZONE_FILE {
        return Err(ZoneError::Parse {
            path: path.to_path_buf(),
            line: None,
            reason: format!("{size} bytes, more than the {MAX_ZONE_FILE} a zone file may hold"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let parse = |text: &str| {
        Parser::new(text, Some(path.to_path_buf()), Some(origin.clone()))
            .parse()
            .map_err(|e| e.to_string())
    };
    // parse() returns the $ORIGIN in effect at the end of the file; the zone's origin is the
    // one from the file name.
    let (_, records) = parse(&text).map_err(|reason| ZoneError::Parse {
        path: path.to_path_buf(),
        line: failing_line(&text, &parse),
        reason,
    })?;
    let records: Vec<Record> = records
        .values()
        .flat_map(|rs| rs.records_without_rrsigs().cloned())
        .collect();
    let count = records.len();
    let zone = FileZone::from_records(&origin, records).map_err(|reason| ZoneError::Parse {
        path: path.to_path_buf(),
        line: None,
        reason,
    })?;
    Ok((zone, count))
}

/// The parser reports no positions, so find the first line whose inclusion makes the file
/// fail to parse (only cutting where parentheses are balanced, so multi-line records stay
/// whole).
fn failing_line<T>(text: &str, parse: &impl Fn(&str) -> Result<T, String>) -> Option<usize> {
    let mut depth = 0i32;
    let mut end = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        end += line.len();
        let code = line.split(';').next().unwrap_or("");
        depth += code.matches('(').count() as i32 - code.matches(')').count() as i32;
        if depth <= 0 && parse(&text[..end]).is_err() {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 10.0.0.53\nwww IN A 10.0.0.80\n";

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).unwrap())
    }

    fn zone(text: &str) -> FileZone {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.internal.zone"), text).unwrap();
        let mut z = StaticZones::load_dir(dir.path()).unwrap();
        z.zones.pop().unwrap()
    }

    /// Each answer as "owner data", an owner written as a pointer to the question as `question`.
    fn rdata(b: &Built, question: &str) -> Vec<String> {
        b.answers()
            .iter()
            .map(|a| {
                let owner = if a.owned {
                    a.record.name.to_string()
                } else {
                    question.to_string()
                };
                format!("{owner} {}", a.record.data)
            })
            .collect()
    }

    #[test]
    fn loads_zone_files_named_after_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.internal.zone"), GOOD).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a zone").unwrap();
        let z = StaticZones::load_dir(dir.path()).unwrap();
        assert_eq!(z.summary, [("example.internal.".to_string(), 4)]);
        assert!(z.zone_of(&lower("WWW.example.internal.")).is_some());
        assert!(z.zone_of(&lower("example.com.")).is_none());
        assert!(StaticZones::load_dir(&dir.path().join("missing"))
            .unwrap()
            .zones
            .is_empty());
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = format!("{GOOD}mail IN MX not-a-number mail\nok IN A 10.0.0.1\n");
        let path = dir.path().join("bad.internal.zone");
        std::fs::write(&path, bad).unwrap();
        let err = StaticZones::load_dir(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("bad.internal.zone") && err.contains("line 6"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "$TTL 60\nwww IN A 10.0.0.1\n").unwrap();
        let err = StaticZones::load_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no SOA"), "{err}");
    }

    #[test]
    fn names_types_and_negative_answers() {
        let z = zone(GOOD);
        let www = z.lookup(&lower("WWW.example.internal."), RecordType::A);
        assert_eq!(www.outcome, Outcome::Answer);
        assert_eq!(
            rdata(&www, "www.example.internal."),
            ["www.example.internal. 10.0.0.80"]
        );
        let nodata = z.lookup(&lower("www.example.internal."), RecordType::MX);
        assert_eq!(nodata.outcome, Outcome::NoData);
        let nx = z.lookup(&lower("nope.example.internal."), RecordType::A);
        assert_eq!(nx.outcome, Outcome::NxDomain);
        // The negative SOA carries min(TTL, MINIMUM).
        assert_eq!(z.soa.record.ttl, 60);
        // NS at the apex comes with its address.
        let ns = z.lookup(&lower("example.internal."), RecordType::NS);
        assert_eq!(ns.answers()[0].glue.len(), 1);
        let any = z.lookup(&lower("example.internal."), RecordType::ANY);
        assert_eq!(any.answers()[0].record.record_type(), RecordType::SOA);
        assert_eq!(any.answers().len(), 1);
    }

    #[test]
    fn wildcards_cnames_and_empty_non_terminals() {
        let z = zone(&format!(
            "{GOOD}*.apps IN A 10.0.1.1\nalias IN CNAME www\nloop1 IN CNAME loop2\nloop2 IN CNAME loop1\nout IN CNAME example.com.\na.b.c IN TXT \"deep\"\ndangling IN CNAME gone\ntoent IN CNAME b.c\n"
        ));
        let w = z.lookup(&lower("x.apps.example.internal."), RecordType::A);
        assert_eq!(w.outcome, Outcome::Answer);
        // The owner is the question's name (written as a pointer to it).
        assert!(!w.answers()[0].owned);
        // An existing name is not covered by the wildcard; nor a deeper name's ancestor.
        assert_eq!(
            z.lookup(&lower("apps.example.internal."), RecordType::A)
                .outcome,
            Outcome::NoData
        );
        // x.apps does not exist, so apps is the closest encloser and *.apps matches.
        assert_eq!(
            z.lookup(&lower("y.x.apps.example.internal."), RecordType::A)
                .outcome,
            Outcome::Answer
        );
        // Below an existing name without a wildcard child: NXDOMAIN.
        assert_eq!(
            z.lookup(&lower("q.www.example.internal."), RecordType::A)
                .outcome,
            Outcome::NxDomain
        );
        let alias = z.lookup(&lower("alias.example.internal."), RecordType::A);
        assert_eq!(
            rdata(&alias, "alias.example.internal."),
            [
                "alias.example.internal. www.example.internal.",
                "www.example.internal. 10.0.0.80"
            ]
        );
        assert_eq!(alias.lead, 1);
        assert!(alias.answers()[1].owned);
        let only = z.lookup(&lower("alias.example.internal."), RecordType::CNAME);
        assert_eq!(only.answers().len(), 1);
        let looped = z.lookup(&lower("loop1.example.internal."), RecordType::A);
        assert_eq!(looped.answers().len(), 2);
        let out = z.lookup(&lower("out.example.internal."), RecordType::AAAA);
        assert_eq!(out.answers().len(), 1);
        // A chain that ends in the zone without data: the CNAME, then NXDOMAIN or NODATA.
        let gone = z.lookup(&lower("dangling.example.internal."), RecordType::A);
        assert_eq!((gone.answers().len(), gone.outcome), (1, Outcome::NxDomain));
        let ent = z.lookup(&lower("toent.example.internal."), RecordType::A);
        assert_eq!((ent.answers().len(), ent.outcome), (1, Outcome::NoData));
        let mx = z.lookup(&lower("alias.example.internal."), RecordType::MX);
        assert_eq!((mx.answers().len(), mx.outcome), (1, Outcome::NoData));
        for ent in ["b.c.example.internal.", "c.example.internal."] {
            assert_eq!(
                z.lookup(&lower(ent), RecordType::A).outcome,
                Outcome::NoData,
                "{ent}"
            );
        }
    }

    #[test]
    fn cuts_give_referrals_with_glue() {
        let z = zone(&format!(
            "{GOOD}sub IN NS ns.sub\nsub IN NS ns.elsewhere.example.\nns.sub IN A 10.0.2.53\n"
        ));
        for name in [
            "sub.example.internal.",
            "x.sub.example.internal.",
            "ns.sub.example.internal.",
        ] {
            let r = z.lookup(&lower(name), RecordType::A);
            assert_eq!(r.outcome, Outcome::Referral, "{name}");
            assert!(r.answers().is_empty());
            assert_eq!(r.authority().len(), 2);
            assert_eq!(r.additional().len(), 1);
            assert_eq!(r.wire.authority().1, 2);
            assert_eq!(r.wire.additional().1, 1);
        }
        assert_eq!(
            z.lookup(&lower("sub.example.internal."), RecordType::DS)
                .outcome,
            Outcome::NoData
        );
        // A chain into delegated space stops at the cut: the CNAME alone.
        let z = zone(&format!(
            "{GOOD}sub IN NS ns.sub\nns.sub IN A 10.0.2.53\nalias IN CNAME ns.sub\n"
        ));
        let alias = z.lookup(&lower("alias.example.internal."), RecordType::A);
        assert_eq!((alias.answers().len(), alias.outcome), (1, Outcome::Answer));
    }
}

/// hickory's own zone store, through its `Catalog`, as an independent oracle for what a zone
/// file answers: response code, authority, and the answer section's record sets.
#[cfg(test)]
mod oracle {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{LowerName, Name, RecordType};
    use hickory_proto::serialize::binary::BinEncoder;
    use hickory_proto::serialize::txt::Parser;
    use hickory_server::net::runtime::{TokioRuntimeProvider, TokioTime};
    use hickory_server::net::xfer::Protocol;
    use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponse, ZoneType};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, hickory_server::net::NetError> {
            let mut out = self.0.lock().map_err(|_| "poisoned")?;
            let mut encoder = BinEncoder::new(&mut out);
            response
                .destructive_emit(&mut encoder)
                .map_err(|_| "cannot encode".into())
        }
    }

    const ZONE: &str = "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\n\
        ns IN A 10.0.0.53\nwww IN A 10.0.0.80\nwww IN A 10.0.0.81\nwww IN AAAA fd00::80\n\
        mail IN MX 10 www\n*.apps IN A 10.0.1.1\n*.apps IN TXT \"wild\"\na.b.c IN TXT \"deep\"\n\
        txt IN TXT \"one\" \"two\"\n_http._tcp IN SRV 0 5 80 www\nalias IN CNAME www\n";

    fn answers(m: &[Record]) -> Vec<String> {
        let mut v: Vec<String> = m
            .iter()
            .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.record_type(), r.data))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn static_answers_match_hickorys_zone_store() {
        let origin = Name::from_ascii("example.internal.").unwrap();
        let (_, sets) = Parser::new(ZONE, None, Some(origin.clone()))
            .parse()
            .unwrap();
        let records: Vec<Record> = sets
            .values()
            .flat_map(|rs| rs.records_without_rrsigs().cloned())
            .collect();
        let ours = FileZone::from_records(&origin, records).unwrap();
        let store = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
            origin.clone(),
            sets,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .unwrap();
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(store)]);
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let mut compared = 0;
        for name in [
            "example.internal.",
            "www.example.internal.",
            "WWW.Example.Internal.",
            "mail.example.internal.",
            "nope.example.internal.",
            "x.apps.example.internal.",
            "y.x.apps.example.internal.",
            "apps.example.internal.",
            "b.c.example.internal.",
            "a.b.c.example.internal.",
            "txt.example.internal.",
            "_http._tcp.example.internal.",
            "q.www.example.internal.",
            "alias.example.internal.",
        ] {
            for qtype in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::MX,
                RecordType::TXT,
                RecordType::SRV,
                RecordType::SOA,
                RecordType::NS,
            ] {
                let mut q = Message::query();
                q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
                let request = Request::from_bytes(q.to_vec().unwrap(), src, Protocol::Udp).unwrap();
                let capture = Capture::default();
                catalog
                    .handle_request::<Capture, TokioTime>(&request, capture.clone())
                    .await;
                let theirs = Message::from_vec(&capture.0.lock().unwrap()).unwrap();
                let qname = LowerName::new(&Name::from_ascii(name).unwrap());
                let built = ours.lookup(&qname, qtype);
                let what = format!("{name} {qtype}");
                let code = match built.outcome {
                    Outcome::NxDomain => ResponseCode::NXDomain,
                    _ => ResponseCode::NoError,
                };
                // hickory answers a name the wildcard matches, for a type the wildcard lacks,
                // NXDOMAIN; RFC 4592 2.2.1 (and knotd, BIND) say NODATA, as here.
                let wildcard_nodata = name.contains("apps.")
                    && name != "apps.example.internal."
                    && code == ResponseCode::NoError
                    && built.answers().is_empty();
                if wildcard_nodata {
                    assert_eq!(
                        theirs.metadata.response_code,
                        ResponseCode::NXDomain,
                        "{what}"
                    );
                    continue;
                }
                assert_eq!(code, theirs.metadata.response_code, "{what}");
                let mine: Vec<Record> = built
                    .answers()
                    .iter()
                    .map(|a| {
                        let mut r = a.record.clone();
                        if !a.owned {
                            r.name = Name::from(&qname);
                        }
                        r
                    })
                    .collect();
                assert_eq!(answers(&mine), answers(&theirs.answers), "{what}");
                let negative = matches!(built.outcome, Outcome::NoData | Outcome::NxDomain);
                if negative && built.answers().is_empty() {
                    assert!(
                        theirs
                            .authorities
                            .iter()
                            .any(|r| r.record_type() == RecordType::SOA),
                        "{what}: hickory gives the SOA too"
                    );
                }
                compared += 1;
            }
        }
        assert!(compared > 70, "{compared}");
    }
}
