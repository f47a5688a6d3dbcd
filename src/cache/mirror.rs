//! The mirror: every instance the registry holds, as immutable snapshots swapped atomically.
//!
//! One writer (the registry watcher) applies batches of updates; any number of readers (DNS
//! queries) load the current snapshot without locking. A batch is published whole, so a reader
//! never sees half of a re-list.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};

use super::types::{DomainKey, DomainRecord, Instance, InstanceId, ServiceName, SourceId, Update};

/// An instance within its service: sources are kept apart, so two sources that use the same
/// id for the same service name do not replace each other.
pub type InstanceKey = (InstanceId, SourceId);

fn key_of(instance: &Instance) -> InstanceKey {
    (instance.id.clone(), instance.source)
}

/// One service and all its registered instances (healthy or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: ServiceName,
    pub instances: BTreeMap<InstanceKey, Instance>,
    /// Changes whenever this service changes; answers built from it are keyed by it.
    pub generation: u64,
}

/// The registry as of one etcd revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<ServiceName, Arc<Service>>,
    /// The last etcd revision applied (0 before the first sync).
    pub revision: i64,
    /// Counts the applies that changed something: equal values mean equal contents.
    pub changes: u64,
    /// SkyDNS entries, ordered by source and path so that a subtree is one range.
    pub domains: Arc<BTreeMap<DomainKey, DomainRecord>>,
    /// Address -> instances, built on first use (reverse lookups are rare next to forward ones).
    reverse: OnceLock<HashMap<IpAddr, Vec<(ServiceName, InstanceKey)>>>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// The SkyDNS entries of `source` at `path` and below it (`path` itself first).
    pub fn domain_subtree<'a>(
        &'a self,
        source: SourceId,
        path: &str,
    ) -> impl Iterator<Item = (&'a str, &'a DomainRecord)> + 'a {
        let exact = self
            .domains
            .get_key_value(&(source, path.to_string()))
            .map(|((_, p), r)| (p.as_str(), r));
        // Below `path`: keys from `path/` up to (not including) `path0` ('0' follows '/').
        let lo = (source, format!("{path}/"));
        let hi = (source, format!("{path}0"));
        let below = self
            .domains
            .range((Bound::Included(lo), Bound::Excluded(hi)))
            .map(|((_, p), r)| (p.as_str(), r));
        exact.into_iter().chain(below)
    }

    /// The instances registered with address `ip`, sorted.
    pub fn instances_at(&self, ip: IpAddr) -> &[(ServiceName, InstanceKey)] {
        let index = self.reverse.get_or_init(|| {
            let mut index: HashMap<IpAddr, Vec<(ServiceName, InstanceKey)>> = HashMap::new();
            for svc in self.services.values() {
                for (key, inst) in &svc.instances {
                    if let Some(ip) = inst.address.ip() {
                        index
                            .entry(ip)
                            .or_default()
                            .push((svc.name.clone(), key.clone()));
                    }
                }
            }
            for v in index.values_mut() {
                v.sort();
            }
            index
        });
        index.get(&ip).map_or(&[], Vec::as_slice)
    }
}

/// What one [`Mirror::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Services whose instances changed (including added and removed services).
    pub changed: Vec<ServiceName>,
    /// Whether any SkyDNS entry changed.
    pub domains_changed: bool,
}

/// Shared handle to the current [`Snapshot`].
#[derive(Debug, Default)]
pub struct Mirror {
    current: ArcSwap<Snapshot>,
    /// Serializes writers and holds the last generation handed out. A std `Mutex` is right here:
    /// it is never held across an await and writers are rare next to readers, which never take it.
    writer: Mutex<u64>,
}

