//! A watched prefix and the layout its keys follow: turns one etcd key/value into a mirror
//! [`Update`], dispatching on the layout once per call.

use super::layout::{
    etcd_naming, go_micro, go_zero, kratos, native, skydns, Entry, EntryError, Key, Layout,
};
use crate::cache::{Instance, ServiceName, SourceId, Update};
use crate::config::Config;

/// One watched prefix and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub id: SourceId,
    /// What is watched; ends with `/` for every framework layout.
    pub prefix: String,
    pub layout: Layout,
}

impl Source {
    /// The native contract under `prefix`.
    pub fn native(prefix: &str) -> Self {
        Self {
            id: SourceId::NATIVE,
            prefix: prefix.to_string(),
            layout: Layout::Native,
        }
    }

    /// A framework layout under `prefix` (see [`Source::framework_prefix`]). Its id is stable
    /// across restarts: it derives from the format and the prefix.
    pub fn framework(layout: Layout, prefix: &str) -> Self {
        let prefix = Self::framework_prefix(prefix);
        let sum = crc32fast::hash(format!("{} {prefix}", layout.format()).as_bytes());
        Self {
            id: SourceId(sum.max(1)),
            prefix,
            layout,
        }
    }

    /// A checksum of what decides this source's data (its prefix and layout settings): a
    /// position recorded under other settings is not resumed from.
    pub fn fingerprint(&self) -> u32 {
        crc32fast::hash(format!("{}\n{:?}", self.prefix, self.layout).as_bytes())
    }

    /// What a framework source watches for the configured `prefix` (see
    /// [`crate::config::framework_prefix`]).
    pub fn framework_prefix(prefix: &str) -> String {
        crate::config::framework_prefix(prefix)
    }

    /// Everything to watch: the native prefix first, then the framework sources.
    pub fn all(cfg: &Config) -> Vec<Source> {
        let mut out = vec![Source::native(&cfg.etcd.prefix)];
        for s in &cfg.sources {
            let service = s.service.as_deref().and_then(|n| ServiceName::new(n).ok());
            let layout = Layout::new(s.format, service, s.zones.clone(), s.ttl);
            out.push(Source::framework(layout, &s.prefix));
        }
        out
    }

