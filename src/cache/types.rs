//! Domain types shared by the registry (producer) and the DNS side (consumer).

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A name is not a DNS label usable as a service name or instance id (1-63 letters, digits and
/// `-`, not starting or ending with `-`): the [`DomainLabel`] rule narrowed to host names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a DNS label (1-63 letters, digits or '-', not starting or ending with '-')")]
pub struct InvalidLabel(pub String);

/// A name is not a [`DomainLabel`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a DNS label (1-63 letters, digits, '-' or '_')")]
pub struct InvalidDomainLabel(pub String);

/// One label of a domain name, stored in lower case.
///
/// The rule, for every name ruddr reads (zone names in the config, host names in registry
/// values, service names and instance ids): 1 to 63 bytes of ASCII letters, digits, `-` and
/// `_`. Service names and instance ids are the host-name labels among these
/// ([`DomainLabel::is_host_label`]): query names reserve a leading `_` for the
/// `_<port>._tcp` and `_tag` forms, so a service or instance can never be spelled like one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainLabel(std::sync::Arc<str>);

impl DomainLabel {
    /// Validates `s` against the rule; the stored form is lower case.
    pub fn new(s: &str) -> Result<Self, InvalidDomainLabel> {
        if Self::is_valid(s) {
            Ok(Self(s.to_ascii_lowercase().into()))
        } else {
            Err(InvalidDomainLabel(s.to_string()))
        }
    }

    /// Whether `s` follows the rule (without keeping it).
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Whether it is also a host-name label (RFC 1123): no `_`, no `-` at either end.
    pub fn is_host_label(&self) -> bool {
        !self.0.contains('_') && !self.0.starts_with('-') && !self.0.ends_with('-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `s` as a host-name [`DomainLabel`] (the service name and instance id rule).
fn label(s: &str) -> Result<DomainLabel, InvalidLabel> {
    DomainLabel::new(s)
        .ok()
        .filter(DomainLabel::is_host_label)
        .ok_or_else(|| InvalidLabel(s.to_string()))
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(DomainLabel);

        // Written as the string itself, without the copy `into = "String"` would make: a
        // snapshot writes a million of them.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidLabel;
            fn try_from(s: String) -> Result<Self, InvalidLabel> {
                Self::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.as_str().to_string()
            }
        }

        impl $name {
            /// Validates `s` as a host-name [`DomainLabel`]; the stored form is lower case.
            pub fn new(s: &str) -> Result<Self, InvalidLabel> {
                label(s).map(Self)
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_type!(
    /// A service name: one lower-case DNS label.
    ServiceName
);
label_type!(
    /// An instance id, unique within its service: one lower-case DNS label.
    InstanceId
);

/// A locality that is not 1-63 letters, digits, `-`, `_` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("locality {0:?} is not 1-63 letters, digits, '-', '_' or '.'")]
pub struct InvalidLocality(pub String);

/// A locality label (an availability zone, a rack, a site) in its stored form, lower case.
pub fn locality(s: &str) -> Result<Box<str>, InvalidLocality> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s.to_ascii_lowercase().into())
    } else {
        Err(InvalidLocality(s.to_string()))
    }
}

/// Health as registered. Only `Critical` is never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Passing,
    Warning,
    Critical,
}

/// Which registry source an instance came from: 0 is the native prefix, others are the
/// configured framework sources (a checksum of format and prefix, so the same source keeps
/// its id across restarts and config reorderings).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SourceId(pub u32);

impl SourceId {
    pub const NATIVE: SourceId = SourceId(0);
}

/// An instance's address: an IP literal, or a host name that DNS answers point to (CNAME at
/// the instance name, SRV target) instead of dropping the instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    Ip(IpAddr),
    /// Lower case, without the trailing dot.
    Host(String),
}

/// Neither an IP literal nor a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a host name")]
pub struct InvalidAddress(pub String);

impl Address {
    /// An IP literal (IPv6 with or without brackets) or a host name ([`DomainLabel`]s, at most
    /// 253 bytes; a trailing dot is allowed).
    pub fn parse(s: &str) -> Result<Self, InvalidAddress> {
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Address::Ip(ip));
        }
        let host = s.strip_suffix('.').unwrap_or(s);
        // A name of digits and dots only is a malformed address, not a host.
        let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if host.len() <= 253 && !numeric && host.split('.').all(DomainLabel::is_valid) {
            Ok(Address::Host(host.to_ascii_lowercase()))
        } else {
            Err(InvalidAddress(s.to_string()))
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Host(_) => None,
        }
    }
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        Address::Ip(ip)
    }
}

