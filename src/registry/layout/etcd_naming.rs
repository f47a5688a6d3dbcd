//! etcd's `client/v3/naming/endpoints` (used with gRPC-Go): one service per target; keys
//! `<target>/<anything>`, values `{"Addr":..,"Op":..,"Metadata":..}`.

use serde::Deserialize;

use super::{flat_meta, host_port, instance, one_service_key, EntryError};
use crate::cache::{Instance, InstanceId, ServiceName};

/// The service and instance of `rest` (the key below `prefix`, the target).
pub fn key(
    prefix: &str,
    rest: &str,
    service: Option<&ServiceName>,
) -> Result<(ServiceName, InstanceId), EntryError> {
    one_service_key(prefix, rest, service)
}

/// An endpoint; `None` for an `Op` 1 (delete) record of the old naming API.
pub fn value(id: InstanceId, text: &str) -> Result<Option<Instance>, EntryError> {
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
        return Ok(None);
    }
    let (address, port) = host_port(&e.addr)?;
    let mut i = instance(id, address, port);
    i.meta = flat_meta(&e.metadata).into_iter().collect();
    i.locality = super::meta_locality(&i.meta);
    Ok(Some(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Address;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn ip(s: &str) -> Address {
        Address::Ip(s.parse().unwrap())
    }

    #[test]
    fn keys_name_the_target_and_an_endpoint() {
        let (svc, i) = key("foo/bar/my-service/", "10.0.0.5:50051", None).unwrap();
        assert_eq!((svc.as_str(), i.as_str()), ("my-service", "10-0-0-5-50051"));
        let api = ServiceName::new("api").unwrap();
        let (svc, _) = key("t/", "x", Some(&api)).unwrap();
        assert_eq!(svc.as_str(), "api");
        assert!(matches!(key("t/", "::", None), Err(EntryError::Id(_))));
    }

    #[test]
    fn endpoints() {
        let i = value(
            id("e"),
            r#"{"Addr":"10.0.0.5:50051","Metadata":{"zone":"a","n":1,"x":[1]}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((i.address.clone(), i.port), (ip("10.0.0.5"), Some(50051)));
        assert_eq!(i.meta.len(), 2, "scalar metadata kept");
        let v6 = value(id("e"), r#"{"Op":0,"Addr":"[fd00::1]:9000"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(v6.address, ip("fd00::1"));
        assert!(
            value(id("e"), r#"{"Op":1,"Addr":"10.0.0.5:1"}"#)
                .unwrap()
                .is_none(),
            "an Op 1 (delete) update is no instance"
        );
        let bare = value(id("e"), r#"{"Addr":"fd00::6"}"#).unwrap().unwrap();
        assert_eq!((bare.address, bare.port), (ip("fd00::6"), None));
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases = [
            (r#"{"Metadata":{}}"#, "missing field `Addr`"),
            (r#"{"Addr":"10.0.0.5:0"}"#, "port 0"),
            (r#"{"Addr":"no such:host"}"#, "neither host:port"),
            ("[]", "not a valid registration"),
        ];
        for (v, want) in cases {
            let err = value(id("e"), v).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