impl Mirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot, cheap enough for every query.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned handle, for holding across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies a batch of updates observed at `revision` and publishes the result at once.
    /// The revision is taken as given: after a re-list from a rebuilt etcd it may go back.
    pub fn apply(&self, updates: impl IntoIterator<Item = Update>, revision: i64) -> Applied {
        // The lock only serializes writers; a poisoned lock still holds a valid counter.
        let mut generation = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        let gen = *generation;
        let old = self.current.load_full();
        let mut services = old.services.clone();
        let mut touched: Vec<ServiceName> = Vec::new();
        // Copied on the first change only: most batches do not touch SkyDNS entries.
        let mut domains: Option<BTreeMap<DomainKey, DomainRecord>> = None;
        let mut domains_changed = false;

        for update in updates {
            match update {
                Update::Put { service, instance } => {
                    let entry = services.entry(service.clone()).or_insert_with(|| {
                        Arc::new(Service {
                            name: service.clone(),
                            instances: BTreeMap::new(),
                            generation: gen,
                        })
                    });
                    let key = key_of(&instance);
                    if entry.instances.get(&key) != Some(&instance) {
                        let svc = Arc::make_mut(entry);
                        svc.instances.insert(key, instance);
                        svc.generation = gen;
                        touched.push(service);
                    }
                }
                Update::Delete {
                    service,
                    id,
                    source,
                } => {
                    if let Some(entry) = services.get_mut(&service) {
                        let key = (id, source);
                        if entry.instances.contains_key(&key) {
                            let svc = Arc::make_mut(entry);
                            svc.instances.remove(&key);
                            svc.generation = gen;
                            if svc.instances.is_empty() {
                                services.remove(&service);
                            }
                            touched.push(service);
                        }
                    }
                }
                Update::DomainPut { key, record } => {
                    if old_domain(&domains, &old.domains, &key) != Some(&record) {
                        domains
                            .get_or_insert_with(|| (*old.domains).clone())
                            .insert(key, record);
                        domains_changed = true;
                    }
                }
                Update::DomainDelete { key } => {
                    if old_domain(&domains, &old.domains, &key).is_some() {
                        domains
                            .get_or_insert_with(|| (*old.domains).clone())
                            .remove(&key);
                        domains_changed = true;
                    }
                }
                Update::Reset {
                    source,
                    instances,
                    domains: listed,
                } => {
                    let mut next: BTreeMap<DomainKey, DomainRecord> = domains
                        .take()
                        .unwrap_or_else(|| (*old.domains).clone())
                        .into_iter()
                        .filter(|((s, _), _)| source.is_some_and(|mine| mine != *s))
                        .collect();
                    next.extend(listed);
                    if next != *old.domains {
                        domains_changed = true;
                    }
                    domains = Some(next);
                    let mine = |i: &Instance| source.is_none_or(|s| s == i.source);
                    // Start from what the other sources hold, then add this source's listing.
                    let mut fresh: HashMap<ServiceName, BTreeMap<InstanceKey, Instance>> =
                        HashMap::new();
                    for svc in services.values() {
                        let kept: BTreeMap<InstanceKey, Instance> = svc
                            .instances
                            .iter()
                            .filter(|(_, i)| !mine(i))
                            .map(|(k, i)| (k.clone(), i.clone()))
                            .collect();
                        if !kept.is_empty() {
                            fresh.insert(svc.name.clone(), kept);
                        }
                    }
                    for (service, instance) in instances {
                        fresh
                            .entry(service)
                            .or_default()
                            .insert(key_of(&instance), instance);
                    }
                    let mut next = HashMap::with_capacity(fresh.len());
                    for (name, instances) in fresh {
                        match services.get(&name) {
                            // Unchanged services keep their generation, so their cached answers stay.
                            Some(prev) if prev.instances == instances => {
                                next.insert(name, prev.clone());
                            }
                            _ => {
                                touched.push(name.clone());
                                let svc = Service {
                                    name: name.clone(),
                                    instances,
                                    generation: gen,
                                };
                                next.insert(name, Arc::new(svc));
                            }
                        }
                    }
                    touched.extend(services.keys().filter(|n| !next.contains_key(*n)).cloned());
                    services = next;
                }
            }
        }

        touched.sort();
        touched.dedup();
        let domains = match domains {
            Some(d) if domains_changed => Arc::new(d),
            _ => old.domains.clone(),
        };
        self.current.store(Arc::new(Snapshot {
            services,
            revision,
            changes: old.changes + u64::from(!touched.is_empty() || domains_changed),
            domains,
            reverse: OnceLock::new(),
        }));
        Applied {
            changed: touched,
            domains_changed,
        }
    }
}

