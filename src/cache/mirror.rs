//! The mirror: every instance the registry holds, as immutable snapshots swapped atomically.
//!
//! One writer (the registry watcher) applies batches of updates; any number of readers (DNS
//! queries) load the current snapshot without locking. A batch is published whole, so a reader
//! never sees half of a re-list.
//!
//! The maps are persistent (structurally shared, `imbl`): a new snapshot shares everything it
//! did not change with the previous one, so one put or delete costs O(log services +
//! instances of that service), not a copy of the whole registry.

use std::collections::{BTreeMap, HashMap};

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::types::{
    DomainKey, DomainRecord, Instance, InstanceId, Kept, Positions, ServiceName, SourceId, Update,
};

/// An instance within its service: sources are kept apart, so two sources that use the same
/// id for the same service name do not replace each other.
pub type InstanceKey = (InstanceId, SourceId);

fn key_of(instance: &Instance) -> InstanceKey {
    (instance.id.clone(), instance.source)
}

/// A registry key that holds several instances of one service: its source, the service and the
/// key's own id (see [`Update::Replace`]).
pub type KeyOwner = (SourceId, ServiceName, InstanceId);

/// One service and all its registered instances (healthy or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: ServiceName,
    pub instances: Instances,
    /// Changes whenever this service changes; answers built from it are keyed by it.
    pub generation: u64,
}

/// A service's instances, sorted by key (id, then source) in one exactly sized vector: a
/// service usually has a handful of instances, and a B-tree's fixed 11-slot nodes would waste
/// most of their space. The key is each instance's own id and source, not stored again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instances(Vec<Instance>);

impl Instances {
    fn position(&self, key: &InstanceKey) -> Result<usize, usize> {
        self.0
            .binary_search_by(|i| (&i.id, i.source).cmp(&(&key.0, key.1)))
    }

    pub fn get(&self, key: &InstanceKey) -> Option<&Instance> {
        self.position(key).ok().map(|n| &self.0[n])
    }

    /// For tests: changing an instance's id or source here would break the order.
    #[cfg(test)]
    pub fn get_mut(&mut self, key: &InstanceKey) -> Option<&mut Instance> {
        self.position(key).ok().map(|n| &mut self.0[n])
    }

