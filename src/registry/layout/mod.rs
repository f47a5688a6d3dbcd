//! Registry layouts: how each kind of writer spells an entry in etcd. One module per layout,
//! each with its `key()` (what an etcd key names) and `value()` (the instance or entry it
//! holds); [`crate::registry::Source`] picks the module with one `match` on [`Layout`].
//! See the README "Registry contract" (native) and "Framework layouts" (the others).

pub mod etcd_naming;
pub mod go_micro;
pub mod go_zero;
pub mod kratos;
pub mod native;
pub mod skydns;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::cache::{
    Address, DomainKey, DomainRecord, Health, Instance, InstanceId, InvalidLabel, ServiceName,
    SourceId,
};

pub use crate::config::Format;

/// A layout with the settings it needs to read its keys and to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Native,
    /// `service`: the name for every key (default: the prefix's last segment, as a label).
    EtcdNaming {
        service: Option<ServiceName>,
    },
    /// `service` as for [`Layout::EtcdNaming`].
    GoZero {
        service: Option<ServiceName>,
    },
    Kratos,
    GoMicro,
    /// `zones`: the domains answered from the entries (normalized, fully qualified); `ttl`: the
    /// TTL of entries without their own.
    Skydns {
        zones: Vec<String>,
        ttl: u32,
    },
}

impl Layout {
    /// The layout of `format` with its settings from a `[[sources]]` entry.
    pub fn new(format: Format, service: Option<ServiceName>, zones: Vec<String>, ttl: u32) -> Self {
        match format {
            Format::Native => Layout::Native,
            Format::EtcdNaming => Layout::EtcdNaming { service },
            Format::GoZero => Layout::GoZero { service },
            Format::Kratos => Layout::Kratos,
            Format::GoMicro => Layout::GoMicro,
            Format::Skydns => Layout::Skydns { zones, ttl },
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Layout::Native => Format::Native,
            Layout::EtcdNaming { .. } => Format::EtcdNaming,
            Layout::GoZero { .. } => Format::GoZero,
            Layout::Kratos => Format::Kratos,
            Layout::GoMicro => Format::GoMicro,
            Layout::Skydns { .. } => Format::Skydns,
        }
    }
}

/// The format's name (what logs show as `format`).
impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.format().fmt(f)
    }
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Instance(ServiceName, InstanceId),
    Domain(DomainKey),
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Instance(ServiceName, Instance),
    /// Every instance of a key that holds several (go-micro); `key` is the key's own id.
    Instances {
        service: ServiceName,
        key: InstanceId,
        instances: Vec<Instance>,
    },
    Domain(DomainKey, DomainRecord),
}