/// The entry at `key` as of the batch so far.
fn old_domain<'a>(
    working: &'a Option<BTreeMap<DomainKey, DomainRecord>>,
    old: &'a BTreeMap<DomainKey, DomainRecord>,
    key: &DomainKey,
) -> Option<&'a DomainRecord> {
    working.as_ref().unwrap_or(old).get(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Health;

    fn inst(id: &str, addr: &str) -> Instance {
        Instance {
            id: InstanceId::new(id).unwrap(),
            address: crate::cache::Address::parse(addr).unwrap(),
            port: Some(80),
            ports: BTreeMap::new(),
            tags: vec![],
            weight: 1,
            priority: 0,
            health: Health::Passing,
            meta: BTreeMap::new(),
            source: SourceId::NATIVE,
        }
    }

    fn put(svc: &str, id: &str, addr: &str) -> Update {
        Update::Put {
            service: ServiceName::new(svc).unwrap(),
            instance: inst(id, addr),
        }
    }

    #[test]
    fn put_delete_and_generations() {
        let m = Mirror::new();
        let a = m.apply([put("web", "a", "10.0.0.1"), put("db", "x", "10.0.0.9")], 5);
        assert_eq!(a.changed.len(), 2);
        let s = m.load();
        assert_eq!(s.revision, 5);
        let g1 = s.service("web").unwrap().generation;
        drop(s);

        // Re-putting the same value changes nothing.
        assert!(m.apply([put("web", "a", "10.0.0.1")], 6).changed.is_empty());
        assert_eq!(m.load().service("web").unwrap().generation, g1);

        m.apply([put("web", "b", "10.0.0.2")], 7);
        let s = m.load();
        assert!(s.service("web").unwrap().generation > g1);
        assert_eq!(s.service("web").unwrap().instances.len(), 2);
        let db_gen = s.service("db").unwrap().generation;
        drop(s);

        let del = Update::Delete {
            service: ServiceName::new("db").unwrap(),
            id: InstanceId::new("x").unwrap(),
            source: SourceId::NATIVE,
        };
        m.apply([del], 8);
        assert!(m.load().service("db").is_none(), "empty service removed");
        let s = m.load();
        let at = s.instances_at("10.0.0.2".parse().unwrap());
        assert_eq!(at.len(), 1);
        assert_eq!((at[0].0.as_str(), at[0].1 .0.as_str()), ("web", "b"));
        assert!(s.instances_at("10.0.0.9".parse().unwrap()).is_empty());
        assert!(db_gen > 0);
    }

    #[test]
    fn reset_replaces_whole_and_keeps_unchanged_generations() {
        let m = Mirror::new();
        m.apply([put("web", "a", "10.0.0.1"), put("db", "x", "10.0.0.9")], 5);
        let web_gen = m.load().service("web").unwrap().generation;
        let reset = Update::Reset {
            source: None,
            domains: vec![],
            instances: vec![
                (ServiceName::new("web").unwrap(), inst("a", "10.0.0.1")),
                (ServiceName::new("cache").unwrap(), inst("c", "10.0.0.3")),
            ],
        };
        let applied = m.apply([reset], 20);
        let s = m.load();
        assert_eq!(s.revision, 20);
        assert!(s.service("db").is_none());
        assert!(s.service("cache").is_some());
        assert_eq!(s.service("web").unwrap().generation, web_gen);
        let names: Vec<_> = applied.changed.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cache", "db"]);
    }

    #[test]
    fn sources_are_kept_apart() {
        let m = Mirror::new();
        let other = SourceId(7);
        let mut theirs = inst("a", "10.0.0.2");
        theirs.source = other;
        let web = ServiceName::new("web").unwrap();
        m.apply(
            [
                put("web", "a", "10.0.0.1"),
                Update::Put {
                    service: web.clone(),
                    instance: theirs.clone(),
                },
            ],
            5,
        );
        assert_eq!(
            m.load().service("web").unwrap().instances.len(),
            2,
            "same id, two sources"
        );
        // A reset of one source leaves the other's instances alone.
        m.apply(
            [Update::Reset {
                source: Some(other),
                instances: vec![],
                domains: vec![],
            }],
            6,
        );
        let s = m.load();
        let left: Vec<_> = s.service("web").unwrap().instances.values().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].source, SourceId::NATIVE);
        drop(s);
        // A delete names its source.
        m.apply(
            [Update::Delete {
                service: web,
                id: InstanceId::new("a").unwrap(),
                source: other,
            }],
            7,
        );
        assert_eq!(m.load().service("web").unwrap().instances.len(), 1);
    }

    #[test]
    fn domain_subtrees_and_scoped_resets() {
        let rec = |host: &str| DomainRecord {
            host: Some(crate::cache::Address::parse(host).unwrap()),
            port: None,
            priority: 10,
            weight: 0,
            text: None,
            ttl: None,
            target_strip: 0,
        };
        let sky = SourceId(9);
        let key = |p: &str| (sky, p.to_string());
        let m = Mirror::new();
        let a = m.apply(
            [
                Update::DomainPut {
                    key: key("local/skydns/east/rails/1"),
                    record: rec("10.0.0.1"),
                },
                Update::DomainPut {
                    key: key("local/skydns/east/rails"),
                    record: rec("10.0.0.2"),
                },
                Update::DomainPut {
                    key: key("local/skydns/east/rails-x/1"),
                    record: rec("10.0.0.3"),
                },
                Update::DomainPut {
                    key: (SourceId(1), "local/skydns/east/rails/9".into()),
                    record: rec("10.0.0.9"),
                },
            ],
            3,
        );
        assert!(a.domains_changed);
        let s = m.load();
        let paths: Vec<&str> = s
            .domain_subtree(sky, "local/skydns/east/rails")
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            ["local/skydns/east/rails", "local/skydns/east/rails/1"]
        );
        assert_eq!(s.domain_subtree(sky, "local/skydns").count(), 3);
        assert_eq!(s.domain_subtree(sky, "local/skydns/west").count(), 0);
        drop(s);
        let changes = m.load().changes;
        assert!(
            !m.apply(
                [Update::DomainPut {
                    key: key("local/skydns/east/rails"),
                    record: rec("10.0.0.2"),
                }],
                4
            )
            .domains_changed
        );
        assert_eq!(m.load().changes, changes, "an equal value changes nothing");
        m.apply(
            [Update::Reset {
                source: Some(sky),
                instances: vec![],
                domains: vec![(key("local/skydns/west/a"), rec("10.0.0.7"))],
            }],
            5,
        );
        let s = m.load();
        assert_eq!(s.domains.len(), 2, "the other source's entry stays");
        assert_eq!(s.domain_subtree(sky, "local/skydns/west").count(), 1);
    }
}
