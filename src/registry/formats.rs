//! Registry sources: the native contract and the etcd layouts that frameworks already write
//! (etcd's own naming API used with gRPC-Go, go-zero, Kratos, go-micro, SkyDNS). Each turns
//! one etcd key/value into an [`Update`] of the mirror. See the README "Framework layouts".

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::parse::{parse_key, parse_value, scalar, EntryError};
use crate::cache::{
    Address, DomainKey, DomainRecord, Health, Instance, InstanceId, InvalidLabel, ServiceName,
    SourceId, Update,
};

/// A registry layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// ruddr's own contract: `<prefix><service>/<id>` = JSON (README "Registry contract").
    Native,
    /// etcd's `client/v3/naming/endpoints`: `<target>/<anything>` = `{"Addr":..,"Metadata":..}`.
    EtcdNaming,
    /// go-zero `core/discov`: `<key>/<lease-id>` = `host:port`.
    GoZero,
    /// Kratos `contrib/registry/etcd`: `/microservices/<name>/<id>` = ServiceInstance JSON.
    Kratos,
    /// go-micro `registry/etcd`: `/micro/registry/<name>/<node-id>` = Service JSON, one node.
    GoMicro,
    /// The CoreDNS etcd plugin (and SkyDNS, external-dns): `/skydns/<reversed name>` =
    /// `{"host":..,"port":..,"priority":..,"weight":..,"text":..,"ttl":..}`.
    Skydns,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::EtcdNaming => "etcd-naming",
            Format::GoZero => "go-zero",
            Format::Kratos => "kratos",
            Format::GoMicro => "go-micro",
            Format::Skydns => "skydns",
        }
    }

    /// Layouts whose keys carry no service name: one source per target (or base key).
    pub fn one_service_per_prefix(self) -> bool {
        matches!(self, Format::EtcdNaming | Format::GoZero)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watched prefix and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub id: SourceId,
    pub format: Format,
    /// What is watched; ends with `/` for every format.
    pub prefix: String,
    /// The service name for [`Format::one_service_per_prefix`] layouts.
    pub service: Option<ServiceName>,
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
    Domain(DomainKey, DomainRecord),
}

impl Source {
    /// The native contract under `prefix`.
    pub fn native(prefix: &str) -> Self {
        Self {
            id: SourceId::NATIVE,
            format: Format::Native,
            prefix: prefix.to_string(),
            service: None,
        }
    }

    /// A framework layout under `prefix` (a `/` is appended if missing: a target `a/svc` must
    /// not also match `a/svc2`). Its id is stable across restarts: it derives from format and
    /// prefix.
    pub fn framework(format: Format, prefix: &str, service: Option<ServiceName>) -> Self {
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let sum = crc32fast::hash(format!("{format} {prefix}").as_bytes());
        Self {
            id: SourceId(sum.max(1)),
            format,
            prefix,
            service,
        }
    }

    /// The service and instance (or the SkyDNS entry) a key names.
    pub fn key(&self, key: &[u8]) -> Result<Key, EntryError> {
        if self.format == Format::Native {
            let (svc, id) = parse_key(&self.prefix, key)?;
            return Ok(Key::Instance(svc, id));
        }
        let key = std::str::from_utf8(key).map_err(|_| EntryError::KeyShape)?;
        let rest = key.strip_prefix(&self.prefix).ok_or(EntryError::KeyShape)?;
        if self.format == Format::Skydns {
            // DNS names are case-insensitive; a trailing `/` is an empty label, not the same key.
            let path = rest.to_ascii_lowercase();
            if path.is_empty() || path.split('/').any(str::is_empty) {
                return Err(EntryError::KeyShape);
            }
            return Ok(Key::Domain((self.id, path)));
        }
        let (svc, id) = match self.format {
            _ if self.format.one_service_per_prefix() => {
                let target = self.prefix.trim_end_matches('/');
                (target.rsplit('/').next().unwrap_or(target), rest)
            }
            // go-micro v3 puts a domain between prefix and name: `<domain>/<name>/<node>`.
            Format::GoMicro => match rest.split('/').collect::<Vec<_>>()[..] {
                [svc, id] | [_, svc, id] => (svc, id),
                _ => return Err(EntryError::KeyShape),
            },
            // Kratos names may hold a `/` (`shop/order`): the id is the last segment.
            _ => rest.rsplit_once('/').ok_or(EntryError::KeyShape)?,
        };
        let service = match &self.service {
            Some(s) => s.clone(),
            None => to_label(svc)
                .and_then(|l| ServiceName::new(&l).ok())
                .ok_or_else(|| EntryError::Service(InvalidLabel(svc.to_string())))?,
        };
        let id = to_label(id)
            .and_then(|l| InstanceId::new(&l).ok())
            .ok_or_else(|| EntryError::Id(InvalidLabel(id.to_string())))?;
        Ok(Key::Instance(service, id))
    }

