//! Framework registry layouts (groundwork for reading them beside the native contract): keys
//! and values as gRPC-Go's etcd naming, go-zero, Kratos and go-micro write them, parsed into
//! our [`Instance`]. Not wired into `ruddr serve` yet; SkyDNS and hostname addresses are still
//! to come.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::parse::EntryError;
use crate::cache::{Health, Instance, InstanceId, ServiceName};

/// A registry layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// etcd's `client/v3/naming/endpoints`: `<target>/<anything>` = `{"Op":0,"Addr":..,"Metadata":..}`.
    EtcdNaming,
    /// go-zero `core/discov`: `<base-key>/<lease-id>` = `host:port`.
    GoZero,
    /// Kratos `contrib/registry/etcd`: `/microservices/<name>/<id>` = ServiceInstance JSON.
    Kratos,
    /// go-micro `registry/etcd`: `/micro/registry/<name>/<node-id>` = Service JSON, one node.
    GoMicro,
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

/// `host:port`, `[v6]:port`, a bare IPv4/IPv6 address (port `None`).
fn host_port(s: &str) -> Result<(IpAddr, Option<u16>), EntryError> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| EntryError::Address(s.to_string()))
}

fn instance(id: InstanceId, address: IpAddr, port: Option<u16>) -> Instance {
    Instance {
        id,
        address,
        port,
        ports: BTreeMap::new(),
        tags: Vec::new(),
        weight: 1,
        priority: 0,
        health: Health::Passing,
        meta: BTreeMap::new(),
    }
}

impl Format {
    /// The service and instance a key names. `service` overrides the name for layouts whose keys
    /// carry no usable one (etcd naming targets, go-zero base keys).
    pub fn key(
        self,
        prefix: &str,
        service: Option<&ServiceName>,
        key: &[u8],
    ) -> Result<(ServiceName, InstanceId), EntryError> {
        let key = std::str::from_utf8(key).map_err(|_| EntryError::KeyShape)?;
        let rest = key
            .strip_prefix(prefix)
            .ok_or(EntryError::KeyShape)?
            .trim_start_matches('/');
        let (svc, id) = match self {
            // The prefix is the target (or base key): the rest is the instance.
            Format::EtcdNaming | Format::GoZero => {
                let last = prefix
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                (last.to_string(), rest.to_string())
            }
            Format::Kratos | Format::GoMicro => {
                let (svc, id) = rest.split_once('/').ok_or(EntryError::KeyShape)?;
                (svc.to_string(), id.to_string())
            }
        };
        let service = match service {
            Some(s) => s.clone(),
            None => to_label(&svc)
                .and_then(|l| ServiceName::new(&l).ok())
                .ok_or_else(|| EntryError::Service(crate::cache::InvalidLabel(svc.clone())))?,
        };
        let id = to_label(&id)
            .and_then(|l| InstanceId::new(&l).ok())
            .ok_or(EntryError::Id(crate::cache::InvalidLabel(id)))?;
        Ok((service, id))
    }