    /// Adds `instance`, or replaces the one with its key; returns the replaced one.
    pub fn insert(&mut self, instance: Instance) -> Option<Instance> {
        match self.position(&key_of(&instance)) {
            Ok(n) => Some(std::mem::replace(&mut self.0[n], instance)),
            Err(n) => {
                self.0.insert(n, instance);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &InstanceKey) -> Option<Instance> {
        self.position(key).ok().map(|n| self.0.remove(n))
    }

    /// The instances in key order.
    pub fn values(&self) -> std::slice::Iter<'_, Instance> {
        self.0.iter()
    }

    /// For tests: changing an instance's id or source here would break the order.
    #[cfg(test)]
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, Instance> {
        self.0.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops spare capacity: a service's vector is copied on every change, and growth by
    /// doubling would keep up to half of it empty.
    fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl FromIterator<Instance> for Instances {
    /// Later instances replace earlier ones with the same key.
    fn from_iter<I: IntoIterator<Item = Instance>>(instances: I) -> Self {
        let mut all = Self(Vec::new());
        all.extend(instances);
        all
    }
}

impl Extend<Instance> for Instances {
    fn extend<I: IntoIterator<Item = Instance>>(&mut self, instances: I) {
        for i in instances {
            self.insert(i);
        }
    }
}

/// Address -> the services with instances registered at it, and how many in each (the
/// instances themselves are found in their service). IPv4 and IPv6 apart, so that most keys
/// take 4 bytes rather than a 17-byte `IpAddr`; nearly every address is one service's, kept
/// inline. B-trees rather than hash tables: with a million addresses, spare buckets cost more
/// than speed is worth for a lookup this rare; a re-list rebuilds them with full nodes. An
/// entry per instance with its key took 114 bytes per instance at 100,000 instances.
#[derive(Debug, Default)]
struct Reverse {
    v4: BTreeMap<u32, Holders>,
    v6: BTreeMap<u128, Holders>,
}

/// Services, sorted, each with its count of instances at one address.
type Holders = smallvec::SmallVec<[(ServiceName, u32); 1]>;

impl Reverse {
    fn holders(&self, ip: IpAddr) -> Option<&Holders> {
        match ip {
            IpAddr::V4(v4) => self.v4.get(&u32::from(v4)),
            IpAddr::V6(v6) => self.v6.get(&u128::from(v6)),
        }
    }

    fn add(&mut self, ip: IpAddr, service: &ServiceName) {
        fn add<K: Ord>(map: &mut BTreeMap<K, Holders>, key: K, service: &ServiceName) {
            let at = map.entry(key).or_default();
            match at.binary_search_by(|(s, _)| s.cmp(service)) {
                Ok(n) => at[n].1 += 1,
                Err(n) => at.insert(n, (service.clone(), 1)),
            }
        }
        match ip {
            IpAddr::V4(v4) => add(&mut self.v4, u32::from(v4), service),
            IpAddr::V6(v6) => add(&mut self.v6, u128::from(v6), service),
        }
    }

    fn remove(&mut self, ip: IpAddr, service: &ServiceName) {
        fn remove<K: Ord>(map: &mut BTreeMap<K, Holders>, key: K, service: &ServiceName) {
            let Some(at) = map.get_mut(&key) else {
                return;
            };
            if let Ok(n) = at.binary_search_by(|(s, _)| s.cmp(service)) {
                at[n].1 -= 1;
                if at[n].1 == 0 {
                    at.remove(n);
                }
            }
            if at.is_empty() {
                map.remove(&key);
            }
        }
        match ip {
            IpAddr::V4(v4) => remove(&mut self.v4, u32::from(v4), service),
            IpAddr::V6(v6) => remove(&mut self.v6, u128::from(v6), service),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The index of `services` built at once, with full tree nodes (entries added one by one,
    /// in address order, leave them about half full).
    fn build<'a>(services: impl Iterator<Item = &'a Service>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for svc in services {
            for ip in svc.instances.values().filter_map(|i| i.address.ip()) {
                match ip {
                    IpAddr::V4(a) => v4.push((u32::from(a), &svc.name)),
                    IpAddr::V6(a) => v6.push((u128::from(a), &svc.name)),
                }
            }
        }
        fn tree<K: Ord + Copy>(mut pairs: Vec<(K, &ServiceName)>) -> BTreeMap<K, Holders> {
            pairs.sort_unstable();
            let mut grouped: Vec<(K, Holders)> = Vec::new();
            for (key, service) in pairs {
                match grouped.last_mut() {
                    Some((k, holders)) if *k == key => match holders.last_mut() {
                        Some((s, n)) if s == service => *n += 1,
                        _ => holders.push((service.clone(), 1)),
                    },
                    _ => grouped.push((key, smallvec::smallvec![(service.clone(), 1)])),
                }
            }
            grouped.into_iter().collect()
        }
        Self {
            v4: tree(v4),
            v6: tree(v6),
        }
    }
}

/// Services by name: a persistent map (a new snapshot shares every node it did not change),
/// hashed with foldhash rather than imbl's default SipHash, which was most of a lookup's cost
/// on the answer path. Names come from the registry, and the seed is random per map.
pub type Services = imbl::GenericHashMap<
    ServiceName,
    Arc<Service>,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// The registry as of one etcd revision.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub services: Services,
    /// The last etcd revision applied (0 before the first sync).
    pub revision: i64,
    /// Counts the applies that changed something: equal values mean equal contents.
    pub changes: u64,
    /// SkyDNS entries, ordered by source and path so that a subtree is one range.
    pub domains: imbl::OrdMap<DomainKey, DomainRecord>,
    /// Address -> the services with instances there (reverse lookups), updated in place by every
    /// apply and shared by all snapshots: it is a lookup aid, not part of any one snapshot, so
    /// callers check each candidate against the snapshot they answer from. Kept out of the
    /// persistent maps because copying index nodes cost more per update than everything else
    /// in `apply`, for a lookup that is rare. A std `Mutex`: held only for a map operation, never
    /// across an await.
    reverse: Arc<Mutex<Reverse>>,
    /// When each service last changed (see [`Stamps`]); shared by all snapshots, like `reverse`.
    stamps: Arc<Stamps>,
    instances: usize,
    /// The instance ids each multi-instance key gave (see [`Update::Replace`]), written to
    /// the snapshot file so that a restart resuming the watch can apply a later change of
    /// such a key exactly.
    owned: imbl::HashMap<KeyOwner, Vec<InstanceId>>,
    /// Where each source's data stands in etcd's history (see [`Update::Position`]).
    pub positions: Arc<Positions>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn instance_count(&self) -> usize {
        self.instances
    }

    /// Whether service `name` is known unchanged since the snapshot whose change count was
    /// `at` (at most this one's): what was built from it then still holds, without looking the
    /// service up. `false` means "maybe changed": look it up.
    pub fn unchanged_since(&self, name: &str, at: u64) -> bool {
        at <= self.changes && self.stamps.get(name) <= at
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

    /// The instances registered with address `ip` in this snapshot, sorted (a snapshot older
    /// than the current one may miss instances removed since: the index is the current one).
    pub fn instances_at(&self, ip: IpAddr) -> Vec<(&Service, &Instance)> {
        let services: Vec<ServiceName> = self
            .reverse()
            .holders(ip)
            .map(|h| h.iter().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default();
        // The index may already know of a newer snapshot's changes: each candidate is checked
        // against this snapshot.
        services
            .iter()
            .filter_map(|name| self.service(name.as_str()))
            .flat_map(|svc| {
                svc.instances
                    .values()
                    .filter(move |i| i.address.ip() == Some(ip))
                    .map(move |i| (&**svc, i))
            })
            .collect()
    }

    /// The instances that the registry key `key` (its own id) of `service` in `source` holds,
    /// when that key is one of several instances; `None` for other keys.
    #[cfg(test)]
    pub fn key_instances(
        &self,
        source: SourceId,
        service: &ServiceName,
        key: &InstanceId,
    ) -> Option<Vec<Instance>> {
        let ids = self.owned.get(&(source, service.clone(), key.clone()))?;
        let svc = self.service(service.as_str());
        Some(
            ids.iter()
                .filter_map(|id| svc?.instances.get(&(id.clone(), source)).cloned())
                .collect(),
        )
    }

    /// Every multi-instance key and the instance ids it gave (for the snapshot file).
    pub fn owned_keys(&self) -> impl ExactSizeIterator<Item = (&KeyOwner, &Vec<InstanceId>)> {
        self.owned.iter()
    }

    fn reverse(&self) -> std::sync::MutexGuard<'_, Reverse> {
        // A poisoned lock still holds a usable index (every operation on it is one insert or
        // remove).
        self.reverse.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes one more instance of `service` at `ip`.
    fn index(&mut self, ip: IpAddr, service: &ServiceName) {
        self.reverse().add(ip, service);
    }

    /// Notes one instance fewer of `service` at `ip`.
    fn unindex(&mut self, ip: IpAddr, service: &ServiceName) {
        self.reverse().remove(ip, service);
    }

    /// Replaces service `name`'s instances (removes it when `instances` is empty), keeping the
    /// reverse index and the instance count in step.
    fn set_service(
        &mut self,
        name: &ServiceName,
        mut instances: Instances,
        generation: u64,
        index: bool,
    ) {
        let old = self.services.get(name).cloned();
        let empty = Instances::default();
        let before = old.as_ref().map_or(&empty, |s| &s.instances);
        for inst in before.values().filter(|_| index) {
            if let Some(ip) = inst.address.ip() {
                let key = key_of(inst);
                if instances.get(&key).and_then(|i| i.address.ip()) != Some(ip) {
                    self.unindex(ip, name);
                }
            }
        }
        for inst in instances.values().filter(|_| index) {
            if let Some(ip) = inst.address.ip() {
                let key = key_of(inst);
                if before.get(&key).and_then(|i| i.address.ip()) != Some(ip) {
                    self.index(ip, name);
                }
            }
        }
        self.instances = self.instances - before.len() + instances.len();
        instances.shrink();
        if instances.is_empty() {
            self.services.remove(name);
        } else {
            self.services.insert(
                name.clone(),
                Arc::new(Service {
                    name: name.clone(),
                    instances,
                    generation,
                }),
            );
        }
    }

    fn put(&mut self, service: ServiceName, instance: Instance, generation: u64) -> bool {
        let key = key_of(&instance);
        let prev = self
            .service(service.as_str())
            .and_then(|s| s.instances.get(&key));
        if prev == Some(&instance) {
            return false;
        }
        let (prev_ip, new_ip) = (prev.and_then(|p| p.address.ip()), instance.address.ip());
        let added = prev.is_none();
        if prev_ip != new_ip {
            if let Some(ip) = prev_ip {
                self.unindex(ip, &service);
            }
            if let Some(ip) = new_ip {
                self.index(ip, &service);
            }
        }
        let entry = self.services.entry(service.clone()).or_insert_with(|| {
            Arc::new(Service {
                name: service,
                instances: Instances::default(),
                generation,
            })
        });
        // Copies this one service (if a published snapshot still holds it), nothing else.
        let svc = Arc::make_mut(entry);
        svc.instances.insert(instance);
        svc.instances.shrink();
        svc.generation = generation;
        self.instances += usize::from(added);
        true
    }

    fn delete(&mut self, service: &ServiceName, key: &InstanceKey, generation: u64) -> bool {
        let Some(prev) = self
            .service(service.as_str())
            .and_then(|s| s.instances.get(key))
        else {
            return false;
        };
        if let Some(ip) = prev.address.ip() {
            self.unindex(ip, service);
        }
        let Some(entry) = self.services.get_mut(service) else {
            return false;
        };
        let svc = Arc::make_mut(entry);
        svc.instances.remove(key);
        svc.generation = generation;
        if svc.instances.is_empty() {
            self.services.remove(service);
        }
        self.instances -= 1;
        true
    }

    /// Replaces the instances registry key `key` gave with `instances` (all of `source`).
    fn replace(
        &mut self,
        service: &ServiceName,
        source: SourceId,
        key: InstanceId,
        instances: Vec<Instance>,
        generation: u64,
    ) -> bool {
        let owner = (source, service.clone(), key);
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.id.clone()).collect();
        let before = self.owned.remove(&owner).unwrap_or_default();
        let mut changed = false;
        for id in before.into_iter().filter(|id| !ids.contains(id)) {
            changed |= self.delete(service, &(id, source), generation);
        }
        for instance in instances {
            debug_assert_eq!(instance.source, source, "an instance of another source");
            changed |= self.put(service.clone(), instance, generation);
        }
        if !ids.is_empty() {
            self.owned.insert(owner, ids);
        }
        changed
    }

    /// Replaces what `source` holds (everything for `None`) with a listing; returns the
    /// services that changed and whether any SkyDNS entry did. Costs O(registry): re-lists are
    /// rare and read everything anyway.
    #[allow(clippy::too_many_arguments)]
    fn reset(
        &mut self,
        source: Option<SourceId>,
        mut instances: Vec<(ServiceName, Instance)>,
        mut listed_domains: Vec<(DomainKey, DomainRecord)>,
        keep: Vec<Kept>,
        generation: u64,
        touched: &mut Vec<ServiceName>,
    ) -> bool {
        let mine = |s: SourceId| source.is_none_or(|m| m == s);
        // No address is indexed (a first list, or nothing with an address yet): index the
        // result at once rather than instance by instance.
        let bulk = self.reverse().is_empty();
        // Keys listed with a value that could not be read keep what they held, as on the
        // watch path: a bad value over a good one keeps the good one. They go first, so an
        // instance listed under another key wins over a kept one of the same id.
        let listed = std::mem::take(&mut instances);
        let mut owners = Vec::new();
        for kept in keep {
            match kept {
                Kept::Instance(service, id) => {
                    let Some(src) = source else { continue };
                    let svc = self.services.get(service.as_str());
                    let owner = (src, service.clone(), id.clone());
                    if let Some(ids) = self.owned.get(&owner) {
                        instances.extend(
                            ids.iter()
                                .filter_map(|i| svc?.instances.get(&(i.clone(), src)).cloned())
                                .map(|i| (service.clone(), i)),
                        );
                        owners.push((owner, ids.clone()));
                    } else if let Some(prev) = svc.and_then(|s| s.instances.get(&(id, src))) {
                        instances.push((service, prev.clone()));
                    }
                }
                Kept::Domain(key) => {
                    if let Some(prev) = self.domains.get(&key) {
                        listed_domains.push((key, prev.clone()));
                    }
                }
            }
        }
        if instances.is_empty() {
            // Not a second copy of a large listing.
            instances = listed;
        } else {
            instances.extend(listed);
        }
        self.owned.retain(|(s, _, _), _| !mine(*s));
        for (owner, ids) in owners {
            self.owned.insert(owner, ids);
        }
        let mut domains = self.domains.clone();
        let listed: BTreeMap<DomainKey, DomainRecord> = listed_domains.into_iter().collect();
        let stale: Vec<DomainKey> = domains
            .keys()
            .filter(|k| mine(k.0) && !listed.contains_key(*k))
            .cloned()
            .collect();
        let mut domains_changed = !stale.is_empty();
        for key in stale {
            domains.remove(&key);
        }
        for (key, record) in listed {
            if domains.get(&key) != Some(&record) {
                domains.insert(key, record);
                domains_changed = true;
            }
        }
        self.domains = domains;

        let mut fresh: HashMap<ServiceName, Instances> = HashMap::new();
        for (service, instance) in instances {
            fresh.entry(service).or_default().insert(instance);
        }
        // Services this source had but no longer lists, or lists differently.
        let held: Vec<Arc<Service>> = self
            .services
            .values()
            .filter(|s| fresh.contains_key(&s.name) || s.instances.values().any(|i| mine(i.source)))
            .cloned()
            .collect();
        for svc in held {
            let mut next: Instances = svc
                .instances
                .values()
                .filter(|i| !mine(i.source))
                .cloned()
                .collect();
            next.extend(fresh.remove(&svc.name).unwrap_or_default().0);
            // Unchanged services keep their generation, so their cached answers stay.
            if next != svc.instances {
                self.set_service(&svc.name, next, generation, !bulk);
                touched.push(svc.name.clone());
            }
        }
        for (name, instances) in fresh {
            self.set_service(&name, instances, generation, !bulk);
            touched.push(name);
        }
        if bulk {
            let built = Reverse::build(self.services.values().map(|s| &**s));
            *self.reverse() = built;
        }
        domains_changed
    }
}

/// When each service last changed, as the change count of the snapshot that first held the
/// change, kept per bucket of service-name hashes (a bucket holds the latest of its services):
/// checking a built answer against it is one hash and one load, where looking the service up
/// is a walk through the persistent map that misses the CPU cache at every level. Under a
/// steady churn (a thousand updates a second) most cached answers outlive the snapshot they
/// were last checked at, and that walk was the largest cost churn added to a query.
///
/// A service sharing its bucket with one that changed is only looked up again, never answered
/// from stale data: a stamp is written before the snapshot holding the change is published,
/// so a reader of that snapshot (or a later one) sees it.
#[derive(Debug)]
struct Stamps {
    buckets: Box<[AtomicU64]>,
    hasher: foldhash::fast::FixedState,
}

/// Buckets in [`Stamps`] (256 KiB): more than the services of most registries.
const STAMP_BUCKETS: usize = 1 << 15;

impl Default for Stamps {
    fn default() -> Self {
        Self {
            buckets: std::iter::repeat_with(|| AtomicU64::new(0))
                .take(STAMP_BUCKETS)
                .collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

impl Stamps {
    fn bucket(&self, name: &str) -> &AtomicU64 {
        let hash = self.hasher.hash_one(name) as usize;
        &self.buckets[hash & (STAMP_BUCKETS - 1)]
    }

    /// The change count at which a service of `name`'s bucket last changed.
    fn get(&self, name: &str) -> u64 {
        self.bucket(name).load(Ordering::Acquire)
    }

    /// Notes that `name` changes in the snapshot of change count `changes` (before it is
    /// published).
    fn set(&self, name: &str, changes: u64) {
        self.bucket(name).fetch_max(changes, Ordering::Release);
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
#[derive(Debug)]
pub struct Mirror {
    current: ArcSwap<Snapshot>,
    /// Serializes writers and holds the last generation handed out. A std `Mutex` is right here:
    /// it is never held across an await and writers are rare next to readers, which never take it.
    writer: Mutex<u64>,
    /// Tells subscribers ([`Mirror::subscribe`]) that an apply changed something.
    changed: tokio::sync::watch::Sender<Change>,
    /// The last [`CHANGE_LOG`] changes, oldest first (the status page's list).
    log: Mutex<std::collections::VecDeque<Logged>>,
}

/// How many registry changes [`Mirror::recent_changes`] keeps.
pub const CHANGE_LOG: usize = 200;

/// One registry change as the status page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub time: std::time::SystemTime,
    pub revision: i64,
    pub kind: ChangeKind,
    pub service: Option<ServiceName>,
    pub instance: Option<InstanceId>,
    /// A SkyDNS entry's path.
    pub path: Option<String>,
    /// `None`: every source (a re-list of all of them).
    pub source: Option<SourceId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
    /// A whole source listed again (one entry however much it changed).
    Relist,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Relist => "relist",
        }
    }
}

/// The latest change a subscriber learns of: subscribers see the newest one only (a burst of
/// applies is one wake-up), then read the current snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// The snapshot's change count.
    pub changes: u64,
    /// When the apply that made it was published.
    pub at: std::time::Instant,
}

impl Default for Mirror {
    fn default() -> Self {
        Self {
            current: ArcSwap::default(),
            writer: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(Change {
                changes: 0,
                at: std::time::Instant::now(),
            }),
            log: Mutex::default(),
        }
    }
}

impl Mirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes on every apply that changes the registry (the latest one wins).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Change> {
        self.changed.subscribe()
    }

    /// The current snapshot, cheap enough for every query.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The last [`CHANGE_LOG`] registry changes, newest first.
    pub fn recent_changes(&self) -> Vec<Logged> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().rev().cloned().collect()
    }

    /// The current snapshot as an owned handle, for holding across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies a batch of updates observed at `revision` and publishes the result at once.
    /// The revision is taken as given: after a re-list from a rebuilt etcd it may go back.
    pub fn apply(&self, updates: impl IntoIterator<Item = Update>, revision: i64) -> Applied {
        self.apply_at(updates.into_iter().map(|u| (revision, u)), revision)
    }

    /// [`Mirror::apply`] for updates that each carry the revision of the etcd event that made
    /// them (the change log shows it); `revision` is the one the whole batch reaches.
    pub fn apply_at(
        &self,
        updates: impl IntoIterator<Item = (i64, Update)>,
        revision: i64,
    ) -> Applied {
        // The lock only serializes writers; a poisoned lock still holds a valid counter.
        let mut generation = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        let gen = *generation;
        // A shallow copy: the maps share their nodes with the published snapshot.
        let mut next = Snapshot::clone(&self.current.load());
        let mut touched: Vec<ServiceName> = Vec::new();
        let mut domains_changed = false;

        let mut logged = std::collections::VecDeque::new();
        let mut log = |revision, kind, service: Option<&ServiceName>, instance, path, source| {
            if logged.len() == CHANGE_LOG {
                logged.pop_front();
            }
            logged.push_back(Logged {
                time: std::time::SystemTime::UNIX_EPOCH,
                revision,
                kind,
                service: service.cloned(),
                instance,
                path,
                source,
            });
        };
        for (at, update) in updates {
            match update {
                Update::Put { service, instance } => {
                    let (id, source) = key_of(&instance);
                    if next.put(service.clone(), instance, gen) {
                        log(
                            at,
                            ChangeKind::Put,
                            Some(&service),
                            Some(id),
                            None,
                            Some(source),
                        );
                        touched.push(service);
                    }
                }
                Update::Delete {
                    service,
                    id,
                    source,
                } => {
                    let key = (id, source);
                    if next.delete(&service, &key, gen) {
                        log(
                            at,
                            ChangeKind::Delete,
                            Some(&service),
                            Some(key.0),
                            None,
                            Some(source),
                        );
                        touched.push(service);
                    }
                }
                Update::Replace {
                    service,
                    source,
                    key,
                    instances,
                } => {
                    let kind = if instances.is_empty() {
                        ChangeKind::Delete
                    } else {
                        ChangeKind::Put
                    };
                    if next.replace(&service, source, key, instances, gen) {
                        log(at, kind, Some(&service), None, None, Some(source));
                        touched.push(service);
                    }
                }
                Update::DomainPut { key, record } => {
                    if next.domains.get(&key) != Some(&record) {
                        log(
                            at,
                            ChangeKind::Put,
                            None,
                            None,
                            Some(key.1.clone()),
                            Some(key.0),
                        );
                        next.domains.insert(key, record);
                        domains_changed = true;
                    }
                }
                Update::DomainDelete { key } => {
                    if next.domains.remove(&key).is_some() {
                        log(at, ChangeKind::Delete, None, None, Some(key.1), Some(key.0));
                        domains_changed = true;
                    }
                }
                Update::Reset {
                    source,
                    instances,
                    domains,
                    keep,
                } => {
                    log(at, ChangeKind::Relist, None, None, None, source);
                    // Where the replaced data stood no longer holds: the list's own position
                    // follows in the same batch.
                    match source {
                        Some(id) => Arc::make_mut(&mut next.positions)
                            .revisions
                            .retain(|(s, _, _)| *s != id),
                        None => next.positions = Arc::default(),
                    }
                    domains_changed |=
                        next.reset(source, instances, domains, keep, gen, &mut touched);
                }
                Update::Position {
                    source,
                    fingerprint,
                    revision,
                    cluster_id,
                } => {
                    let p = Arc::make_mut(&mut next.positions);
                    if p.cluster_id != cluster_id {
                        p.revisions.clear();
                        p.cluster_id = cluster_id;
                    }
                    p.revisions.retain(|(s, _, _)| *s != source);
                    p.revisions.push((source, fingerprint, revision));
                }
                Update::ForgetPositions => next.positions = Arc::default(),
            }
        }
        if !logged.is_empty() {
            let now = std::time::SystemTime::now();
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            for mut entry in logged {
                entry.time = now;
                if log.len() == CHANGE_LOG {
                    log.pop_front();
                }
                log.push_back(entry);
            }
        }

        touched.sort();
        touched.dedup();
        next.revision = revision;
        next.changes += u64::from(!touched.is_empty() || domains_changed);
        for name in &touched {
            next.stamps.set(name.as_str(), next.changes);
        }
        let change = (!touched.is_empty() || domains_changed).then_some(Change {
            changes: next.changes,
            at: std::time::Instant::now(),
        });
        self.current.store(Arc::new(next));
        if let Some(change) = change {
            // No subscriber is fine: the value is kept for the next one.
            self.changed.send_replace(change);
        }
        Applied {
            changed: touched,
            domains_changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str) -> Instance {
        Instance::for_test(id, addr, Some(80))
    }

    fn put(svc: &str, id: &str, addr: &str) -> Update {
        Update::Put {
            service: ServiceName::new(svc).unwrap(),
            instance: inst(id, addr),
        }
    }

    /// What a go-micro key with these node ids turns into (source 9, service web).
    fn replace(key: &str, nodes: &[&str]) -> Update {
        Update::Replace {
            service: ServiceName::new("web").unwrap(),
            source: SourceId(9),
            key: InstanceId::new(key).unwrap(),
            instances: nodes
                .iter()
                .enumerate()
                .map(|(n, id)| {
                    let mut i = inst(id, &format!("10.0.9.{}", n + 1));
                    i.source = SourceId(9);
                    i
                })
                .collect(),
        }
    }

    fn web_ids(m: &Mirror) -> Vec<String> {
        m.load()
            .service("web")
            .map(|s| s.instances.values().map(|i| i.id.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_key_replaces_the_instances_it_gave() {
        let m = Mirror::new();
        m.apply([put("web", "native", "10.0.0.1"), replace("k2", &["z"])], 1);
        m.apply([replace("k1", &["a", "b", "c"])], 2);
        assert_eq!(web_ids(&m), ["a", "b", "c", "native", "z"]);
        let s = m.load();
        let (svc, key) = (
            ServiceName::new("web").unwrap(),
            InstanceId::new("k1").unwrap(),
        );
        assert_eq!(s.key_instances(SourceId(9), &svc, &key).unwrap().len(), 3);
        drop(s);

        // Put again with two nodes: the third is gone, the others (and other keys) stay.
        let changed = m.apply([replace("k1", &["a", "c"])], 3).changed;
        assert_eq!(changed.len(), 1);
        assert_eq!(web_ids(&m), ["a", "c", "native", "z"]);
        assert!(m
            .load()
            .instances_at("10.0.9.3".parse().unwrap())
            .is_empty());
        // The same nodes again change nothing.
        assert!(m.apply([replace("k1", &["a", "c"])], 4).changed.is_empty());

        // Delete: every instance of the key goes, the rest stays.
        m.apply([replace("k1", &[])], 5);
        assert_eq!(web_ids(&m), ["native", "z"]);
        let s = m.load();
        assert!(s.key_instances(SourceId(9), &svc, &key).is_none());
        assert_eq!(s.instance_count(), 2);
    }

    #[test]
    fn a_reset_forgets_the_keys_and_a_replace_in_the_batch_records_them_again() {
        let m = Mirror::new();
        m.apply([replace("k1", &["a", "b"])], 1);
        let gen = m.load().service("web").unwrap().generation;
        // A re-list: the same instances, then the key's ownership.
        let Update::Replace { instances, .. } = replace("k1", &["a", "b"]) else {
            unreachable!()
        };
        let web = ServiceName::new("web").unwrap();
        let reset = Update::Reset {
            source: Some(SourceId(9)),
            instances: instances.into_iter().map(|i| (web.clone(), i)).collect(),
            domains: vec![],
            keep: Vec::new(),
        };
        let applied = m.apply([reset, replace("k1", &["a", "b"])], 2);
        assert!(applied.changed.is_empty(), "unchanged: answers stay cached");
        assert_eq!(m.load().service("web").unwrap().generation, gen);
        m.apply([replace("k1", &["b"])], 3);
        assert_eq!(web_ids(&m), ["b"]);
        // A reset without the key forgets it: its instances went with the reset.
        m.apply(
            [Update::Reset {
                source: Some(SourceId(9)),
                instances: vec![],
                domains: vec![],
                keep: Vec::new(),
            }],
            4,
        );
        assert!(web_ids(&m).is_empty());
        let k1 = InstanceId::new("k1").unwrap();
        assert!(m.load().key_instances(SourceId(9), &web, &k1).is_none());
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
        assert_eq!((at[0].0.name.as_str(), at[0].1.id.as_str()), ("web", "b"));
        assert!(s.instances_at("10.0.0.9".parse().unwrap()).is_empty());
        assert!(db_gen > 0);
    }

    /// One batch of watch events: each change in the log carries its own event's revision.
    #[test]
    fn the_change_log_shows_each_events_revision() {
        let m = Mirror::new();
        let del = Update::Delete {
            service: ServiceName::new("web").unwrap(),
            id: InstanceId::new("a").unwrap(),
            source: SourceId::NATIVE,
        };
        m.apply_at(
            [
                (41, put("web", "a", "10.0.0.1")),
                (42, put("web", "b", "10.0.0.2")),
                (43, del),
            ],
            43,
        );
        let log = m.recent_changes();
        let seen: Vec<(i64, ChangeKind)> = log.iter().map(|c| (c.revision, c.kind)).collect();
        assert_eq!(
            seen,
            [
                (43, ChangeKind::Delete),
                (42, ChangeKind::Put),
                (41, ChangeKind::Put)
            ]
        );
        assert_eq!(m.load().revision, 43);
    }

    /// The indexes kept up to date by every apply equal the ones rebuilt from scratch, over a
    /// seeded random mix of puts, address changes, deletes and scoped resets.
    #[test]
    fn incremental_indexes_match_a_rebuild() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let m = Mirror::new();
        let ids = ["a", "b", "c", "d"];
        let svcs = ["web", "db", "cache"];
        let mut past: Vec<Arc<Snapshot>> = Vec::new();
        let (mut vouched, mut doubted) = (0, 0);
        for round in 0..400 {
            let svc = ServiceName::new(svcs[rng.random_range(0..svcs.len())]).unwrap();
            let id = ids[rng.random_range(0..ids.len())];
            let addr = format!("10.0.0.{}", rng.random_range(1..6));
            let source = SourceId(rng.random_range(0..2));
            let update = match rng.random_range(0..10) {
                0..=5 => {
                    let mut i = inst(id, &addr);
                    i.source = source;
                    Update::Put {
                        service: svc,
                        instance: i,
                    }
                }
                6..=8 => Update::Delete {
                    service: svc,
                    id: InstanceId::new(id).unwrap(),
                    source,
                },
                _ => {
                    let mut i = inst(id, &addr);
                    i.source = source;
                    Update::Reset {
                        source: Some(source),
                        instances: vec![(svc, i)],
                        domains: vec![],
                        keep: Vec::new(),
                    }
                }
            };
            m.apply([update], round);
            let s = m.load();
            let mut want: HashMap<IpAddr, Vec<(ServiceName, InstanceKey)>> = HashMap::new();
            let mut count = 0;
            for svc in s.services.values() {
                assert!(!svc.instances.is_empty(), "empty service kept");
                for i in svc.instances.values() {
                    count += 1;
                    let ip = i.address.ip().unwrap();
                    want.entry(ip)
                        .or_default()
                        .push((svc.name.clone(), key_of(i)));
                }
            }
            assert_eq!(s.instance_count(), count, "round {round}");
            for ip in 1..6 {
                let ip: IpAddr = format!("10.0.0.{ip}").parse().unwrap();
                let mut w = want.remove(&ip).unwrap_or_default();
                w.sort();
                let at: Vec<(ServiceName, InstanceKey)> = s
                    .instances_at(ip)
                    .into_iter()
                    .map(|(svc, i)| (svc.name.clone(), key_of(i)))
                    .collect();
                assert_eq!(at, w, "round {round}, {ip}");
            }
            // A service vouched unchanged since an earlier snapshot holds what it held there.
            for p in &past {
                for name in svcs {
                    if s.unchanged_since(name, p.changes) {
                        vouched += 1;
                        let then = p.service(name).map(|x| &x.instances);
                        let now = s.service(name).map(|x| &x.instances);
                        assert_eq!(then, now, "round {round}, {name} since {}", p.changes);
                    } else {
                        doubted += 1;
                    }
                }
            }
            past.push(m.load_full());
        }
        assert!(vouched > 1000 && doubted > 1000, "{vouched} {doubted}");
    }

    #[test]
    fn a_reset_keeps_what_unreadable_keys_held() {
        let m = Mirror::new();
        m.apply(
            [
                put("web", "a", "10.0.0.1"),
                put("web", "b", "10.0.0.2"),
                replace("k1", &["n1", "n2"]),
            ],
            5,
        );
        let web = ServiceName::new("web").unwrap();
        let id = |s: &str| InstanceId::new(s).unwrap();
        // The native source re-listed: `a` could not be read, `b` is gone, `c` is new.
        m.apply(
            [Update::Reset {
                source: Some(SourceId::NATIVE),
                instances: vec![(web.clone(), inst("c", "10.0.0.3"))],
                domains: vec![],
                keep: vec![Kept::Instance(web.clone(), id("a"))],
            }],
            6,
        );
        assert_eq!(web_ids(&m), ["a", "c", "n1", "n2"]);
        // A kept key never overrides an instance listed afresh under the same id.
        m.apply(
            [Update::Reset {
                source: Some(SourceId::NATIVE),
                instances: vec![
                    (web.clone(), inst("a", "10.0.0.9")),
                    (web.clone(), inst("c", "10.0.0.3")),
                ],
                domains: vec![],
                keep: vec![Kept::Instance(web.clone(), id("a"))],
            }],
            6,
        );
        let snapshot = m.load();
        let a = snapshot
            .service("web")
            .unwrap()
            .instances
            .get(&(id("a"), SourceId::NATIVE))
            .unwrap();
        assert_eq!(a.address, inst("a", "10.0.0.9").address);
        // Source 9 re-listed with its key k1 unreadable: both nodes stay, and the key still
        // owns them (a later delete of k1 removes both).
        m.apply(
            [Update::Reset {
                source: Some(SourceId(9)),
                instances: vec![],
                domains: vec![],
                keep: vec![Kept::Instance(web.clone(), id("k1"))],
            }],
            7,
        );
        assert_eq!(web_ids(&m), ["a", "c", "n1", "n2"]);
        assert_eq!(
            m.load()
                .key_instances(SourceId(9), &web, &id("k1"))
                .unwrap()
                .len(),
            2
        );
        m.apply([replace("k1", &[])], 8);
        assert_eq!(web_ids(&m), ["a", "c"]);
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
            keep: Vec::new(),
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
                keep: Vec::new(),
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
                keep: Vec::new(),
            }],
            5,
        );
        let s = m.load();
        assert_eq!(s.domains.len(), 2, "the other source's entry stays");
        assert_eq!(s.domain_subtree(sky, "local/skydns/west").count(), 1);
    }
}