impl TryFrom<String> for Address {
    type Error = InvalidAddress;
    fn try_from(s: String) -> Result<Self, InvalidAddress> {
        Address::parse(&s)
    }
}

/// An address in binary formats (the snapshot): IPs as their octets, which is much cheaper
/// than formatting and parsing text for a million instances.
#[derive(Serialize)]
enum WireRef<'a> {
    V4([u8; 4]),
    V6([u8; 16]),
    Host(&'a str),
}

#[derive(Deserialize)]
enum Wire {
    V4([u8; 4]),
    V6([u8; 16]),
    Host(String),
}

/// Text (`"10.0.0.1"`, `"db.example"`) in human-readable formats such as JSON; octets in
/// binary ones.
impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return match self {
                Address::Host(h) => s.serialize_str(h),
                Address::Ip(ip) => s.collect_str(ip),
            };
        }
        match self {
            Address::Ip(IpAddr::V4(ip)) => WireRef::V4(ip.octets()),
            Address::Ip(IpAddr::V6(ip)) => WireRef::V6(ip.octets()),
            Address::Host(h) => WireRef::Host(h),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            return Address::parse(&text).map_err(D::Error::custom);
        }
        match Wire::deserialize(d)? {
            Wire::V4(o) => Ok(Address::Ip(IpAddr::from(o))),
            Wire::V6(o) => Ok(Address::Ip(IpAddr::from(o))),
            // Validated like any other input.
            Wire::Host(h) => Address::parse(&h).map_err(D::Error::custom),
        }
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Host(h) => f.write_str(h),
        }
    }
}

/// Named ports, sorted by name. A flat sorted vector rather than a B-tree: instances carry a
/// few entries at most, and a million instances each holding an 11-slot B-tree node would
/// spend most of the mirror's memory on empty slots.
pub type Ports = litemap::LiteMap<String, u16>;
/// Metadata: string pairs, sorted by key, keys unique, packed into one exactly sized block
/// (per pair the key's and the value's length as LEB128 varints, then their bytes). A million
/// instances each carrying a pair or two spent more on a vector of `String` pairs (a spare
/// capacity of four pairs, a chunk per string) than on everything else they hold.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta(Box<[u8]>);

