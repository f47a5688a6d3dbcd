//! The mirror: every instance the registry holds, as immutable snapshots swapped atomically.
//!
//! One writer (the registry watcher) applies batches of updates; any number of readers (DNS
//! queries) load the current snapshot without locking. A batch is published whole, so a reader
//! never sees half of a re-list.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};

use super::types::{Instance, InstanceId, ServiceName, Update};

/// One service and all its registered instances (healthy or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: ServiceName,
    pub instances: BTreeMap<InstanceId, Instance>,
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
    /// Address -> instances, built on first use (reverse lookups are rare next to forward ones).
    reverse: OnceLock<HashMap<IpAddr, Vec<(ServiceName, InstanceId)>>>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// The instances registered with address `ip`, sorted.
    pub fn instances_at(&self, ip: IpAddr) -> &[(ServiceName, InstanceId)] {
        let index = self.reverse.get_or_init(|| {
            let mut index: HashMap<IpAddr, Vec<(ServiceName, InstanceId)>> = HashMap::new();
            for svc in self.services.values() {
                for inst in svc.instances.values() {
                    index
                        .entry(inst.address)
                        .or_default()
                        .push((svc.name.clone(), inst.id.clone()));
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
                    if entry.instances.get(&instance.id) != Some(&instance) {
                        let svc = Arc::make_mut(entry);
                        svc.instances.insert(instance.id.clone(), instance);
                        svc.generation = gen;
                        touched.push(service);
                    }
                }
                Update::Delete { service, id } => {
                    if let Some(entry) = services.get_mut(&service) {
                        if entry.instances.contains_key(&id) {
                            let svc = Arc::make_mut(entry);
                            svc.instances.remove(&id);
                            svc.generation = gen;
                            if svc.instances.is_empty() {
                                services.remove(&service);
                            }
                            touched.push(service);
                        }
                    }
                }
                Update::Reset { instances } => {
                    let mut fresh: HashMap<ServiceName, BTreeMap<InstanceId, Instance>> =
                        HashMap::new();
                    for (service, instance) in instances {
                        fresh
                            .entry(service)
                            .or_default()
                            .insert(instance.id.clone(), instance);
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
        self.current.store(Arc::new(Snapshot {
            services,
            revision,
            changes: old.changes + u64::from(!touched.is_empty()),
            reverse: OnceLock::new(),
        }));
        Applied { changed: touched }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Health;

    fn inst(id: &str, addr: &str) -> Instance {
        Instance {
            id: InstanceId::new(id).unwrap(),
            address: addr.parse().unwrap(),
            port: Some(80),
            ports: BTreeMap::new(),
            tags: vec![],
            weight: 1,
            priority: 0,
            health: Health::Passing,
            meta: BTreeMap::new(),
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
        };
        m.apply([del], 8);
        assert!(m.load().service("db").is_none(), "empty service removed");
        let s = m.load();
        let at = s.instances_at("10.0.0.2".parse().unwrap());
        assert_eq!(at.len(), 1);
        assert_eq!((at[0].0.as_str(), at[0].1.as_str()), ("web", "b"));
        assert!(s.instances_at("10.0.0.9".parse().unwrap()).is_empty());
        assert!(db_gen > 0);
    }

    #[test]
    fn reset_replaces_whole_and_keeps_unchanged_generations() {
        let m = Mirror::new();
        m.apply([put("web", "a", "10.0.0.1"), put("db", "x", "10.0.0.9")], 5);
        let web_gen = m.load().service("web").unwrap().generation;
        let reset = Update::Reset {
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
}
