//! Identical questions in flight at once share one upstream query: the first asker leads,
//! later ones wait for its outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::cache::Key;

/// What a leader found: the answering upstream and its message, or nothing (SERVFAIL).
pub type Outcome = Arc<Option<(SocketAddr, Arc<crate::dns::answer::Relayed>)>>;

type Slot = watch::Receiver<Option<Outcome>>;

/// Questions being asked upstream right now.
#[derive(Default)]
pub struct InFlight {
    /// A std `Mutex`: held for one map operation, never across an await.
    asking: Mutex<HashMap<Key, Slot>>,
}

/// The caller's part in answering a question.
pub enum Role<'a> {
    /// Ask the upstreams, then [`Lead::finish`].
    Lead(Lead<'a>),
    /// Wait for the leader's outcome with [`wait`].
    Follow(Slot),
}

/// The right and duty to ask upstreams for one question; dropping it without `finish` tells
/// the followers the leader gave up.
pub struct Lead<'a> {
    flights: &'a InFlight,
    key: Key,
    tx: watch::Sender<Option<Outcome>>,
}

impl InFlight {
    fn asking(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // A poisoned lock still holds a valid map: each use is one insert, lookup or remove.
        self.asking.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leads `key` if nobody is asking it, or follows whoever is.
    pub fn join(&self, key: Key) -> Role<'_> {
        let mut asking = self.asking();
        if let Some(slot) = asking.get(&key) {
            return Role::Follow(slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        asking.insert(key.clone(), rx);
        Role::Lead(Lead {
            flights: self,
            key,
            tx,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.asking().len()
    }
}

impl Lead<'_> {
    /// Hands `outcome` to every follower.
    pub fn finish(self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // Later askers start their own query (or find the cache filled by the leader).
        self.flights.asking().remove(&self.key);
    }
}

/// The leader's outcome, or `None` if it gave up without one.
pub async fn wait(mut slot: Slot) -> Option<Outcome> {
    let outcome = slot.wait_for(Option::is_some).await.ok()?;
    outcome.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn key(name: &str) -> Key {
        let q = Query::query(Name::from_ascii(name).unwrap(), RecordType::A);
        Key::new(&q, false, false, true)
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let flights = InFlight::default();
        let Role::Lead(lead) = flights.join(key("a.example.")) else {
            panic!("the first asker leads");
        };
        let Role::Follow(slot) = flights.join(key("A.example.")) else {
            panic!("the same question follows");
        };
        assert!(matches!(flights.join(key("b.example.")), Role::Lead(_)));
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        lead.finish(Arc::new(Some((
            addr,
            Arc::new(crate::dns::answer::Relayed::new(&Message::query())),
        ))));
        let outcome = wait(slot).await.unwrap();
        assert_eq!(outcome.as_ref().as_ref().map(|(a, _)| *a), Some(addr));
        assert_eq!(
            flights.len(),
            0,
            "a finished question is no longer in flight"
        );
    }

    #[tokio::test]
    async fn a_leader_that_gives_up_releases_its_followers() {
        let flights = InFlight::default();
        let lead = flights.join(key("a.example."));
        let Role::Follow(slot) = flights.join(key("a.example.")) else {
            panic!("the same question follows");
        };
        drop(lead);
        assert!(wait(slot).await.is_none());
        assert!(matches!(flights.join(key("a.example.")), Role::Lead(_)));
    }
}
