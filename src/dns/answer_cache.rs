//! The cache of built answers: one bounded cache shared by every thread (moka), and in front
//! of it a small table per answering thread.
//!
//! A moka lookup records every read for its admission and eviction policy (a channel push, and
//! now and then a batch of bookkeeping), and in a profile of the UDP fast path that was a third
//! of ruddr's own time per answer. The front table is a plain 2-way set-associative array owned
//! by the thread: a hit is one hash, one byte comparison and an `Arc` clone. It remembers what
//! the shared cache handed out or was given, and NODATA answers (which the shared cache never
//! sees); it never decides anything: entries are checked against the service generation by the
//! caller, like a shared-cache hit. A front entry
//! also remembers the snapshot change count it was last found current at; while the registry
//! has not changed since, the caller may skip looking the service up
//! ([`AnswerCache::get_current`]), which was most of what remained of a hit's cost.
//!
//! Bounds: the shared cache by `dns.answer_cache_bytes`; each front by `dns.answer_front_bytes`
//! (its slot count is derived from that), so in all at most `answer_front_bytes` times the
//! number of answering threads on top (README "The memory bound").

use prometheus_client::metrics::counter::Counter;
use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, RecordType};
use moka::sync::Cache;
use smallvec::SmallVec;

use super::answer::{Built, Outcome};
use super::front::{Front, Holds, Table, NEXT_ID};

/// What a built answer is cached by: the name (lower case, in wire form: cheap to hash and to
/// compare), type, whether it was built stale, and the client's locality when the answer
/// follows it; all of it encoded in `bytes`, which the cached answer keeps too
/// ([`Built::keyed`]).
#[derive(Clone, Debug)]
pub struct AnswerKey {
    /// The name's lower-case wire form, the type (2 bytes), stale (1 byte), then the locality
    /// (never empty: localities are checked to be 1-63 bytes, so none and some differ).
    bytes: SmallVec<[u8; 72]>,
    locality: Option<Arc<str>>,
}

impl PartialEq for AnswerKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for AnswerKey {}

impl Hash for AnswerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}

impl AnswerKey {
    pub fn new(
        name: &LowerName,
        qtype: RecordType,
        stale: bool,
        locality: Option<Arc<str>>,
    ) -> Self {
        let mut bytes = SmallVec::new();
        // A wire name ends at its root label, so what follows cannot run into it.
        super::wire::push_lower_wire(name.iter(), &mut bytes);
        bytes.extend_from_slice(&u16::from(qtype).to_be_bytes());
        bytes.push(u8::from(stale));
        if let Some(l) = &locality {
            bytes.extend_from_slice(l.as_bytes());
        }
        Self { bytes, locality }
    }

    pub fn locality(&self) -> Option<&str> {
        self.locality.as_deref()
    }

    /// Bytes of the key itself, for the caches' byte limits.
    fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + if self.bytes.spilled() {
                self.bytes.len()
            } else {
                0
            }
    }
}

impl Holds<Arc<Built>> for AnswerKey {
    fn held_by(&self, built: &Arc<Built>) -> bool {
        built.key() == &self.bytes[..]
    }
}

/// Built answers by [`AnswerKey`].
pub struct AnswerCache {
    /// Tells the caches sharing a thread apart (tests run several handlers on one thread).
    id: u64,
    shared: Cache<AnswerKey, Arc<Built>, foldhash::fast::FixedState>,
    hasher: foldhash::fast::FixedState,
    front_bytes: usize,
    front_slots: usize,
    /// The one NXDOMAIN answer (no records; never cached).
    nxdomain: Arc<Built>,
    counters: Counters,
}

/// Where answers came from (`ruddr_dns_answer_cache_total`); unregistered until
/// [`AnswerCache::count_into`].
#[derive(Default)]
struct Counters {
    front_hit: Counter,
    shared_hit: Counter,
    built: Counter,
}

/// What a front entry holds: the answer (its key inside it) and its `Arc`'s counts; the slot
/// itself is counted with the table.
fn front_bytes_of(built: &Built) -> usize {
    built.memory_size() + ARC_COUNTS
}

/// The two counts before an `Arc`'s value.
const ARC_COUNTS: usize = 16;

