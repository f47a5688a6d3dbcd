//! A table per thread in front of a shared cache (moka): a hit is one hash, one key
//! comparison and a clone, without the shared cache's per-read bookkeeping. It never decides
//! anything: callers check an entry as they would a shared-cache hit. 2-way set-associative,
//! bounded in bytes.
//!
//! A slot is a hash, a count, a size and the value (an `Arc`), inline in one array: the key is
//! not stored again, each value carries its own ([`Holds`]), so a slot costs 32 bytes rather
//! than a boxed copy of the key per thread.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;

/// Ids for the caches that own front tables (tests run several on one thread).
pub static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A key that can tell whether a value was stored under it (values carry their key).
pub trait Holds<V> {
    fn held_by(&self, value: &V) -> bool;
}

/// A front table's owner and bounds.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The cache the entries belong to; another one's use starts the table afresh.
    pub owner: u64,
    /// Slots, a power of two (pairs of slots make a set).
    pub slots: usize,
    /// Bytes the slots and the entries may hold in all.
    pub bytes: usize,
}

/// Slots for a table of `bytes` whose entries take about `typical` bytes each, counting a
/// slot's own size (0: no table).
pub fn slots_for<V>(bytes: usize, typical: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        let per = typical + slot_bytes::<V>();
        (bytes / per).next_power_of_two().clamp(64, 1 << 17)
    }
}

/// One thread's front table: slots in pairs (a 2-way set per hash). The slot array starts
/// small and doubles whenever an entry would push another out, up to the owner's `slots`: a
/// thread that answers a few names (or none: most forward tables) does not hold a full-size
/// array, and a busy one loses no entry to a collision the full size would have avoided.
pub struct Front<K, V> {
    owner: u64,
    pub(crate) slots: Vec<Option<Slot<V>>>,
    /// Slots taken.
    pub(crate) taken: usize,
    /// Bytes held: the slot array and the entries' own sizes, at most the owner's bound.
    pub(crate) bytes: usize,
    key: PhantomData<fn(&K)>,
}

pub(crate) struct Slot<V> {
    hash: u64,
    /// A count the value was last found current at ([`NEVER`]: not yet); see
    /// [`Front::get_current`].
    current_at: u64,
    /// The entry's size as counted against the bound.
    pub(crate) bytes: u32,
    value: V,
}

/// Slots a table starts with (32 KiB of 32-byte slots).
const FIRST_SLOTS: usize = 1024;

impl<V> Slot<V> {
    /// Whether this slot holds the value for `key` (hashed to `hash`).
    fn holds<K: Holds<V>>(&self, hash: u64, key: &K) -> bool {
        self.hash == hash && key.held_by(&self.value)
    }
}

/// What one slot takes.
const fn slot_bytes<V>() -> usize {
    std::mem::size_of::<Option<Slot<V>>>()
}

/// No count: counts start from 0 and never reach it.
const NEVER: u64 = u64::MAX;

impl<K: Holds<V>, V: Clone> Default for Front<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Holds<V>, V: Clone> Front<K, V> {
    pub const fn new() -> Self {
        Self {
            owner: 0,
            slots: Vec::new(),
            taken: 0,
            bytes: 0,
            key: PhantomData,
        }
    }

    fn set(slots: usize, hash: u64) -> usize {
        // The low bits pick the set; each set is two neighbouring slots.
        (hash as usize & (slots / 2 - 1)) * 2
    }

    /// Where `owner`'s table holds `key` (hashed to `hash`), if it does.
    fn find(&self, owner: u64, hash: u64, key: &K) -> Option<usize> {
        if self.owner != owner || self.slots.is_empty() {
            return None;
        }
        let set = Self::set(self.slots.len(), hash);
        (set..set + 2).find(|&i| self.slots[i].as_ref().is_some_and(|s| s.holds(hash, key)))
    }

    /// The value held for `key` (hashed to `hash`) in `owner`'s table.
    pub fn get(&self, owner: u64, hash: u64, key: &K) -> Option<V> {
        let i = self.find(owner, hash, key)?;
        self.slots[i].as_ref().map(|s| s.value.clone())
    }

