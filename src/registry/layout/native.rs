//! ruddr's own layout, the registry contract: keys `<prefix><service>/<instance-id>`, values
//! JSON objects. See the README section "Registry contract".

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::{scalar, EntryError};
use crate::cache::{Address, Health, Instance, InstanceId, ServiceName, SourceId};

/// The JSON value as written by registrants. Unknown fields are ignored so that newer
/// registrants can add fields without breaking older servers.
#[derive(Debug, Deserialize)]
struct RawValue {
    address: String,
    port: Option<u16>,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default)]
    tags: Vec<String>,
    weight: Option<u16>,
    priority: Option<u16>,
    health: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, serde_json::Value>,
    locality: Option<String>,
}

/// The key of `service`'s instance `id` under `prefix`: `<prefix><service>/<instance-id>`;
/// [`key`] reads it back.
pub fn encode_key(prefix: &str, service: &ServiceName, id: &InstanceId) -> String {
    format!("{prefix}{service}/{id}")
}

/// Splits `<prefix><service>/<instance-id>` into its parts.
pub fn key(prefix: &str, key: &[u8]) -> Result<(ServiceName, InstanceId), EntryError> {
    let key = std::str::from_utf8(key).map_err(|_| EntryError::KeyShape)?;
    let rest = key.strip_prefix(prefix).ok_or(EntryError::KeyShape)?;
    let (service, id) = rest.split_once('/').ok_or(EntryError::KeyShape)?;
    if id.contains('/') {
        return Err(EntryError::KeyShape);
    }
    let service = ServiceName::new(service).map_err(EntryError::Service)?;
    let id = InstanceId::new(id).map_err(EntryError::Id)?;
    Ok((service, id))
}

/// Parses and validates one value for the instance `id`.
pub fn value(id: InstanceId, value: &[u8]) -> Result<Instance, EntryError> {
    let text = std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8)?;
    let raw: RawValue = serde_json::from_str(text)?;
    let address: IpAddr = raw
        .address
        .parse()
        .map_err(|_| EntryError::Address(raw.address.clone()))?;
    let health = match raw
        .health
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("passing") => Health::Passing,
        Some("warning") => Health::Warning,
        Some("critical") => Health::Critical,
        Some(_) => return Err(EntryError::Health(raw.health.unwrap_or_default())),
    };
    if raw.port == Some(0) || raw.ports.values().any(|p| *p == 0) {
        return Err(EntryError::PortZero);
    }
    let mut ports = BTreeMap::new();
    for (name, port) in raw.ports {
        let label = ServiceName::new(&name).map_err(|_| EntryError::PortName(name.clone()))?;
        ports.insert(label.as_str().to_string(), port);
    }
    let mut meta = BTreeMap::new();
    for (k, v) in raw.meta {
        let Some(v) = scalar(&v) else {
            return Err(EntryError::Meta(k));
        };
        meta.insert(k, v);
    }
    let locality = raw
        .locality
        .as_deref()
        .map(crate::cache::locality)
        .transpose()?;
    Ok(Instance {
        id,
        address: Address::Ip(address),
        port: raw.port,
        ports: ports.into_iter().collect(),
        tags: raw.tags,
        weight: raw.weight.unwrap_or(1),
        priority: raw.priority.unwrap_or(0),
        health,
        meta: meta.into_iter().collect(),
        source: SourceId::NATIVE,
        locality,
    })
}

/// Writes `instance` as a registry value; [`value`] reads it back.
pub fn encode_value(instance: &Instance) -> String {
    // Objects even when empty (litemap alone writes an empty map as `[]`).
    let ports: BTreeMap<&String, &u16> = instance.ports.iter().collect();
    let meta: BTreeMap<&str, &str> = instance.meta.iter().collect();
    let mut value = serde_json::json!({
        "address": instance.address.to_string(),
        "port": instance.port,
        "ports": ports,
        "tags": instance.tags,
        "weight": instance.weight,
        "priority": instance.priority,
        "health": instance.health.as_str(),
        "meta": meta,
    });
    if let Some(l) = &instance.locality {
        value["locality"] = serde_json::Value::from(&**l);
    }
    value.to_string()
}

