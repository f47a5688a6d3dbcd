//! go-micro `registry/etcd`: keys `<prefix><name>/<node-id>` (v3 puts a domain first:
//! `<domain>/<name>/<node-id>`), values the Service JSON with its `nodes`. One key may hold
//! several nodes: each is an instance, and the key owns them all (see
//! [`crate::cache::Update::Replace`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{host_port, instance, instance_id, labels, EntryError};
use crate::cache::{Instance, InstanceId, ServiceName};

/// The service and instance of `rest` (the key below the prefix).
pub fn key(rest: &str) -> Result<(ServiceName, InstanceId), EntryError> {
    match rest.split('/').collect::<Vec<_>>()[..] {
        [svc, id] | [_, svc, id] => labels(svc, id, None),
        _ => Err(EntryError::KeyShape),
    }
}

/// A Service: each node is an instance, `version` and the node's metadata go to its meta. A
/// single node takes the key's id `id`; several nodes take their own `id`s as labels.
pub fn value(id: InstanceId, text: &str) -> Result<Vec<Instance>, EntryError> {
    #[derive(Deserialize)]
    struct Node {
        #[serde(default)]
        id: Option<String>,
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
    let nodes = s.nodes.unwrap_or_default();
    if nodes.is_empty() {
        return Err(EntryError::Missing("nodes"));
    }
    let several = nodes.len() > 1;
    let mut out: Vec<Instance> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let id = if several {
            let node_id = node.id.as_deref().ok_or(EntryError::Missing("node id"))?;
            let label = instance_id(node_id)?;
            if out.iter().any(|i| i.id == label) {
                return Err(EntryError::DuplicateNode(node_id.to_string()));
            }
            label
        } else {
            id.clone()
        };
        let (address, port) = host_port(&node.address)?;
        let port = port.or(node.port.filter(|p| *p != 0));
        let mut inst = instance(id, address, port);
        if !s.version.is_empty() {
            inst.meta.insert("version".into(), s.version.clone());
        }
        inst.meta.extend(node.metadata.unwrap_or_default());
        inst.locality = super::meta_locality(&inst.meta);
        out.push(inst);
    }
    Ok(out)
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
        let [i] = &value(id("greeter-8b1c"), v).unwrap()[..] else {
            panic!("one node, one instance")
        };
        assert_eq!(i.id.as_str(), "greeter-8b1c");
        assert_eq!(i.port, Some(43121));
        assert_eq!(i.meta.get("protocol").unwrap(), "grpc");
        assert_eq!(i.meta.get("version").unwrap(), "latest");
        // v1 nodes: port beside the host.
        let v1 = r#"{"name":"greeter","nodes":[{"id":"n1","address":"10.0.0.8","port":8080}]}"#;
        assert_eq!(value(id("n1"), v1).unwrap()[0].port, Some(8080));
        // One node keeps the key's id, whatever its own.
        let other = r#"{"nodes":[{"id":"x.y","address":"10.0.0.8:1"}]}"#;
        assert_eq!(value(id("n1"), other).unwrap()[0].id.as_str(), "n1");
    }

    #[test]
    fn several_nodes_are_several_instances_named_by_node_id() {
        let v = r#"{"version":"1.2","nodes":[
            {"id":"greeter.A","address":"10.0.0.1:80","metadata":{"az":"a"}},
            {"id":"greeter.B","address":"10.0.0.2:80","metadata":{"locality":"EU-1b"}},
            {"id":"greeter.C","address":"10.0.0.3","port":81}]}"#;
        let got = value(id("greeter-a"), v).unwrap();
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["greeter-a", "greeter-b", "greeter-c"]);
        assert_eq!(got[2].port, Some(81));
        assert_eq!(got[0].meta.get("az").unwrap(), "a");
        assert_eq!(got[0].locality, None, "only a `locality` key gives one");
        assert_eq!(got[1].locality.as_deref(), Some("eu-1b"));
        assert!(got.iter().all(|i| i.meta.get("version").unwrap() == "1.2"));
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases = [
            (r#"{"nodes":[]}"#, "no nodes"),
            (r#"{"nodes":null}"#, "no nodes"),
            (r#"{}"#, "no nodes"),
            (r#"{"nodes":[{"id":"a"}]}"#, "missing field `address`"),
            (r#"{"nodes":[{"address":"10.0.0.1:0"}]}"#, "port 0"),
            (
                r#"{"nodes":[{"id":"a","address":"10.0.0.1"},{"address":"10.0.0.2"}]}"#,
                "no node id",
            ),
            (
                r#"{"nodes":[{"id":"a","address":"10.0.0.1"},{"id":"..","address":"10.0.0.2"}]}"#,
                "bad instance id",
            ),
            (
                r#"{"nodes":[{"id":"a.b","address":"10.0.0.1"},{"id":"a-b","address":"10.0.0.2"}]}"#,
                "node id \"a-b\" appears twice",
            ),
        ];
        for (v, want) in cases {
            let err = value(id("a"), v).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
