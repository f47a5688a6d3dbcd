//! SkyDNS, as the CoreDNS etcd plugin (and external-dns) reads it: keys spell a domain name
//! backwards (`/skydns/local/skydns/east/rails/1` for `1.rails.east.skydns.local.`), values
//! `{"host":..,"port":..,"priority":..,"weight":..,"text":..,"ttl":..,"targetstrip":..}`.

use serde::Deserialize;

use super::EntryError;
use crate::cache::{Address, DomainRecord};

/// The entry's path: `rest` (the key below the prefix) lower-cased. DNS names are
/// case-insensitive; a trailing `/` is an empty label, not the same key.
pub fn key(rest: &str) -> Result<String, EntryError> {
    let path = rest.to_ascii_lowercase();
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(EntryError::KeyShape);
    }
    Ok(path)
}

/// A SkyDNS value, with the field names of CoreDNS's `msg.Service`.
pub fn value(text: &str) -> Result<DomainRecord, EntryError> {
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

    #[test]
    fn keys_are_reversed_paths() {
        assert_eq!(
            key("local/skydns/East/rails/1").unwrap(),
            "local/skydns/east/rails/1"
        );
        for bad in ["", "local//x", "local/x/", "/local"] {
            assert!(matches!(key(bad), Err(EntryError::KeyShape)), "{bad:?}");
        }
    }

    #[test]
    fn values() {
        let r = value(
            r#"{"host":"10.0.0.1","port":8080,"priority":10,"weight":20,"ttl":60,"text":"hi"}"#,
        )
        .unwrap();
        assert_eq!(r.host, Some(Address::Ip("10.0.0.1".parse().unwrap())));
        assert_eq!(
            (r.port, r.priority, r.weight, r.ttl),
            (Some(8080), 10, 20, Some(60))
        );
        assert_eq!(r.text.as_deref(), Some("hi"));
        let r = value(r#"{"host":"db.example.com","port":-1}"#).unwrap();
        assert_eq!(
            (r.host, r.port, r.ttl),
            (Some(Address::Host("db.example.com".into())), None, None)
        );
        let t = value(r#"{"text":"only text","targetstrip":1}"#).unwrap();
        assert_eq!((t.host, t.target_strip), (None, 1));
    }

    #[test]
    fn bad_values_name_the_reason() {
        let cases = [
            (r#"{"port":80}"#, "no host or text"),
            (
                r#"{"host":"10.0.0.1","port":70000}"#,
                "port 70000 is out of range",
            ),
            (
                r#"{"host":"10.0.0.1","weight":-2}"#,
                "weight -2 is out of range",
            ),
            (
                r#"{"host":"10.0.0.1","targetstrip":200}"#,
                "targetstrip 200",
            ),
            (r#"{"host":"a b"}"#, "neither host:port"),
            (r#"{"host":1}"#, "not a valid registration"),
            ("host=10.0.0.1", "not a valid registration"),
        ];
        for (v, want) in cases {
            let err = value(v).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