    /// Parses one key/value pair. `Ok(None)` for the empty values frameworks write as
    /// directory markers: not an entry, and not worth a warning.
    pub fn entry(&self, key: &[u8], value: &[u8]) -> Result<Option<Entry>, EntryError> {
        if self.format != Format::Native && value.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let key = self.key(key)?;
        Ok(match key {
            Key::Instance(service, id) => {
                let instance = if self.format == Format::Native {
                    parse_value(id, value)?
                } else {
                    let text = std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8)?;
                    let Some(mut i) = self.instance(id, text)? else {
                        return Ok(None);
                    };
                    i.source = self.id;
                    i
                };
                Some(Entry::Instance(service, instance))
            }
            Key::Domain(key) => {
                let text = std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8)?;
                Some(Entry::Domain(key, skydns_record(text)?))
            }
        })
    }

    /// The mirror update for a written key. An empty value (a marker, or written over an
    /// entry) removes whatever the key held; `None` when that is nothing.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Option<Update>, EntryError> {
        Ok(match self.entry(key, value)? {
            Some(Entry::Instance(service, instance)) => Some(Update::Put { service, instance }),
            Some(Entry::Domain(key, record)) => Some(Update::DomainPut { key, record }),
            None => self.delete(key),
        })
    }

    /// The mirror update for a deleted key; `None` for keys that never parsed (they were
    /// never in the mirror).
    pub fn delete(&self, key: &[u8]) -> Option<Update> {
        Some(match self.key(key).ok()? {
            Key::Instance(service, id) => Update::Delete {
                service,
                id,
                source: self.id,
            },
            Key::Domain(key) => Update::DomainDelete { key },
        })
    }

    fn instance(&self, id: InstanceId, text: &str) -> Result<Option<Instance>, EntryError> {
        match self.format {
            Format::Native | Format::Skydns => Err(EntryError::KeyShape),
            Format::GoZero => {
                let (address, port) = host_port(text)?;
                Ok(Some(instance(id, address, port)))
            }
            Format::EtcdNaming => {
                #[derive(Deserialize)]
                struct Endpoint {
                    #[serde(rename = "Addr")]
                    addr: String,
                    #[serde(rename = "Op", default)]
                    op: u8,
                    #[serde(rename = "Metadata", default)]
                    metadata: serde_json::Value,
                }
                let e: Endpoint = serde_json::from_str(text)?;
                if e.op != 0 {
                    // Op 1 (Delete) was written by the old naming API: no instance here.
                    return Ok(None);
                }
                let (address, port) = host_port(&e.addr)?;
                let mut i = instance(id, address, port);
                i.meta = flat_meta(&e.metadata).into_iter().collect();
                Ok(Some(i))
            }
            Format::Kratos => {
                #[derive(Deserialize)]
                struct ServiceInstance {
                    #[serde(default)]
                    endpoints: Vec<String>,
                    #[serde(default)]
                    metadata: Option<BTreeMap<String, String>>,
                    #[serde(default)]
                    version: String,
                }
                let s: ServiceInstance = serde_json::from_str(text)?;
                let mut inst: Option<Instance> = None;
                for url in &s.endpoints {
                    let (scheme, rest) = url
                        .split_once("://")
                        .ok_or_else(|| EntryError::HostPort(url.clone()))?;
                    let hostport = rest.split(['/', '?']).next().unwrap_or("");
                    let (address, port) = host_port(hostport)?;
                    let i = inst.get_or_insert_with(|| instance(id.clone(), address, port));
                    // Older Kratos marks TLS endpoints with a query instead of the scheme.
                    let scheme = if rest.contains("isSecure=true") && !scheme.ends_with('s') {
                        format!("{scheme}s")
                    } else {
                        scheme.to_string()
                    };
                    if let (Some(label), Some(p)) = (to_label(&scheme), port) {
                        i.ports.entry(label).or_insert(p);
                    }
                }
                let mut inst = inst.ok_or(EntryError::Missing("endpoints"))?;
                let metadata = s.metadata.unwrap_or_default();
                if let Some(w) = metadata.get("weight").and_then(|w| w.parse().ok()) {
                    inst.weight = w;
                }
                if !s.version.is_empty() {
                    inst.meta.insert("version".into(), s.version);
                }
                inst.meta.extend(metadata);
                Ok(Some(inst))
            }
            Format::GoMicro => {
                #[derive(Deserialize)]
                struct Node {
                    address: String,
                    // go-micro v1 kept the port apart from a bare host.
                    #[serde(default)]
                    port: Option<u16>,
                    #[serde(default)]
                    metadata: Option<BTreeMap<String, String>>,
                }
                #[derive(Deserialize)]
                struct Service {
                    #[serde(default)]
                    version: String,
                    #[serde(default)]
                    nodes: Option<Vec<Node>>,
                }
                let s: Service = serde_json::from_str(text)?;
                let node = s
                    .nodes
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .ok_or(EntryError::Missing("nodes"))?;
                let (address, port) = host_port(&node.address)?;
                let port = port.or(node.port.filter(|p| *p != 0));
                let mut inst = instance(id, address, port);
                if !s.version.is_empty() {
                    inst.meta.insert("version".into(), s.version);
                }
                inst.meta.extend(node.metadata.unwrap_or_default());
                Ok(Some(inst))
            }
        }
    }
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