    /// The key below the prefix.
    fn rest<'k>(&self, key: &'k [u8]) -> Result<&'k str, EntryError> {
        let key = std::str::from_utf8(key).map_err(|_| EntryError::KeyShape)?;
        key.strip_prefix(self.prefix.as_str())
            .ok_or(EntryError::KeyShape)
    }

    /// The service and instance (or the SkyDNS entry) a key names.
    pub fn key(&self, key: &[u8]) -> Result<Key, EntryError> {
        let (service, id) = match &self.layout {
            Layout::Native => native::key(&self.prefix, key)?,
            Layout::EtcdNaming { service } => {
                etcd_naming::key(&self.prefix, self.rest(key)?, service.as_ref())?
            }
            Layout::GoZero { service } => {
                go_zero::key(&self.prefix, self.rest(key)?, service.as_ref())?
            }
            Layout::Kratos => kratos::key(self.rest(key)?)?,
            Layout::GoMicro => go_micro::key(self.rest(key)?)?,
            Layout::Skydns { .. } => {
                return Ok(Key::Domain((self.id, skydns::key(self.rest(key)?)?)))
            }
        };
        Ok(Key::Instance(service, id))
    }

    /// Parses one key/value pair. `Ok(None)` for the empty values frameworks write as
    /// directory markers (not an entry, and not worth a warning) and for values that say
    /// "no instance here".
    pub fn entry(&self, key: &[u8], value: &[u8]) -> Result<Option<Entry>, EntryError> {
        if self.layout != Layout::Native && value.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let (service, id) = match self.key(key)? {
            Key::Instance(service, id) => (service, id),
            Key::Domain(key) => {
                let text = std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8)?;
                return Ok(Some(Entry::Domain(key, skydns::value(text)?)));
            }
        };
        let text = || std::str::from_utf8(value).map_err(|_| EntryError::NotUtf8);
        let one = |instance: Instance| Entry::Instance(service.clone(), instance);
        let mut entry = match &self.layout {
            Layout::Native => one(native::value(id, value)?),
            Layout::EtcdNaming { .. } => match etcd_naming::value(id, text()?)? {
                Some(instance) => one(instance),
                None => return Ok(None),
            },
            Layout::GoZero { .. } => one(go_zero::value(id, text()?)?),
            Layout::Kratos => one(kratos::value(id, text()?)?),
            Layout::GoMicro => Entry::Instances {
                instances: go_micro::value(id.clone(), text()?)?,
                service: service.clone(),
                key: id,
            },
            // Its keys name domains: handled above.
            Layout::Skydns { .. } => return Err(EntryError::KeyShape),
        };
        match &mut entry {
            Entry::Instance(_, i) => i.source = self.id,
            Entry::Instances { instances, .. } => {
                instances.iter_mut().for_each(|i| i.source = self.id)
            }
            Entry::Domain(..) => {}
        }
        Ok(Some(entry))
    }

    /// The mirror update for a written key. An empty value (a marker, or written over an
    /// entry) removes whatever the key held; `None` when that is nothing.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Option<Update>, EntryError> {
        Ok(match self.entry(key, value)? {
            Some(Entry::Instance(service, instance)) => Some(Update::Put { service, instance }),
            Some(Entry::Instances {
                service,
                key,
                instances,
            }) => Some(Update::Replace {
                service,
                source: self.id,
                key,
                instances,
            }),
            Some(Entry::Domain(key, record)) => Some(Update::DomainPut { key, record }),
            None => self.delete(key),
        })
    }

    /// The mirror update for a deleted key; `None` for keys that never parsed (they were
    /// never in the mirror).
    pub fn delete(&self, key: &[u8]) -> Option<Update> {
        Some(match self.key(key).ok()? {
            Key::Instance(service, key) if self.layout == Layout::GoMicro => Update::Replace {
                service,
                source: self.id,
                key,
                instances: Vec::new(),
            },
            Key::Instance(service, id) => Update::Delete {
                service,
                id,
                source: self.id,
            },
            Key::Domain(key) => Update::DomainDelete { key },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ServiceName;

    fn framework(layout: Layout, prefix: &str) -> Source {
        Source::framework(layout, prefix)
    }

    #[test]
    fn keys_outside_the_prefix_are_refused() {
        let src = framework(Layout::GoZero { service: None }, "user.rpc");
        assert_eq!(src.prefix, "user.rpc/");
        // A target must not match a longer one.
        assert!(matches!(src.key(b"user.rpc2/1"), Err(EntryError::KeyShape)));
        assert!(matches!(
            src.key(b"user.rpc/\xff"),
            Err(EntryError::KeyShape)
        ));
        let native = Source::native("/ruddr/services/");
        assert!(matches!(
            native.key(b"/other/a/b"),
            Err(EntryError::KeyShape)
        ));
    }

    #[test]
    fn every_layout_reads_through_its_source() {
        let micro = framework(Layout::GoMicro, "/micro/registry/");
        let v = r#"{"nodes":[{"id":"n1","address":"10.0.0.8:80"}]}"#;
        let Some(Entry::Instances {
            service,
            key,
            instances,
        }) = micro
            .entry(b"/micro/registry/greeter/n1", v.as_bytes())
            .unwrap()
        else {
            panic!()
        };
        let i = &instances[0];
        assert_eq!(
            (service.as_str(), key.as_str(), i.id.as_str(), i.source),
            ("greeter", "n1", "n1", micro.id)
        );
        let kratos = framework(Layout::Kratos, "/microservices");
        let Some(Entry::Instance(_, i)) = kratos
            .entry(
                b"/microservices/a/b",
                br#"{"endpoints":["grpc://10.0.0.1:1"]}"#,
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(i.source, kratos.id);
        let named = framework(
            Layout::EtcdNaming {
                service: Some(ServiceName::new("api").unwrap()),
            },
            "t",
        );
        assert!(matches!(
            named.key(b"t/x").unwrap(),
            Key::Instance(s, _) if s.as_str() == "api"
        ));
        let sky = framework(
            Layout::Skydns {
                zones: vec![],
                ttl: 300,
            },
            "/skydns",
        );
        let Some(Entry::Domain((id, path), _)) = sky
            .entry(b"/skydns/local/East/x", br#"{"host":"10.0.0.1"}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((id, path.as_str()), (sky.id, "local/east/x"));
        let native = Source::native("/ruddr/services/");
        let Some(Entry::Instance(_, i)) = native
            .entry(b"/ruddr/services/web/a", br#"{"address":"10.0.0.1"}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(i.source, SourceId::NATIVE);
    }

    #[test]
    fn empty_values_delete_and_bad_values_name_the_reason() {
        let src = framework(Layout::GoZero { service: None }, "svc");
        assert!(matches!(
            src.put(b"svc/1", b"").unwrap(),
            Some(Update::Delete { .. })
        ));
        let naming = framework(Layout::EtcdNaming { service: None }, "t");
        assert!(
            matches!(
                naming
                    .put(b"t/e", br#"{"Op":1,"Addr":"10.0.0.5:1"}"#)
                    .unwrap(),
                Some(Update::Delete { .. })
            ),
            "an Op 1 record removes the endpoint"
        );
        // A marker at a key that names no instance is no error either.
        let kratos = framework(Layout::Kratos, "/microservices/");
        assert!(kratos
            .put(b"/microservices/helloworld", b"")
            .unwrap()
            .is_none());
        let err = src
            .put(b"svc/1", b"not an address")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an address"), "{err}");
        assert!(
            kratos
                .put(b"/microservices/a", br#"{"endpoints":[]}"#)
                .is_err(),
            "key shape"
        );
        let sky = framework(
            Layout::Skydns {
                zones: vec![],
                ttl: 300,
            },
            "/skydns/",
        );
        assert!(
            sky.put(b"/skydns/local/x", b"").unwrap().is_some(),
            "marker deletes"
        );
        assert!(matches!(
            sky.put(b"/skydns/local/x", b"\xff"),
            Err(EntryError::NotUtf8)
        ));
        // The native contract keeps its own rules: an empty value is an error there.
        assert!(Source::native("/ruddr/services/")
            .put(b"/ruddr/services/a/b", b"")
            .is_err());
    }

    #[test]
    fn a_go_micro_key_puts_and_deletes_all_its_nodes() {
        let micro = framework(Layout::GoMicro, "/micro/registry/");
        let key = b"/micro/registry/greeter/greeter-a";
        let v = br#"{"nodes":[{"id":"greeter-a","address":"10.0.0.1:80"},{"id":"greeter-b","address":"10.0.0.2:80"},{"id":"greeter-c","address":"10.0.0.3:80"}]}"#;
        let Some(Update::Replace {
            service,
            source,
            key: owner,
            instances,
        }) = micro.put(key, v).unwrap()
        else {
            panic!("a replace of the key's instances")
        };
        assert_eq!(
            (service.as_str(), owner.as_str(), source),
            ("greeter", "greeter-a", micro.id)
        );
        assert_eq!(instances.len(), 3);
        assert!(instances.iter().all(|i| i.source == micro.id));
        for gone in [micro.delete(key), micro.put(key, b"").unwrap()] {
            assert!(
                matches!(gone, Some(Update::Replace { instances, .. }) if instances.is_empty()),
                "a delete (or marker) removes every node of the key"
            );
        }
    }

    #[test]
    fn source_ids_are_stable_and_distinct() {
        let a = framework(Layout::Kratos, "/microservices");
        let b = framework(Layout::Kratos, "/microservices/");
        let c = framework(Layout::GoMicro, "/microservices/");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, SourceId::NATIVE);
        // The same sum as before layouts carried settings: snapshots keep matching.
        let sky = framework(
            Layout::Skydns {
                zones: vec!["x.".into()],
                ttl: 5,
            },
            "/skydns",
        );
        assert_eq!(sky.id, SourceId(crc32fast::hash(b"skydns /skydns/").max(1)));
    }
}