impl Meta {
    /// The pairs in key order.
    pub fn iter(&self) -> MetaIter<'_> {
        MetaIter(&self.0)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` to `value` (rebuilds the block: for building and tests, not hot paths).
    pub fn insert(&mut self, key: String, value: String) {
        let mut pairs: Vec<(String, String)> = self
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.push((key, value));
        *self = pairs.into_iter().collect();
    }

    pub fn clear(&mut self) {
        self.0 = Box::default();
    }
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for shift in (0..usize::BITS).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= usize::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The pairs of a [`Meta`], in key order.
pub struct MetaIter<'a>(&'a [u8]);

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let mut take = || -> Option<&'a str> {
            let len = take_varint(&mut self.0)?;
            let (s, rest) = self.0.split_at_checked(len)?;
            self.0 = rest;
            // The block is only ever built from `str`s.
            std::str::from_utf8(s).ok()
        };
        let pair = take().zip(take());
        if pair.is_none() {
            self.0 = &[];
        }
        pair
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Meta {
    /// Later pairs replace earlier ones with the same key.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut sorted: Vec<(K, V)> = pairs.into_iter().collect();
        // Stable: among equal keys the last one given stays last, and is kept.
        sorted.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut out = Vec::new();
        for (n, (k, v)) in sorted.iter().enumerate() {
            if sorted
                .get(n + 1)
                .is_some_and(|next| next.0.as_ref() == k.as_ref())
            {
                continue;
            }
            for s in [k.as_ref(), v.as_ref()] {
                push_varint(&mut out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
        Self(out.into_boxed_slice())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Meta {
    /// Adds the pairs, each replacing what its key held (rebuilds the block once).
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        let old = std::mem::take(self);
        let old = old.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let new = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()));
        *self = old.chain(new).collect();
    }
}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a str, &'a str);
    type IntoIter = MetaIter<'a>;
    fn into_iter(self) -> MetaIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map, as the registry contract and the snapshot file spell metadata.
impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The length first: the snapshot's format needs it before the pairs.
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map: litemap::LiteMap<String, String> = bounded_map(d)?;
        Ok(map.into_iter().collect())
    }
}

/// Always a JSON object: litemap writes an empty map as `[]` in human-readable formats, which
/// is not what the registry contract (or its readers) expect.
fn as_map<S: serde::Serializer, V: Serialize>(
    map: &litemap::LiteMap<String, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter())
}

/// Reads a map as litemap does (a map, or in JSON also a list of pairs), without reserving the
/// length the input claims: litemap reserves it all up front, and a damaged snapshot body with
/// a matching checksum could claim terabytes and abort the process.
pub(crate) fn bounded_map<'de, D, V>(d: D) -> Result<litemap::LiteMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visit<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
        type Value = litemap::LiteMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut m: M,
        ) -> Result<Self::Value, M::Error> {
            let mut map = litemap::LiteMap::with_capacity(m.size_hint().unwrap_or(0).min(16));
            while let Some((k, v)) = m.next_entry()? {
                map.insert(k, v);
            }
            Ok(map)
        }
        fn visit_seq<S: serde::de::SeqAccess<'de>>(
            self,
            mut s: S,
        ) -> Result<Self::Value, S::Error> {
            let mut map = litemap::LiteMap::with_capacity(s.size_hint().unwrap_or(0).min(16));
            while let Some((k, v)) = s.next_element()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }
    let visit = Visit(std::marker::PhantomData);
    if d.is_human_readable() {
        d.deserialize_any(visit)
    } else {
        d.deserialize_map(visit)
    }
}

/// One registered instance of a service, already validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub address: Address,
    /// The main port; instances without one get A/AAAA records but no SRV record.
    pub port: Option<u16>,
    /// Named ports, lower-case names (`_<name>._tcp.<service>`).
    #[serde(serialize_with = "as_map", deserialize_with = "bounded_map")]
    pub ports: Ports,
    pub tags: Vec<String>,
    pub weight: u16,
    pub priority: u16,
    pub health: Health,
    pub meta: Meta,
    /// The source that registered it; instances of different sources never replace each other.
    #[serde(default)]
    pub source: SourceId,
    /// Where the instance runs (an availability zone, a rack): answers prefer or keep to the
    /// client's locality (README "Locality-aware answers"). Lower case.
    #[serde(default)]
    pub locality: Option<Box<str>>,
}

impl Health {
    /// The registry contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

impl Instance {
    /// A passing native instance at `addr` with `port` and nothing else set (for tests).
    #[cfg(test)]
    pub fn for_test(id: &str, addr: &str, port: Option<u16>) -> Self {
        Self {
            id: InstanceId::new(id).unwrap(),
            address: Address::parse(addr).unwrap(),
            port,
            ports: Default::default(),
            tags: vec![],
            weight: 1,
            priority: 0,
            health: Health::Passing,
            meta: Default::default(),
            source: SourceId::NATIVE,
            locality: None,
        }
    }

    /// Whether DNS answers may include this instance.
    pub fn is_served(&self, serve_warning: bool) -> bool {
        match self.health {
            Health::Passing => true,
            Health::Warning => serve_warning,
            Health::Critical => false,
        }
    }

    /// Whether the instance runs in `locality` (already lower case).
    pub fn is_in(&self, locality: &str) -> bool {
        self.locality.as_deref() == Some(locality)
    }

    /// Whether the instance carries `tag` (tags compare case-insensitively, as DNS names do).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// One SkyDNS entry (the CoreDNS etcd plugin's layout): a member of the record sets of the
/// domain its key spells, and of every domain above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// `None` for entries that only carry text.
    pub host: Option<Address>,
    pub port: Option<u16>,
    pub priority: u16,
    pub weight: u16,
    pub text: Option<String>,
    /// The entry's own TTL; `None` means the source's default.
    pub ttl: Option<u32>,
    /// Labels to strip from the front of a host-name SRV target (`targetstrip`).
    pub target_strip: u8,
}

/// A SkyDNS entry's place: its source and its path below the source prefix, lower case
/// (`local/skydns/east/rails/1` for `1.rails.east.skydns.local.`).
pub type DomainKey = (SourceId, String);

/// A change to the mirror, produced by the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// An instance was written (created or replaced).
    Put {
        service: ServiceName,
        instance: Instance,
    },
    /// An instance was removed.
    Delete {
        service: ServiceName,
        id: InstanceId,
        source: SourceId,
    },
    /// Everything one registry key holds now, for layouts where one key holds several
    /// instances (go-micro: one key, the nodes of its value). Replaces the instances that `key`
    /// (the key's own id) gave before: ids no longer listed are removed, and an empty list
    /// (the key was deleted) removes them all. Other keys' instances are left alone.
    Replace {
        service: ServiceName,
        source: SourceId,
        key: InstanceId,
        instances: Vec<Instance>,
    },
    /// A SkyDNS entry was written.
    DomainPut {
        key: DomainKey,
        record: DomainRecord,
    },
    /// A SkyDNS entry was removed.
    DomainDelete { key: DomainKey },
    /// Everything one source holds, as listed at one revision: replaces that source's
    /// instances and entries (everything when `source` is `None`) and leaves the others alone.
    /// It also forgets which keys held that source's instances: a [`Update::Replace`] per key
    /// in the same batch records them again. Keys in `keep` were listed with a value that could
    /// not be read: they keep what they held.
    Reset {
        source: Option<SourceId>,
        instances: Vec<(ServiceName, Instance)>,
        domains: Vec<(DomainKey, DomainRecord)>,
        keep: Vec<Kept>,
    },
    /// The data of `source` now reflects etcd's history up to `revision` of cluster
    /// `cluster_id` (not a change of the data; applied in the same batch as the changes it
    /// covers, so a snapshot never says more than it holds).
    Position {
        source: SourceId,
        /// The source's settings when its data was read ([`Positions::revisions`]).
        fingerprint: u32,
        revision: i64,
        cluster_id: u64,
    },
    /// Forget every source's position (the history they refer to is gone).
    ForgetPositions,
}

/// Where the data of each source stands in etcd's history: what a restart needs to resume
/// the watch instead of listing again. Set by [`Update::Position`]; written to the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// The etcd cluster the revisions belong to (0: none yet).
    pub cluster_id: u64,
    /// Per source, the fingerprint of its settings when its data was read (see
    /// [`crate::registry::Source::fingerprint`]) and the last revision whose changes the mirror
    /// holds.
    pub revisions: Vec<(SourceId, u32, i64)>,
}

impl Positions {
    /// The revision source `id`'s data reflects, if it was read with the settings whose
    /// fingerprint is `fingerprint`.
    pub fn of(&self, id: SourceId, fingerprint: u32) -> Option<i64> {
        self.revisions
            .iter()
            .find(|(s, f, _)| *s == id && *f == fingerprint)
            .map(|(_, _, r)| *r)
    }
}

/// A key a [`Update::Reset`] leaves as it was (its listed value could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The instance (or, for a key holding several, the instances) at this key.
    Instance(ServiceName, InstanceId),
    /// A SkyDNS entry.
    Domain(DomainKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keeps_pairs_sorted_and_unique_and_encodes_as_a_map() {
        let long = "v".repeat(300); // a length over 127 takes a two-byte varint
        let meta: Meta = [("b", "2"), ("a", "1"), ("c", long.as_str()), ("a", "3")]
            .into_iter()
            .collect();
        let pairs: Vec<(&str, &str)> = meta.iter().collect();
        assert_eq!(pairs, [("a", "3"), ("b", "2"), ("c", long.as_str())]);
        assert_eq!(
            (meta.get("b"), meta.get("x"), meta.len()),
            (Some("2"), None, 3)
        );
        // The snapshot file and registry values see the same map a LiteMap gave.
        let lite: litemap::LiteMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lite_bytes = postcard::to_stdvec(&lite).unwrap();
        assert_eq!(postcard::to_stdvec(&meta).unwrap(), lite_bytes);
        let back: Meta = postcard::from_bytes(&lite_bytes).unwrap();
        assert_eq!(back, meta);
        assert_eq!(
            serde_json::to_string(&Meta::default()).unwrap(),
            "{}",
            "empty metadata is still an object"
        );
        let mut more = meta.clone();
        more.extend([("b", "9")]);
        assert_eq!(more.get("b"), Some("9"));
        more.clear();
        assert!(more.is_empty() && more.iter().next().is_none());
    }

    #[test]
    fn labels_are_validated_and_lowercased() {
        assert_eq!(ServiceName::new("Web-1").unwrap().as_str(), "web-1");
        for bad in ["", "-a", "a-", "a_b", "a.b", "ü", &"a".repeat(64)] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(InstanceId::new(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn one_domain_label_rule() {
        for ok in ["a", "Web-1", "_tcp", "-a", "a-", "a_b", &"a".repeat(63)] {
            let l = DomainLabel::new(ok).unwrap();
            assert_eq!(l.as_str(), ok.to_ascii_lowercase());
        }
        for bad in ["", "a.b", "a b", "ü", "a/b", &"a".repeat(64)] {
            assert!(DomainLabel::new(bad).is_err(), "{bad:?} accepted");
            assert!(!DomainLabel::is_valid(bad), "{bad:?} valid");
        }
        // Service names and instance ids: the host-name labels among them.
        for (s, host) in [
            ("web-1", true),
            ("_tcp", false),
            ("-a", false),
            ("a-", false),
            ("a_b", false),
        ] {
            assert_eq!(DomainLabel::new(s).unwrap().is_host_label(), host, "{s}");
            assert_eq!(ServiceName::new(s).is_ok(), host, "{s}");
        }
        let err = DomainLabel::new("a.b").unwrap_err().to_string();
        assert!(err.contains("\"a.b\" is not a DNS label"), "{err}");
    }

    #[test]
    fn localities_are_checked_and_lowercased() {
        assert_eq!(&*locality("EU-West-1a").unwrap(), "eu-west-1a");
        assert_eq!(&*locality("rack_7.dc2").unwrap(), "rack_7.dc2");
        for bad in ["", "a b", "ü", "a/b", &"a".repeat(64)] {
            assert!(locality(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn empty_ports_and_meta_are_json_objects() {
        let i = Instance::for_test("a", "10.0.0.1", None);
        let json = serde_json::to_string(&i).unwrap();
        assert!(
            json.contains(r#""ports":{}"#) && json.contains(r#""meta":{}"#),
            "{json}"
        );
        let back: Instance = serde_json::from_str(&json).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn addresses() {
        let ip = |s: &str| Address::Ip(s.parse().unwrap());
        assert_eq!(Address::parse("10.0.0.5").unwrap(), ip("10.0.0.5"));
        assert_eq!(Address::parse("fd00::1").unwrap(), ip("fd00::1"));
        assert_eq!(Address::parse("[fd00::1]").unwrap(), ip("fd00::1"));
        assert_eq!(
            Address::parse("Web-1.Example.COM.").unwrap(),
            Address::Host("web-1.example.com".into())
        );
        // Host labels follow the DomainLabel rule: `_` and a `-` at either end are allowed.
        assert_eq!(
            Address::parse("_srv.-a-.example").unwrap(),
            Address::Host("_srv.-a-.example".into())
        );
        for bad in [
            "",
            "10.0.0.256",
            "a..b",
            "a b",
            "[fd00::1",
            "1.2.3",
            "a.b-ü",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&Address::Host("db.example".into())).unwrap();
        assert_eq!(json, "\"db.example\"");
        assert_eq!(
            serde_json::from_str::<Address>("\"10.0.0.1\"").unwrap(),
            ip("10.0.0.1")
        );
    }
}