/// Why a key/value pair under a prefix was skipped.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("key is not <prefix><service>/<instance-id>")]
    KeyShape,
    #[error("bad service name: {0}")]
    Service(InvalidLabel),
    #[error("bad instance id: {0}")]
    Id(InvalidLabel),
    #[error("value is not valid UTF-8")]
    NotUtf8,
    #[error("value is not a valid registration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("address {0:?} is not an IPv4 or IPv6 literal")]
    Address(String),
    #[error("health {0:?} is not one of passing, warning, critical")]
    Health(String),
    #[error("port name {0:?} is not a DNS label")]
    PortName(String),
    #[error("port 0 is not a usable port")]
    PortZero,
    #[error("meta {0:?} must be a string, number or boolean")]
    Meta(String),
    #[error("address {0:?} is neither host:port nor an IP address or host name")]
    HostPort(String),
    #[error("no {0}")]
    Missing(&'static str),
    #[error("{0} {1} is out of range")]
    Field(&'static str, i64),
    #[error("node id {0:?} appears twice (as an instance label)")]
    DuplicateNode(String),
    #[error("{0}")]
    Locality(#[from] crate::cache::InvalidLocality),
}

/// The locality a framework's metadata gives (its `locality` key), when it is a valid one:
/// framework metadata is free-form, so anything else is left as metadata only.
pub fn meta_locality(meta: &crate::cache::Meta) -> Option<Box<str>> {
    meta.get("locality")
        .and_then(|l| crate::cache::locality(l).ok())
}

/// Turns any string into a DNS label: lower case, other characters as `-`, at most 63 bytes.
pub fn to_label(s: &str) -> Option<String> {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(63);
    let out = out.trim_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// A framework's service name and instance id, mapped to labels with [`to_label`]; `service`
/// (when set) replaces the name from the key.
fn labels(
    svc: &str,
    id: &str,
    service: Option<&ServiceName>,
) -> Result<(ServiceName, InstanceId), EntryError> {
    let service = match service {
        Some(s) => s.clone(),
        None => to_label(svc)
            .and_then(|l| ServiceName::new(&l).ok())
            .ok_or_else(|| EntryError::Service(InvalidLabel(svc.to_string())))?,
    };
    Ok((service, instance_id(id)?))
}

/// A framework's instance id, mapped to a label with [`to_label`].
fn instance_id(id: &str) -> Result<InstanceId, EntryError> {
    to_label(id)
        .and_then(|l| InstanceId::new(&l).ok())
        .ok_or_else(|| EntryError::Id(InvalidLabel(id.to_string())))
}

/// The key of a layout with one service per prefix (etcd-naming, go-zero): `rest` is the
/// instance id; the service is `service` or the target's (`prefix`'s) last segment.
fn one_service_key(
    prefix: &str,
    rest: &str,
    service: Option<&ServiceName>,
) -> Result<(ServiceName, InstanceId), EntryError> {
    let target = prefix.trim_end_matches('/');
    labels(target.rsplit('/').next().unwrap_or(target), rest, service)
}

/// `host:port`, `[v6]:port`, a bare IPv4/IPv6 address or host name (port `None`).
fn host_port(s: &str) -> Result<(Address, Option<u16>), EntryError> {
    let s = s.trim();
    let bad = || EntryError::HostPort(s.to_string());
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(EntryError::PortZero);
        }
        return Ok((Address::Ip(sa.ip()), Some(sa.port())));
    }
    // `host:port` (a bare IPv6 address has more than one ':' and is handled below).
    if let Some((host, port)) = s.rsplit_once(':').filter(|(h, _)| !h.contains(':')) {
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        return Ok((Address::parse(host).map_err(|_| bad())?, Some(port)));
    }
    Ok((Address::parse(s).map_err(|_| bad())?, None))
}

/// A framework instance with the defaults of the native contract (the source is set by the
/// caller).
fn instance(id: InstanceId, address: Address, port: Option<u16>) -> Instance {
    Instance {
        id,
        address,
        port,
        ports: Default::default(),
        tags: Vec::new(),
        weight: 1,
        priority: 0,
        health: Health::Passing,
        meta: Default::default(),
        source: SourceId::NATIVE,
        locality: None,
    }
}

/// A string, number or boolean as text (metadata values, served as TXT); `None` for the rest.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Scalar metadata fields as strings (for TXT); nested values are left out.
fn flat_meta(v: &serde_json::Value) -> BTreeMap<String, String> {
    let Some(map) = v.as_object() else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_framework_names() {
        assert_eq!(
            to_label("go.micro.srv.Greeter").unwrap(),
            "go-micro-srv-greeter"
        );
        assert_eq!(to_label("--a__b--").unwrap(), "a--b");
        assert_eq!(to_label(&"x".repeat(70)).unwrap().len(), 63);
        assert!(to_label("..").is_none());
        assert!(to_label("").is_none());
    }

    #[test]
    fn host_ports() {
        let ip = |s: &str| Address::Ip(s.parse().unwrap());
        assert_eq!(
            host_port("10.0.0.1:80").unwrap(),
            (ip("10.0.0.1"), Some(80))
        );
        assert_eq!(
            host_port("[fd00::1]:80").unwrap(),
            (ip("fd00::1"), Some(80))
        );
        assert_eq!(host_port("fd00::1").unwrap(), (ip("fd00::1"), None));
        assert_eq!(
            host_port("db.internal:5432").unwrap(),
            (Address::Host("db.internal".into()), Some(5432))
        );
        assert!(matches!(host_port("10.0.0.1:0"), Err(EntryError::PortZero)));
        assert!(matches!(host_port("db:0"), Err(EntryError::HostPort(_))));
        assert!(matches!(host_port("a b:1"), Err(EntryError::HostPort(_))));
    }
}