/// Parses one key/value pair into the service it belongs to and the instance.
pub fn entry(
    prefix: &str,
    etcd_key: &[u8],
    etcd_value: &[u8],
) -> Result<(ServiceName, Instance), EntryError> {
    let (service, id) = key(prefix, etcd_key)?;
    Ok((service, value(id, etcd_value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ruddr/services/";

    #[test]
    fn full_value_from_the_contract() {
        let v = br#"{"address":"10.0.0.5","port":8080,"ports":{"http":8080,"grpc":9090},"tags":["v2"],"weight":10,"priority":0,"health":"passing","meta":{"az":"a"}}"#;
        let (svc, i) = entry(P, b"/ruddr/services/Web/web-1", v).unwrap();
        assert_eq!(svc.as_str(), "web");
        assert_eq!(i.id.as_str(), "web-1");
        assert_eq!(i.address, Address::Ip("10.0.0.5".parse().unwrap()));
        assert_eq!(i.port, Some(8080));
        assert_eq!(i.ports[&"grpc".to_string()], 9090);
        assert_eq!(i.tags, ["v2"]);
        assert_eq!((i.weight, i.priority, i.health), (10, 0, Health::Passing));
        assert_eq!(i.meta.get("az").unwrap(), "a");
        assert_eq!(i.locality, None, "no locality unless given");
    }

    #[test]
    fn defaults_and_ipv6() {
        let (_, i) = entry(P, b"/ruddr/services/db/x", br#"{"address":"fd00::1"}"#).unwrap();
        assert!(i.address.ip().unwrap().is_ipv6());
        assert_eq!(
            (i.port, i.weight, i.priority, i.health),
            (None, 1, 0, Health::Passing)
        );
        let (_, i) = entry(
            P,
            b"/ruddr/services/db/x",
            br#"{"address":"fd00::1","health":"Warning","meta":{"n":3,"b":true}}"#,
        )
        .unwrap();
        assert_eq!(i.health, Health::Warning);
        assert_eq!(i.meta.get("n").unwrap(), "3");
    }

    #[test]
    fn encode_then_parse_is_the_identity() {
        let v = br#"{"address":"fd00::5","port":8080,"ports":{"grpc":9090},"tags":["v2"],"weight":10,"priority":3,"health":"warning","meta":{"az":"a"},"locality":"EU-1a"}"#;
        let i = value(InstanceId::new("a").unwrap(), v).unwrap();
        assert_eq!(i.locality.as_deref(), Some("eu-1a"));
        let back = value(i.id.clone(), encode_value(&i).as_bytes()).unwrap();
        assert_eq!(back, i);
        // Empty ports and metadata are still objects.
        let bare = value(i.id.clone(), br#"{"address":"10.0.0.1"}"#).unwrap();
        let encoded = encode_value(&bare);
        assert!(encoded.contains(r#""meta":{}"#), "{encoded}");
        assert_eq!(value(i.id.clone(), encoded.as_bytes()).unwrap(), bare);
    }

    #[test]
    fn encode_key_then_key_is_the_identity() {
        let (svc, id) = (
            ServiceName::new("Web").unwrap(),
            InstanceId::new("web-1").unwrap(),
        );
        let k = encode_key(P, &svc, &id);
        assert_eq!(k, "/ruddr/services/web/web-1");
        assert_eq!(key(P, k.as_bytes()).unwrap(), (svc, id));
    }

    #[test]
    fn bad_keys() {
        for k in [
            &b"/other/web/a"[..],
            b"/ruddr/services/web",
            b"/ruddr/services/web/a/b",
            b"/ruddr/services/we_b/a",
            b"/ruddr/services/web/",
            b"/ruddr/services/\xff/a",
        ] {
            assert!(
                key(P, k).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(k)
            );
        }
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a valid registration"),
            (br#"{"port":80}"#, "missing field `address`"),
            (
                br#"{"address":"web.example"}"#,
                "not an IPv4 or IPv6 literal",
            ),
            (
                br#"{"address":"10.0.0.1","port":70000}"#,
                "not a valid registration",
            ),
            (br#"{"address":"10.0.0.1","port":0}"#, "port 0"),
            (
                br#"{"address":"10.0.0.1","health":"dead"}"#,
                "health \"dead\"",
            ),
            (br#"{"address":"10.0.0.1","ports":{"h_t":1}}"#, "port name"),
            (br#"{"address":"10.0.0.1","meta":{"x":[1]}}"#, "meta \"x\""),
            (
                br#"{"address":"10.0.0.1","locality":"eu 1"}"#,
                "locality \"eu 1\"",
            ),
            (
                br#"{"address":"10.0.0.1","weight":-1}"#,
                "not a valid registration",
            ),
            (b"\xff\xfe", "UTF-8"),
            (b"", "not a valid registration"),
        ];
        for (v, want) in cases {
            let err = value(InstanceId::new("a").unwrap(), v)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(v)
            );
        }
    }
}