/// A SkyDNS value, with the field names of CoreDNS's `msg.Service`.
fn skydns_record(text: &str) -> Result<DomainRecord, EntryError> {
    #[derive(Deserialize)]
    struct Service {
        #[serde(default)]
        host: String,
        #[serde(default)]
        port: i64,
        #[serde(default)]
        priority: i64,
        #[serde(default)]
        weight: i64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        ttl: u32,
        #[serde(default)]
        targetstrip: i64,
    }
    let s: Service = serde_json::from_str(text)?;
    let host = if s.host.is_empty() {
        None
    } else {
        Some(Address::parse(&s.host).map_err(|_| EntryError::HostPort(s.host.clone()))?)
    };
    if host.is_none() && s.text.is_empty() {
        return Err(EntryError::Missing("host or text"));
    }
    let int = |field: &'static str, v: i64, max: i64| {
        if (0..=max).contains(&v) {
            Ok(v)
        } else {
            Err(EntryError::Field(field, v))
        }
    };
    // CoreDNS uses port -1 for "no port".
    let port = if s.port < 0 {
        None
    } else {
        Some(int("port", s.port, 65535)? as u16)
    };
    Ok(DomainRecord {
        host,
        port,
        priority: int("priority", s.priority, 65535)? as u16,
        weight: int("weight", s.weight, 65535)? as u16,
        text: (!s.text.is_empty()).then_some(s.text),
        ttl: (s.ttl > 0).then_some(s.ttl.min(i32::MAX as u32)),
        target_strip: int("targetstrip", s.targetstrip, 127)? as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: Format, prefix: &str, key: &str, value: &str) -> Option<(ServiceName, Instance)> {
        let src = Source::framework(f, prefix, None);
        match src.entry(key.as_bytes(), value.as_bytes()).unwrap() {
            Some(Entry::Instance(svc, i)) => {
                assert_eq!(i.source, src.id);
                Some((svc, i))
            }
            Some(Entry::Domain(..)) => panic!("domain from {f}"),
            None => None,
        }
    }

    fn ip(s: &str) -> Address {
        Address::Ip(s.parse().unwrap())
    }

    #[test]
    fn go_zero_lease_keys_and_host_port() {
        let (svc, i) = parse(
            Format::GoZero,
            "user.rpc",
            "user.rpc/7587873429418012345",
            "10.0.0.5:8080",
        )
        .unwrap();
        assert_eq!(svc.as_str(), "user-rpc");
        assert_eq!(i.id.as_str(), "7587873429418012345");
        assert_eq!((i.address, i.port), (ip("10.0.0.5"), Some(8080)));
        assert!(
            parse(Format::GoZero, "user.rpc", "user.rpc/1", "").is_none(),
            "markers ignored"
        );
        // A target must not match a longer one.
        let src = Source::framework(Format::GoZero, "user.rpc", None);
        assert!(src.key(b"user.rpc2/1").is_err());
        let (_, h) = parse(Format::GoZero, "a", "a/1", "db-1.internal:5432").unwrap();
        assert_eq!(h.address, Address::Host("db-1.internal".into()));
    }

    #[test]
    fn etcd_naming_endpoints() {
        let (svc, i) = parse(
            Format::EtcdNaming,
            "foo/bar/my-service",
            "foo/bar/my-service/10.0.0.5:50051",
            r#"{"Addr":"10.0.0.5:50051","Metadata":{"zone":"a","n":1,"x":[1]}}"#,
        )
        .unwrap();
        assert_eq!(svc.as_str(), "my-service");
        assert_eq!(i.id.as_str(), "10-0-0-5-50051");
        assert_eq!(i.port, Some(50051));
        assert_eq!(i.meta.len(), 2, "scalar metadata kept");
        let (_, v6) = parse(
            Format::EtcdNaming,
            "t",
            "t/e",
            r#"{"Op":0,"Addr":"[fd00::1]:9000"}"#,
        )
        .unwrap();
        assert_eq!(v6.address, ip("fd00::1"));
        assert!(
            parse(
                Format::EtcdNaming,
                "t",
                "t/e",
                r#"{"Op":1,"Addr":"10.0.0.5:1"}"#
            )
            .is_none(),
            "an Op 1 (delete) update is no instance"
        );
        let (_, bare) = parse(Format::EtcdNaming, "t", "t/e", r#"{"Addr":"fd00::6"}"#).unwrap();
        assert_eq!((bare.address, bare.port), (ip("fd00::6"), None));
        let named = Source::framework(
            Format::EtcdNaming,
            "t",
            Some(ServiceName::new("api").unwrap()),
        );
        assert!(matches!(
            named.key(b"t/x").unwrap(),
            Key::Instance(s, _) if s.as_str() == "api"
        ));
    }

    #[test]
    fn kratos_endpoints_become_named_ports() {
        let v = r#"{"id":"a1","name":"helloworld","version":"v1","metadata":{"weight":"10"},"endpoints":["grpc://10.0.0.5:9000?isSecure=false","http://10.0.0.5:8000"]}"#;
        let (svc, i) = parse(
            Format::Kratos,
            "/microservices",
            "/microservices/helloworld/a1",
            v,
        )
        .unwrap();
        assert_eq!((svc.as_str(), i.id.as_str()), ("helloworld", "a1"));
        assert_eq!(i.ports[&"grpc".to_string()], 9000);
        assert_eq!(i.ports[&"http".to_string()], 8000);
        assert_eq!((i.port, i.weight), (Some(9000), 10));
        assert_eq!(i.meta[&"version".to_string()], "v1");
        let null_meta = r#"{"id":"a2","name":"x","version":"","metadata":null,"endpoints":["grpc://[fd00::2]:9000"]}"#;
        let (_, i) = parse(
            Format::Kratos,
            "/microservices",
            "/microservices/x/a2",
            null_meta,
        )
        .unwrap();
        assert_eq!(i.address, ip("fd00::2"));
        let (svc, _) = parse(
            Format::Kratos,
            "/microservices",
            "/microservices/shop/order/a3",
            null_meta,
        )
        .unwrap();
        assert_eq!(svc.as_str(), "shop-order", "a name with '/'");
    }

    #[test]
    fn go_micro_single_node() {
        let v = r#"{"name":"go.micro.srv.greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"greeter-8b1c","address":"10.0.0.7:43121","metadata":{"protocol":"grpc"}}]}"#;
        let (svc, i) = parse(
            Format::GoMicro,
            "/micro/registry/",
            "/micro/registry/go.micro.srv.greeter/greeter-8b1c",
            v,
        )
        .unwrap();
        assert_eq!(
            (svc.as_str(), i.id.as_str()),
            ("go-micro-srv-greeter", "greeter-8b1c")
        );
        assert_eq!(i.port, Some(43121));
        assert_eq!(i.meta[&"protocol".to_string()], "grpc");
        // v3 layout: a domain segment before the name; v1 nodes: port beside the host.
        let v1 = r#"{"name":"greeter","nodes":[{"id":"n1","address":"10.0.0.8","port":8080}]}"#;
        let (svc, i) = parse(
            Format::GoMicro,
            "/micro/registry",
            "/micro/registry/micro/greeter/n1",
            v1,
        )
        .unwrap();
        assert_eq!((svc.as_str(), i.port), ("greeter", Some(8080)));
    }

    #[test]
    fn skydns_keys_are_reversed_paths() {
        let src = Source::framework(Format::Skydns, "/skydns", None);
        let e = src
            .entry(
                b"/skydns/local/skydns/East/rails/1",
                br#"{"host":"10.0.0.1","port":8080,"priority":10,"weight":20,"ttl":60,"text":"hi"}"#,
            )
            .unwrap()
            .unwrap();
        let Entry::Domain((id, path), r) = e else {
            panic!()
        };
        assert_eq!((id, path.as_str()), (src.id, "local/skydns/east/rails/1"));
        assert_eq!(r.host, Some(ip("10.0.0.1")));
        assert_eq!(
            (r.port, r.priority, r.weight, r.ttl),
            (Some(8080), 10, 20, Some(60))
        );
        assert_eq!(r.text.as_deref(), Some("hi"));
        let Entry::Domain(_, r) = src
            .entry(
                b"/skydns/local/x",
                br#"{"host":"db.example.com","port":-1}"#,
            )
            .unwrap()
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (r.host, r.port, r.ttl),
            (Some(Address::Host("db.example.com".into())), None, None)
        );
        assert!(src.entry(b"/skydns/local/x", b"").unwrap().is_none());
        for bad in [
            &br#"{"port":80}"#[..],
            br#"{"host":"10.0.0.1","port":70000}"#,
            br#"{"host":"a b"}"#,
            b"[]",
        ] {
            assert!(
                src.entry(b"/skydns/local/x", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(src.key(b"/skydns/local//x").is_err());
        assert!(
            src.key(b"/skydns/local/x/").is_err(),
            "not the same key as local/x"
        );
    }

    #[test]
    fn empty_values_delete_and_bad_values_name_the_reason() {
        let src = Source::framework(Format::GoZero, "svc", None);
        assert!(matches!(
            src.put(b"svc/1", b"").unwrap(),
            Some(Update::Delete { .. })
        ));
        // A marker at a key that names no instance is no error either.
        let kratos = Source::framework(Format::Kratos, "/microservices/", None);
        assert!(kratos
            .put(b"/microservices/helloworld", b"")
            .unwrap()
            .is_none());
        let err = src
            .put(b"svc/1", b"not an address")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an address"), "{err}");
        assert!(src.put(b"svc/1", b"10.0.0.1:0").is_err(), "port 0");
        assert!(kratos
            .put(b"/microservices/a/1", br#"{"endpoints":[]}"#)
            .is_err());
        assert!(
            kratos
                .put(b"/microservices/a", br#"{"endpoints":[]}"#)
                .is_err(),
            "key shape"
        );
        let micro = Source::framework(Format::GoMicro, "/micro/registry/", None);
        assert!(micro
            .put(b"/micro/registry/a/1", br#"{"nodes":[]}"#)
            .is_err());
        assert!(micro
            .put(b"/micro/registry/a/1", br#"{"nodes":null}"#)
            .is_err());
        // The native contract keeps its own rules: an empty value is an error there.
        assert!(Source::native("/ruddr/services/")
            .put(b"/ruddr/services/a/b", b"")
            .is_err());
    }

    #[test]
    fn source_ids_are_stable_and_distinct() {
        let a = Source::framework(Format::Kratos, "/microservices", None);
        let b = Source::framework(Format::Kratos, "/microservices/", None);
        let c = Source::framework(Format::GoMicro, "/microservices/", None);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, SourceId::NATIVE);
    }
}
