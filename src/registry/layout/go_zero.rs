//! go-zero `core/discov`: one service per base key; keys `<key>/<lease-id>`, values
//! `host:port`.

use super::{host_port, instance, one_service_key, EntryError};
use crate::cache::{Instance, InstanceId, ServiceName};

/// The service and instance of `rest` (the key below `prefix`, the base key).
pub fn key(
    prefix: &str,
    rest: &str,
    service: Option<&ServiceName>,
) -> Result<(ServiceName, InstanceId), EntryError> {
    one_service_key(prefix, rest, service)
}

/// `host:port`, a bare address or a host name.
pub fn value(id: InstanceId, text: &str) -> Result<Instance, EntryError> {
    let (address, port) = host_port(text)?;
    Ok(instance(id, address, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Address;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    #[test]
    fn keys_are_lease_ids_under_the_base_key() {
        let (svc, i) = key("user.rpc/", "7587873429418012345", None).unwrap();
        assert_eq!(
            (svc.as_str(), i.as_str()),
            ("user-rpc", "7587873429418012345")
        );
        let named = ServiceName::new("users").unwrap();
        let (svc, _) = key("a/user.rpc/", "1", Some(&named)).unwrap();
        assert_eq!(svc.as_str(), "users");
        assert!(matches!(key("a/", "..", None), Err(EntryError::Id(_))));
        assert!(matches!(key("../", "1", None), Err(EntryError::Service(_))));
    }

    #[test]
    fn values_are_host_port() {
        let i = value(id("1"), "10.0.0.5:8080").unwrap();
        assert_eq!(
            (i.address, i.port),
            (Address::Ip("10.0.0.5".parse().unwrap()), Some(8080))
        );
        let h = value(id("1"), "db-1.internal:5432").unwrap();
        assert_eq!(h.address, Address::Host("db-1.internal".into()));
        let err = value(id("1"), "not an address").unwrap_err().to_string();
        assert!(err.contains("not an address"), "{err}");
        assert!(matches!(
            value(id("1"), "10.0.0.1:0"),
            Err(EntryError::PortZero)
        ));
    }
}