    /// Parses a value; `Ok(None)` for values a framework writes as markers (empty).
    pub fn value(self, id: InstanceId, value: &[u8]) -> Result<Option<Instance>, EntryError> {
        if value.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let text = std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8)?;
        match self {
            Format::GoZero => {
                let (ip, port) = host_port(text)?;
                Ok(Some(instance(id, ip, port)))
            }
            Format::EtcdNaming => {
                #[derive(Deserialize)]
                struct Endpoint {
                    #[serde(rename = "Addr")]
                    addr: String,
                    #[serde(rename = "Op", default)]
                    op: u8,
                }
                let e: Endpoint = serde_json::from_str(text)?;
                if e.op != 0 {
                    // Op 1 is a delete update written by the old naming API.
                    return Ok(None);
                }
                let (ip, port) = host_port(&e.addr)?;
                Ok(Some(instance(id, ip, port)))
            }
            Format::Kratos => {
                #[derive(Deserialize)]
                struct ServiceInstance {
                    #[serde(default)]
                    endpoints: Vec<String>,
                    #[serde(default)]
                    metadata: BTreeMap<String, String>,
                    #[serde(default)]
                    version: String,
                }
                let s: ServiceInstance = serde_json::from_str(text)?;
                let mut inst: Option<Instance> = None;
                for url in &s.endpoints {
                    let (scheme, rest) = url
                        .split_once("://")
                        .ok_or_else(|| EntryError::Address(url.clone()))?;
                    let hostport = rest.split(['/', '?']).next().unwrap_or("");
                    let (ip, port) = host_port(hostport)?;
                    let i = inst.get_or_insert_with(|| instance(id.clone(), ip, port));
                    if let (Some(label), Some(p)) = (to_label(scheme), port) {
                        i.ports.entry(label).or_insert(p);
                    }
                }
                let mut inst = inst.ok_or_else(|| EntryError::Address("no endpoints".into()))?;
                if let Some(w) = s.metadata.get("weight").and_then(|w| w.parse().ok()) {
                    inst.weight = w;
                }
                if !s.version.is_empty() {
                    inst.meta.insert("version".into(), s.version);
                }
                inst.meta.extend(s.metadata);
                Ok(Some(inst))
            }
            Format::GoMicro => {
                #[derive(Deserialize)]
                struct Node {
                    address: String,
                    #[serde(default)]
                    metadata: BTreeMap<String, String>,
                }
                #[derive(Deserialize)]
                struct Service {
                    #[serde(default)]
                    version: String,
                    #[serde(default)]
                    nodes: Vec<Node>,
                }
                let s: Service = serde_json::from_str(text)?;
                let node = s
                    .nodes
                    .into_iter()
                    .next()
                    .ok_or_else(|| EntryError::Address("no nodes".into()))?;
                let (ip, port) = host_port(&node.address)?;
                let mut inst = instance(id, ip, port);
                if !s.version.is_empty() {
                    inst.meta.insert("version".into(), s.version);
                }
                inst.meta.extend(node.metadata);
                Ok(Some(inst))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: Format, prefix: &str, key: &str, value: &str) -> Option<(ServiceName, Instance)> {
        let (svc, id) = f.key(prefix, None, key.as_bytes()).unwrap();
        f.value(id, value.as_bytes()).unwrap().map(|i| (svc, i))
    }

    #[test]
    fn go_zero_lease_keys_and_host_port() {
        let (svc, i) = parse(
            Format::GoZero,
            "/user.rpc",
            "/user.rpc/7587873429418012345",
            "10.0.0.5:8080",
        )
        .unwrap();
        assert_eq!(svc.as_str(), "user-rpc");
        assert_eq!(i.id.as_str(), "7587873429418012345");
        assert_eq!(
            (i.address.to_string(), i.port),
            ("10.0.0.5".into(), Some(8080))
        );
        assert!(
            parse(Format::GoZero, "/user.rpc", "/user.rpc/1", "").is_none(),
            "markers ignored"
        );
    }

    #[test]
    fn etcd_naming_endpoints() {
        let (svc, i) = parse(
            Format::EtcdNaming,
            "foo/bar/my-service",
            "foo/bar/my-service/10.0.0.5:50051",
            r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#,
        )
        .unwrap();
        assert_eq!(svc.as_str(), "my-service");
        assert_eq!(i.id.as_str(), "10-0-0-5-50051");
        assert_eq!(i.port, Some(50051));
        let (_, v6) = parse(
            Format::EtcdNaming,
            "t",
            "t/e",
            r#"{"Addr":"[fd00::1]:9000"}"#,
        )
        .unwrap();
        assert!(v6.address.is_ipv6());
        let (_, bare) = parse(Format::EtcdNaming, "t", "t/e", r#"{"Addr":"10.0.0.6"}"#).unwrap();
        assert_eq!(bare.port, None);
    }

    #[test]
    fn kratos_endpoints_become_named_ports() {
        let v = r#"{"id":"a1","name":"helloworld","version":"v1","metadata":{"weight":"10"},"endpoints":["grpc://10.0.0.5:9000","http://10.0.0.5:8000"]}"#;
        let (svc, i) = parse(
            Format::Kratos,
            "/microservices",
            "/microservices/helloworld/a1",
            v,
        )
        .unwrap();
        assert_eq!((svc.as_str(), i.id.as_str()), ("helloworld", "a1"));
        assert_eq!(i.ports["grpc"], 9000);
        assert_eq!(i.ports["http"], 8000);
        assert_eq!((i.port, i.weight), (Some(9000), 10));
        assert_eq!(i.meta["version"], "v1");
    }

    #[test]
    fn go_micro_single_node() {
        let v = r#"{"name":"greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"greeter-8b1c","address":"10.0.0.7:43121","metadata":{"protocol":"grpc"}}]}"#;
        let (svc, i) = parse(
            Format::GoMicro,
            "/micro/registry/",
            "/micro/registry/greeter/greeter-8b1c",
            v,
        )
        .unwrap();
        assert_eq!((svc.as_str(), i.id.as_str()), ("greeter", "greeter-8b1c"));
        assert_eq!(i.port, Some(43121));
        assert_eq!(i.meta["protocol"], "grpc");
    }

    #[test]
    fn bad_values_name_the_reason() {
        let id = InstanceId::new("x").unwrap();
        assert!(Format::GoZero
            .value(id.clone(), b"not-an-address")
            .unwrap_err()
            .to_string()
            .contains("not-an-address"));
        assert!(Format::Kratos
            .value(id.clone(), br#"{"endpoints":[]}"#)
            .is_err());
        assert!(Format::GoMicro.value(id, br#"{"nodes":[]}"#).is_err());
    }
}