/// What moka keeps per entry beyond the key and the answer (its hash table bucket, the entry's
/// shared state with its access times and policy links, the deque nodes), measured with
/// `moka_entry_overhead` below.
pub(crate) const MOKA_ENTRY_OVERHEAD: usize = 320;

/// The entry size the front sizes its slot count by: an A or SRV answer of a few instances
/// takes 200-450 bytes.
const FRONT_TYPICAL_ENTRY: usize = 320;

impl AnswerCache {
    /// `shared_bytes` bounds the shared cache; `front_bytes` each thread's front (0: no front).
    pub fn new(shared_bytes: u64, front_bytes: usize) -> Self {
        let hasher = foldhash::fast::FixedState::with_seed(rand::random());
        let shared = Cache::builder()
            .max_capacity(shared_bytes)
            .weigher(|key: &AnswerKey, built: &Arc<Built>| {
                let bytes =
                    key.memory_size() + built.memory_size() + ARC_COUNTS + MOKA_ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build_with_hasher(hasher);
        let front_slots = super::front::slots_for::<Arc<Built>>(front_bytes, FRONT_TYPICAL_ENTRY);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared,
            hasher,
            front_bytes,
            front_slots,
            nxdomain: Arc::new(Built::negative(0, Outcome::NxDomain)),
            counters: Counters::default(),
        }
    }

    /// Counts hits and builds in `metrics`.
    pub fn count_into(&mut self, metrics: &crate::metrics::Metrics) {
        use crate::metrics::AnswerSource;
        self.counters = Counters {
            front_hit: metrics.answer_source(AnswerSource::front_hit),
            shared_hit: metrics.answer_source(AnswerSource::shared_hit),
            built: metrics.answer_source(AnswerSource::built),
        };
    }

    /// The answer cached for `key`, if any (the caller checks its generation).
    #[cfg(test)]
    pub fn get(&self, key: &AnswerKey) -> Option<Arc<Built>> {
        self.find(key, |_| true)
    }

    /// The answer cached for `key` built from `generation`: this thread's when it is, else the
    /// shared cache's (which another thread may have built already: each thread building its
    /// own would keep a copy per thread alive while the registry changes).
    fn get_generation(&self, key: &AnswerKey, generation: u64) -> Option<Arc<Built>> {
        self.find(key, |b| b.generation == generation)
    }

    /// This thread's answer for `key` if `fits`, else the shared cache's if `fits` (then kept
    /// in this thread's table).
    fn find(&self, key: &AnswerKey, fits: impl Fn(&Built) -> bool) -> Option<Arc<Built>> {
        if self.front_slots == 0 {
            let found = self.shared.get(key).filter(|b| fits(b));
            if found.is_some() {
                self.counters.shared_hit.inc();
            }
            return found;
        }
        let hash = self.hasher.hash_one(key);
        let held = FRONT.with(|front| front.borrow().get(self.id, hash, key));
        if let Some(b) = held.filter(|b| fits(b)) {
            self.counters.front_hit.inc();
            return Some(b);
        }
        let built = self.shared.get(key).filter(|b| fits(b))?;
        self.counters.shared_hit.inc();
        self.put_front(hash, key, &built);
        Some(built)
    }

    /// The answer this thread's front table holds for `key`, if it was found current when the
    /// snapshot's change count was `changes` (see [`AnswerCache::confirm`]), or at an earlier
    /// count that `still` vouches for (nothing it was built from changed since). Equal counts
    /// mean equal registry contents, so such an answer needs no look at its service to be
    /// trusted.
    pub fn get_current(
        &self,
        key: &AnswerKey,
        changes: u64,
        still: impl FnOnce(u64) -> bool,
    ) -> Option<Arc<Built>> {
        if self.front_slots == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let found = FRONT.with(|front| {
            front
                .borrow_mut()
                .get_current(self.id, hash, key, changes, still)
        });
        if found.is_some() {
            self.counters.front_hit.inc();
        }
        found
    }

    /// Notes in this thread's front table that `built`, cached for `key`, was checked against
    /// (or built from) the snapshot whose change count is `changes`.
    pub fn confirm(&self, key: &AnswerKey, built: &Arc<Built>, changes: u64) {
        if self.front_slots == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        FRONT.with(|front| {
            front.borrow_mut().confirm_with(
                self.id,
                hash,
                key,
                |held| Arc::ptr_eq(held, built),
                changes,
            )
        });
    }

    /// Keeps `built` in this thread's table (when there are tables).
    fn put_front(&self, hash: u64, key: &AnswerKey, built: &Arc<Built>) {
        if self.front_slots == 0 {
            return;
        }
        let table = Table {
            owner: self.id,
            slots: self.front_slots,
            bytes: self.front_bytes,
        };
        FRONT.with(|front| {
            front
                .borrow_mut()
                .put(table, hash, key, built, front_bytes_of(built))
        });
    }

    /// The answer for `key` built from `generation`: the cached one when it was, else what
    /// `build` gives, cached; either way noted in this thread's front table as current at the
    /// snapshot change count `changes`. NXDOMAIN is never cached: the names that get it (below
    /// a service, in a SkyDNS zone) take any label, and a flood of random ones must neither
    /// grow memory nor push real answers out; it is one shared answer, built again each time
    /// (a look at one service). NODATA goes to this thread's table only: the names that get
    /// it exist, so they are few, and the shared cache keeps positive answers (without front
    /// tables, `answer_front_bytes = 0`, NODATA is not cached at all).
    pub fn get_or_build(
        &self,
        key: &AnswerKey,
        generation: u64,
        changes: u64,
        build: impl FnOnce() -> Built,
    ) -> Arc<Built> {
        let built = match self.get_generation(key, generation) {
            Some(b) => b,
            None => {
                self.counters.built.inc();
                let b = build();
                match b.outcome {
                    Outcome::Answer | Outcome::Referral => self.insert(key.clone(), b),
                    // A bare NXDOMAIN is the shared one; one with records (none is built
                    // today) goes out as it is, uncached all the same.
                    Outcome::NxDomain if b.is_empty() && !b.panic => return self.nxdomain.clone(),
                    Outcome::NxDomain => return Arc::new(b),
                    Outcome::NoData => {
                        let b = Arc::new(b.keyed(&key.bytes));
                        self.put_front(self.hasher.hash_one(key), key, &b);
                        b
                    }
                }
            }
        };
        self.confirm(key, &built, changes);
        built
    }

    /// Caches `built` for `key` (in the shared cache and this thread's front table).
    pub fn insert(&self, key: AnswerKey, built: Built) -> Arc<Built> {
        let built = Arc::new(built.keyed(&key.bytes));
        self.put_front(self.hasher.hash_one(&key), &key, &built);
        self.shared.insert(key, built.clone());
        built
    }
}

thread_local! {
    static FRONT: RefCell<Front<AnswerKey, Arc<Built>>> = const { RefCell::new(Front::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::registry::Outcome;

    fn built(generation: u64) -> Built {
        Built::negative(generation, Outcome::NoData)
    }

    fn key(name: &str) -> AnswerKey {
        let name = LowerName::new(&hickory_proto::rr::Name::from_ascii(name).unwrap());
        AnswerKey::new(&name, RecordType::A, false, None)
    }

    #[test]
    fn keys_ignore_case_and_tell_names_apart() {
        assert_eq!(key("Web.Svc.Internal."), key("web.svc.internal."));
        assert_ne!(key("web.svc.internal."), key("web.svc.internal.x."));
        // Label boundaries count: "ab.c" is not "a.bc".
        assert_ne!(key("ab.c."), key("a.bc."));
    }

    #[test]
    fn front_serves_what_was_inserted_and_follows_replacements() {
        let cache = AnswerCache::new(1 << 20, 1 << 20);
        assert!(cache.get(&key("a.")).is_none());
        cache.insert(key("a."), built(1));
        assert_eq!(cache.get(&key("a.")).unwrap().generation, 1);
        cache.insert(key("a."), built(2));
        assert_eq!(cache.get(&key("a.")).unwrap().generation, 2);
        assert!(cache.get(&key("b.")).is_none());
    }

    #[test]
    fn a_replacement_too_large_for_the_front_takes_the_old_answer_out() {
        use hickory_proto::rr::{rdata::A, Name, RData, Record};
        // Entries over 64 KiB / 16 stay out of the front.
        let cache = AnswerCache::new(1 << 20, 64 << 10);
        let small = cache.insert(key("a."), built(1));
        cache.confirm(&key("a."), &small, 3);
        assert!(cache.get_current(&key("a."), 3, |_| false).is_some());
        let mut large = crate::dns::answer::Builder::new(2);
        for i in 0..300u16 {
            let [x, y] = i.to_be_bytes();
            let record = Record::from_rdata(Name::root(), 5, RData::A(A::new(10, 0, x, y)));
            large.push(record, 0, 0, None);
        }
        let large = large.finish(&Name::root());
        assert!(large.memory_size() > (64 << 10) / 16);
        cache.insert(key("a."), large);
        assert!(cache.get_current(&key("a."), 3, |_| false).is_none());
        assert_eq!(cache.get(&key("a.")).unwrap().generation, 2);
        FRONT.with(|f| assert_eq!(f.borrow().slots.iter().flatten().count(), 0));
    }

    #[test]
    fn front_stays_within_its_bytes_and_slots() {
        let cache = AnswerCache::new(64 << 20, 64 << 10);
        for i in 0..10_000 {
            cache.insert(key(&format!("n{i}.")), built(i));
        }
        FRONT.with(|f| {
            let f = f.borrow();
            assert!(f.bytes <= 64 << 10, "{}", f.bytes);
            assert_eq!(f.slots.len(), cache.front_slots);
            let held: usize = f.slots.iter().flatten().map(|s| s.bytes as usize).sum();
            let table = f.slots.len() * std::mem::size_of_val(&f.slots[0]);
            assert_eq!(held + table, f.bytes);
            assert!(
                f.slots.iter().flatten().count() > 50,
                "the front holds entries"
            );
        });
        // Everything is still in the shared cache.
        cache.shared.run_pending_tasks();
        for i in (0..10_000).step_by(997) {
            assert_eq!(cache.get(&key(&format!("n{i}."))).unwrap().generation, i);
        }
    }

    #[test]
    fn the_front_starts_small_and_grows_with_its_entries() {
        let cache = AnswerCache::new(64 << 20, 64 << 20);
        assert!(cache.front_slots > 4 * 1024);
        cache.insert(key("first."), built(0));
        FRONT.with(|f| assert_eq!(f.borrow().slots.len(), 1024));
        for i in 0..3000 {
            cache.insert(key(&format!("n{i}.")), built(i));
        }
        FRONT.with(|f| {
            let f = f.borrow();
            assert!(f.slots.len() >= 4096, "grew to {}", f.slots.len());
            let held: usize = f.slots.iter().flatten().map(|s| s.bytes as usize).sum();
            let table = f.slots.len() * std::mem::size_of_val(&f.slots[0]);
            assert_eq!(held + table, f.bytes);
            assert_eq!(f.slots.iter().flatten().count(), f.taken);
        });
        // Growing loses nothing it held: the entries are found in the thread's table (the
        // shared cache answers the rest, so count the front's own hits).
        let found = (0..3000)
            .filter(|i| {
                let k = key(&format!("n{i}."));
                let hash = cache.hasher.hash_one(&k);
                FRONT.with(|f| f.borrow().get(cache.id, hash, &k).is_some())
            })
            .count();
        assert!(found > 2500, "{found} of 3000 in the front");
    }

    #[test]
    fn caches_sharing_a_thread_do_not_see_each_others_entries() {
        let (one, two) = (
            AnswerCache::new(1 << 20, 1 << 20),
            AnswerCache::new(1 << 20, 1 << 20),
        );
        one.insert(key("a."), built(1));
        assert!(two.get(&key("a.")).is_none());
        two.insert(key("a."), built(2));
        assert_eq!(one.get(&key("a.")).unwrap().generation, 1);
        assert_eq!(two.get(&key("a.")).unwrap().generation, 2);
    }

    #[test]
    fn an_answer_is_current_only_at_the_change_count_it_was_confirmed_at() {
        let cache = AnswerCache::new(1 << 20, 1 << 20);
        let one = cache.insert(key("a."), built(1));
        assert!(
            cache.get_current(&key("a."), 5, |_| false).is_none(),
            "not confirmed yet"
        );
        cache.confirm(&key("a."), &one, 5);
        assert_eq!(
            cache
                .get_current(&key("a."), 5, |_| false)
                .unwrap()
                .generation,
            1
        );
        assert!(
            cache.get_current(&key("a."), 6, |_| false).is_none(),
            "the registry changed since"
        );
        // Confirming another answer than the one held changes nothing.
        cache.confirm(&key("a."), &Arc::new(built(9).keyed(&key("a.").bytes)), 6);
        assert!(cache.get_current(&key("a."), 6, |_| false).is_none());
        // A replacement starts unconfirmed.
        cache.insert(key("a."), built(2));
        assert!(cache.get_current(&key("a."), 5, |_| false).is_none());
        assert!(cache.get_current(&key("b."), 5, |_| false).is_none());
    }

    #[test]
    fn an_answer_vouched_for_since_its_count_is_current_and_noted_so() {
        let cache = AnswerCache::new(1 << 20, 1 << 20);
        let one = cache.insert(key("a."), built(1));
        assert!(
            cache.get_current(&key("a."), 5, |_| true).is_none(),
            "never confirmed: nothing to vouch for"
        );
        cache.confirm(&key("a."), &one, 5);
        let mut asked = None;
        let hit = cache.get_current(&key("a."), 8, |at| {
            asked = Some(at);
            true
        });
        assert_eq!(hit.unwrap().generation, 1);
        assert_eq!(asked, Some(5), "asked about the count it was confirmed at");
        // Now noted current at 8: no question asked.
        assert!(cache
            .get_current(&key("a."), 8, |_| panic!("asked"))
            .is_some());
        assert!(cache.get_current(&key("a."), 9, |_| false).is_none());
    }

    #[test]
    fn nxdomain_is_never_cached_and_nodata_stays_in_the_thread() {
        let cache = AnswerCache::new(1 << 20, 1 << 20);
        for i in 0..1000 {
            let nx = cache.get_or_build(&key(&format!("_r{i}.web.")), 1, 1, || {
                Built::negative(1, Outcome::NxDomain)
            });
            assert!(Arc::ptr_eq(&nx, &cache.nxdomain), "the one shared NXDOMAIN");
        }
        cache.shared.run_pending_tasks();
        assert_eq!(cache.shared.entry_count(), 0);
        FRONT.with(|f| assert_eq!(f.borrow().slots.iter().flatten().count(), 0));
        let mut builds = 0;
        for _ in 0..3 {
            let nodata = cache.get_or_build(&key("web."), 1, 1, || {
                builds += 1;
                built(1)
            });
            assert_eq!(nodata.outcome, Outcome::NoData);
        }
        assert_eq!(builds, 1, "NODATA is cached in the thread's table");
        cache.shared.run_pending_tasks();
        assert_eq!(cache.shared.entry_count(), 0, "and only there");
    }

    #[test]
    fn no_front_when_its_bytes_are_zero() {
        let cache = AnswerCache::new(1 << 20, 0);
        let one = cache.insert(key("a."), built(1));
        assert_eq!(cache.get(&key("a.")).unwrap().generation, 1);
        cache.confirm(&key("a."), &one, 1);
        assert!(cache.get_current(&key("a."), 1, |_| false).is_none());
    }

    /// Measures what moka keeps per entry beyond key and value ([`MOKA_ENTRY_OVERHEAD`]):
    /// `cargo test --release --lib moka_entry_overhead -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn moka_entry_overhead() {
        fn rss() -> usize {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm.split(' ').nth(1).unwrap().parse::<usize>().unwrap() * 4096
        }
        let n = 200_000;
        let keys: Vec<AnswerKey> = (0..n)
            .map(|i| key(&format!("svc{i}.svc.internal.")))
            .collect();
        let values: Vec<Arc<Built>> = (0..n)
            .map(|i| Arc::new(built(i as u64).keyed(&keys[i].bytes)))
            .collect();
        let before = rss();
        let cache: Cache<AnswerKey, Arc<Built>> = Cache::builder().max_capacity(u64::MAX).build();
        for (k, v) in keys.iter().zip(&values) {
            cache.insert(k.clone(), v.clone());
        }
        cache.run_pending_tasks();
        let per = (rss() - before) / n;
        let key_size = keys[0].memory_size();
        println!(
            "moka: {per} bytes per entry with a {key_size}-byte key, {} counted",
            key_size + MOKA_ENTRY_OVERHEAD
        );
        assert!(
            per <= key_size + MOKA_ENTRY_OVERHEAD,
            "MOKA_ENTRY_OVERHEAD is too low"
        );
    }
}
