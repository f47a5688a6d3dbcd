//! The open TCP connections: the caps overall and per client, and finding the longest-idle
//! connection to close when a cap is reached (RFC 7766 6.2.3).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::DnsConfig;

/// One open connection in the table.
struct Entry {
    client: IpAddr,
    slot: Arc<SlotState>,
}

/// What a connection and the table share.
pub(super) struct SlotState {
    /// Milliseconds after the table's epoch of the last query or response.
    pub(super) last_active: AtomicU64,
    /// Queries in flight on the connection.
    pub(super) busy: AtomicUsize,
    /// Cancelled to close the connection (to make room for another).
    pub(super) closed: CancellationToken,
}

/// A connection's place in the table; leaving it frees the place.
pub(super) struct Slot {
    id: u64,
    state: Arc<SlotState>,
    table: Arc<Connections>,
}

impl std::ops::Deref for Slot {
    type Target = SlotState;
    fn deref(&self) -> &SlotState {
        &self.state
    }
}

impl Slot {
    pub(super) fn touch(&self, table: &Connections) {
        self.last_active.store(table.now_ms(), Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// The open TCP connections, for the caps and for finding the longest-idle one.
pub(super) struct Connections {
    epoch: Instant,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(super) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            inner: Mutex::new(Table::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change leaves the table whole: a poisoned lock still holds a usable table.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection from `client`, first closing the longest-idle
    /// connections (of that client at its cap, of anyone at the overall cap) to make room.
    /// Returns the place and how many connections were closed for it.
    pub(super) fn admit(self: &Arc<Self>, client: IpAddr, limits: &DnsConfig) -> (Slot, u64) {
        let mut evicted = 0;
        let mut table = self.table();
        while table.per_client.get(&client).copied().unwrap_or(0)
            >= limits.tcp_max_connections_per_client.max(1)
            && Self::evict_in(&mut table, Some(client))
        {
            evicted += 1;
        }
        while table.open.len() >= limits.tcp_max_connections.max(1)
            && Self::evict_in(&mut table, None)
        {
            evicted += 1;
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(SlotState {
            last_active: AtomicU64::new(self.now_ms()),
            busy: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        });
        table.open.insert(
            id,
            Entry {
                client,
                slot: state.clone(),
            },
        );
        *table.per_client.entry(client).or_default() += 1;
        drop(table);
        let slot = Slot {
            id,
            state,
            table: self.clone(),
        };
        (slot, evicted)
    }

    /// Closes the longest-idle connection (of `client`, if given): one with no query in flight
    /// if there is one. Returns whether one was closed.
    pub(super) fn evict(&self, client: Option<IpAddr>) -> bool {
        Self::evict_in(&mut self.table(), client)
    }

    fn evict_in(table: &mut Table, client: Option<IpAddr>) -> bool {
        let victim = table
            .open
            .iter()
            .filter(|(_, e)| client.is_none_or(|c| e.client == c))
            .min_by_key(|(_, e)| {
                (
                    e.slot.busy.load(Relaxed) > 0,
                    e.slot.last_active.load(Relaxed),
                )
            })
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(entry) = Self::remove_in(table, id) {
            entry.slot.closed.cancel();
        }
        true
    }

    fn remove(&self, id: u64) {
        Self::remove_in(&mut self.table(), id);
    }

    fn remove_in(table: &mut Table, id: u64) -> Option<Entry> {
        let entry = table.open.remove(&id)?;
        if let Some(n) = table.per_client.get_mut(&entry.client) {
            *n -= 1;
            if *n == 0 {
                table.per_client.remove(&entry.client);
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize) -> DnsConfig {
        DnsConfig {
            tcp_max_connections: max,
            tcp_max_connections_per_client: per_client,
            ..DnsConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_table_closes_the_longest_idle_connection() {
        let table = Arc::new(Connections::new(Instant::now()));
        let l = limits(3, 3);
        let (a, _) = table.admit(ip("127.0.0.1"), &l);
        let (b, _) = table.admit(ip("127.0.0.2"), &l);
        let (c, _) = table.admit(ip("127.0.0.3"), &l);
        a.last_active.store(50, Relaxed);
        b.last_active.store(10, Relaxed);
        c.last_active.store(30, Relaxed);
        let (d, evicted) = table.admit(ip("127.0.0.4"), &l);
        assert_eq!(evicted, 1);
        d.last_active.store(100, Relaxed);
        assert!(b.closed.is_cancelled(), "the longest idle goes");
        assert!(!a.closed.is_cancelled() && !c.closed.is_cancelled());
        assert_eq!(table.table().open.len(), 3);
        // A busy connection goes after every idle one, even if it was quiet for longer.
        c.busy.store(1, Relaxed);
        c.last_active.store(0, Relaxed);
        let (_e, evicted) = table.admit(ip("127.0.0.5"), &l);
        assert_eq!(evicted, 1);
        assert!(a.closed.is_cancelled() && !c.closed.is_cancelled());
        // Dropping a closed slot does not disturb the table.
        drop(b);
        drop(a);
        assert_eq!(table.table().open.len(), 3);
    }

    #[test]
    fn per_client_cap_closes_that_clients_connection() {
        let table = Arc::new(Connections::new(Instant::now()));
        let l = limits(100, 2);
        let (x1, _) = table.admit(ip("10.0.0.1"), &l);
        let (other, _) = table.admit(ip("10.0.0.2"), &l);
        let (x2, _) = table.admit(ip("10.0.0.1"), &l);
        other.last_active.store(0, Relaxed);
        x1.last_active.store(5, Relaxed);
        x2.last_active.store(9, Relaxed);
        let (_x3, evicted) = table.admit(ip("10.0.0.1"), &l);
        assert_eq!(evicted, 1);
        assert!(x1.closed.is_cancelled());
        assert!(
            !other.closed.is_cancelled(),
            "another client is never closed for it"
        );
        assert_eq!(table.table().per_client[&ip("10.0.0.1")], 2);
        drop(other);
        assert!(!table.table().per_client.contains_key(&ip("10.0.0.2")));
    }
}
