//! Kratos `contrib/registry/etcd`: keys `<namespace>/<name>/<id>`, values ServiceInstance JSON
//! whose endpoints (`grpc://host:port`, `http://...`) become the instance's named ports.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{host_port, instance, labels, to_label, EntryError};
use crate::cache::{Instance, InstanceId, ServiceName};

/// The service and instance of `rest` (the key below the namespace). Names may hold a `/`
/// (`shop/order`): the id is the last segment.
pub fn key(rest: &str) -> Result<(ServiceName, InstanceId), EntryError> {
    let (svc, id) = rest.rsplit_once('/').ok_or(EntryError::KeyShape)?;
    labels(svc, id, None)
}

/// A ServiceInstance: the first endpoint gives address and main port, every endpoint a named
/// port after its scheme; `metadata.weight` the weight, `version` and metadata go to meta.
pub fn value(id: InstanceId, text: &str) -> Result<Instance, EntryError> {
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
    inst.locality = super::meta_locality(&inst.meta);
    Ok(inst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Address;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn keys_are_name_then_id() {
        let (svc, i) = key("helloworld/a1").unwrap();
        assert_eq!((svc.as_str(), i.as_str()), ("helloworld", "a1"));
        let (svc, _) = key("shop/order/a3").unwrap();
        assert_eq!(svc.as_str(), "shop-order", "a name with '/'");
        assert!(matches!(key("helloworld"), Err(EntryError::KeyShape)));
        assert!(matches!(key("helloworld/"), Err(EntryError::Id(_))));
        assert!(matches!(key("__/a1"), Err(EntryError::Service(_))));
    }

    #[test]
    fn endpoints_become_named_ports() {
        let v = r#"{"id":"a1","name":"helloworld","version":"v1","metadata":{"weight":"10"},"endpoints":["grpc://10.0.0.5:9000?isSecure=false","http://10.0.0.5:8000"]}"#;
        let i = value(id("a1"), v).unwrap();
        assert_eq!(i.ports[&"grpc".to_string()], 9000);
        assert_eq!(i.ports[&"http".to_string()], 8000);
        assert_eq!((i.port, i.weight), (Some(9000), 10));
        assert_eq!(i.meta.get("version").unwrap(), "v1");
        assert_eq!(i.locality, None);
        let zoned =
            r#"{"id":"a1","metadata":{"locality":"eu-1a"},"endpoints":["grpc://10.0.0.5:9000"]}"#;
        assert_eq!(
            value(id("a1"), zoned).unwrap().locality.as_deref(),
            Some("eu-1a")
        );
        let bad =
            r#"{"id":"a1","metadata":{"locality":"not one"},"endpoints":["grpc://10.0.0.5:9000"]}"#;
        assert_eq!(
            value(id("a1"), bad).unwrap().locality,
            None,
            "free-form metadata: ignored"
        );
        let null_meta = r#"{"id":"a2","name":"x","version":"","metadata":null,"endpoints":["grpc://[fd00::2]:9000"]}"#;
        let i = value(id("a2"), null_meta).unwrap();
        assert_eq!(i.address, Address::Ip("fd00::2".parse().unwrap()));
        let tls = value(
            id("a"),
            r#"{"endpoints":["grpc://10.0.0.5:9000?isSecure=true"]}"#,
        )
        .unwrap();
        assert_eq!(tls.ports[&"grpcs".to_string()], 9000);
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases = [
            (r#"{"endpoints":[]}"#, "no endpoints"),
            (r#"{"endpoints":["10.0.0.5:9000"]}"#, "neither host:port"),
            (r#"{"endpoints":["grpc://10.0.0.5:0"]}"#, "port 0"),
            (r#"{"endpoints":"x"}"#, "not a valid registration"),
        ];
        for (v, want) in cases {
            let err = value(id("a"), v).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
