//! go-micro `registry/etcd`: keys `<prefix><name>/<node-id>` (v3 puts a domain first:
//! `<domain>/<name>/<node-id>`), values the Service JSON with its `nodes`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{host_port, instance, labels, EntryError};
use crate::cache::{Instance, InstanceId, ServiceName};

/// The service and instance of `rest` (the key below the prefix).
pub fn key(rest: &str) -> Result<(ServiceName, InstanceId), EntryError> {
    match rest.split('/').collect::<Vec<_>>()[..] {
        [svc, id] | [_, svc, id] => labels(svc, id, None),
        _ => Err(EntryError::KeyShape),
    }
}

/// A Service: its first node is the instance; `version` and the node's metadata go to meta.
pub fn value(id: InstanceId, text: &str) -> Result<Instance, EntryError> {
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
    Ok(inst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn keys_with_and_without_a_domain() {
        let (svc, i) = key("go.micro.srv.greeter/greeter-8b1c").unwrap();
        assert_eq!(
            (svc.as_str(), i.as_str()),
            ("go-micro-srv-greeter", "greeter-8b1c")
        );
        let (svc, i) = key("micro/greeter/n1").unwrap();
        assert_eq!((svc.as_str(), i.as_str()), ("greeter", "n1"));
        for bad in ["greeter", "a/b/c/d"] {
            assert!(matches!(key(bad), Err(EntryError::KeyShape)), "{bad}");
        }
        assert!(matches!(key("greeter/--"), Err(EntryError::Id(_))));
    }

    #[test]
    fn single_node() {
        let v = r#"{"name":"go.micro.srv.greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"greeter-8b1c","address":"10.0.0.7:43121","metadata":{"protocol":"grpc"}}]}"#;
        let i = value(id("greeter-8b1c"), v).unwrap();
        assert_eq!(i.id.as_str(), "greeter-8b1c");
        assert_eq!(i.port, Some(43121));
        assert_eq!(i.meta[&"protocol".to_string()], "grpc");
        assert_eq!(i.meta[&"version".to_string()], "latest");
        // v1 nodes: port beside the host.
        let v1 = r#"{"name":"greeter","nodes":[{"id":"n1","address":"10.0.0.8","port":8080}]}"#;
        assert_eq!(value(id("n1"), v1).unwrap().port, Some(8080));
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases = [
            (r#"{"nodes":[]}"#, "no nodes"),
            (r#"{"nodes":null}"#, "no nodes"),
            (r#"{}"#, "no nodes"),
            (r#"{"nodes":[{"id":"a"}]}"#, "missing field `address`"),
            (r#"{"nodes":[{"address":"10.0.0.1:0"}]}"#, "port 0"),
        ];
        for (v, want) in cases {
            let err = value(id("a"), v).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