    /// The value held for `key` if it was noted current at `count` ([`Front::confirm_with`]),
    /// or at an earlier count that `still` vouches for (it is then noted current at `count`).
    pub fn get_current(
        &mut self,
        owner: u64,
        hash: u64,
        key: &K,
        count: u64,
        still: impl FnOnce(u64) -> bool,
    ) -> Option<V> {
        if count == NEVER {
            return None;
        }
        let i = self.find(owner, hash, key)?;
        let slot = self.slots[i].as_mut()?;
        if slot.current_at != count {
            if slot.current_at == NEVER || !still(slot.current_at) {
                return None;
            }
            slot.current_at = count;
        }
        Some(slot.value.clone())
    }

    /// Notes that the value held for `key`, if it is `value` (`same`), is current at `count`.
    pub fn confirm_with(
        &mut self,
        owner: u64,
        hash: u64,
        key: &K,
        same: impl Fn(&V) -> bool,
        count: u64,
    ) {
        let Some(i) = self.find(owner, hash, key) else {
            return;
        };
        if let Some(slot) = self.slots[i].as_mut().filter(|s| same(&s.value)) {
            slot.current_at = count;
        }
    }

    /// Holds `value` (taking `bytes`) for `key`, replacing what the key held; a value over a
    /// sixteenth of the table stays out (and takes the old one out with it).
    pub fn put(&mut self, table: Table, hash: u64, key: &K, value: &V, bytes: usize) {
        if table.slots == 0 {
            return;
        }
        if self.owner != table.owner {
            self.owner = table.owner;
            self.slots.clear();
            self.slots.shrink_to_fit();
            self.slots
                .resize_with(table.slots.min(FIRST_SLOTS), || None);
            self.taken = 0;
            self.bytes = self.slots.len() * slot_bytes::<V>();
        } else if self.slots.len() < table.slots && self.would_evict(hash, key) {
            // A full set: grow rather than drop an entry, while the table may.
            self.grow(table);
        }
        let set = Self::set(self.slots.len(), hash);
        // The slot holding this key (whose value this one replaces, admitted or not), else an
        // empty one, else the one the hash's high bit picks.
        let held = self.find(table.owner, hash, key).map(|i| i - set);
        if let Some(i) = held {
            self.take(set + i);
        }
        // A few large values must not take the whole table.
        let Ok(small) = u32::try_from(bytes) else {
            return;
        };
        if bytes > table.bytes / 16 {
            return;
        }
        let pick = held
            .or_else(|| (0..2).find(|&i| self.slots[set + i].is_none()))
            .unwrap_or((hash >> 63) as usize);
        self.take(set + pick);
        if self.bytes + bytes > table.bytes {
            return;
        }
        self.bytes += bytes;
        self.taken += 1;
        self.slots[set + pick] = Some(Slot {
            hash,
            current_at: NEVER,
            bytes: small,
            value: value.clone(),
        });
    }

    /// Whether holding `key` would push another key's entry out (its set is full of others).
    fn would_evict(&self, hash: u64, key: &K) -> bool {
        let set = Self::set(self.slots.len(), hash);
        self.slots[set..set + 2]
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| !s.holds(hash, key)))
    }

    /// Empties slot `i`.
    fn take(&mut self, i: usize) {
        if let Some(old) = self.slots[i].take() {
            self.bytes -= old.bytes as usize;
            self.taken -= 1;
        }
    }

    /// Doubles the slot array (within the table's slots and bytes), moving every entry to its
    /// set there (two entries of a set go to two sets, so none is lost).
    fn grow(&mut self, table: Table) {
        let len = self.slots.len() * 2;
        let more = self.slots.len() * slot_bytes::<V>();
        if len > table.slots || self.bytes + more > table.bytes {
            return;
        }
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(len, || None);
        self.bytes += more;
        for slot in old.into_iter().flatten() {
            let set = Self::set(len, slot.hash);
            let free = (0..2).find(|&i| self.slots[set + i].is_none());
            match free {
                Some(i) => self.slots[set + i] = Some(slot),
                None => {
                    self.bytes -= slot.bytes as usize;
                    self.taken -= 1;
                }
            }
        }
    }
}
