//! Forwarded answers kept for their TTLs (RFC 1035 §7.4, RFC 2308 for negative ones), keyed by
//! the question and the flags that change an upstream's answer. Rebuildable data only, so moka's
//! admission policy refusing a new key is acceptable here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RData;
use smallvec::SmallVec;

use std::cell::RefCell;
use std::hash::BuildHasher;

use crate::dns::answer::Relayed;
use crate::dns::front::{slots_for, Front, Holds, Table, NEXT_ID};
use crate::dns::wire::push_lower_wire;

/// What an upstream's answer depends on: the question (name case-insensitively) and the
/// DO, CD and RD bits. RD is included because an RD=0 query to a recursive upstream gets only
/// what it has cached, which must not be served to RD=1 clients.
///
/// The name is kept in lower-case wire form: hashing and comparing it is a few bytes (the
/// profile of cache hits showed hickory's case-insensitive name comparison and SipHash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    name: SmallVec<[u8; 64]>,
    qtype: u16,
    class: u16,
    /// DO, CD and RD, one bit each.
    flags: u8,
}

impl Key {
    /// The key of `request`'s first question, with its DO, CD and RD bits.
    pub fn of(request: &hickory_server::server::Request) -> Option<Self> {
        let query = request.queries.queries().first()?;
        Some(Self::new(
            query.original(),
            request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            request.metadata.checking_disabled,
            request.metadata.recursion_desired,
        ))
    }

    pub fn new(
        query: &Query,
        dnssec_ok: bool,
        checking_disabled: bool,
        recursion_desired: bool,
    ) -> Self {
        let mut name = SmallVec::new();
        push_lower_wire(query.name().iter(), &mut name);
        Self {
            name,
            qtype: query.query_type().into(),
            class: query.query_class().into(),
            flags: u8::from(dnssec_ok)
                | u8::from(checking_disabled) << 1
                | u8::from(recursion_desired) << 2,
        }
    }
}

/// One stored answer: rendered (its size counts against the byte bound), when it was stored,
/// and how long it may be served.
struct Stored {
    /// What it is stored under (the front tables compare keys with it).
    key: Key,
    answer: Arc<Relayed>,
    upstream: SocketAddr,
    stored_at: Instant,
    ttl: Duration,
}

/// moka's per-entry expiry: an entry is dropped once its TTL has run out. Reads also check the
/// age themselves, against the caller's clock, so a read never serves an expired answer.
struct ByTtl;

impl moka::Expiry<Key, Arc<Stored>> for ByTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    /// A replaced entry lives for its own TTL (the default would keep the old entry's).
    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Arc<Stored>,
        _updated_at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The answer cache; disabled (every lookup a miss, nothing stored) when built with 0 bytes.
/// A table per answering thread sits in front of the shared cache ([`crate::dns::front`]).
pub struct Answers {
    entries: Option<moka::sync::Cache<Key, Arc<Stored>, foldhash::fast::FixedState>>,
    hasher: foldhash::fast::FixedState,
    front: Table,
    max_ttl: Duration,
}

/// What one stored answer holds beyond its rendered answer: the entry (with its key), the
/// relayed answer and the built one, each with its `Arc` counts.
const STORED_OVERHEAD: usize =
    std::mem::size_of::<Stored>() + std::mem::size_of::<Relayed>() + 3 * 16;

/// Bytes of `stored` as a thread's front table counts them (as the answer cache does: the
/// entry, not the shared cache's state for it).
fn bytes_of(stored: &Stored) -> usize {
    stored.answer.built.memory_size() + spilled(&stored.key) + STORED_OVERHEAD
}

/// Bytes of `stored` in the shared cache: also moka's copy of the key and its own per-entry
/// state (measured, see `answer_cache::MOKA_ENTRY_OVERHEAD`).
fn shared_bytes_of(stored: &Stored) -> usize {
    bytes_of(stored)
        + std::mem::size_of::<Key>()
        + spilled(&stored.key)
        + crate::dns::answer_cache::MOKA_ENTRY_OVERHEAD
}

/// Heap bytes of a key whose name did not fit inline.
fn spilled(key: &Key) -> usize {
    if key.name.spilled() {
        key.name.len()
    } else {
        0
    }
}

/// The entry size the front table sizes its slot count by (an answer of a few records).
const FRONT_TYPICAL_ENTRY: usize = 1536;

thread_local! {
    static FRONT: RefCell<Front<Key, Arc<Stored>>> = const { RefCell::new(Front::new()) };
}

impl Holds<Arc<Stored>> for Key {
    fn held_by(&self, stored: &Arc<Stored>) -> bool {
        stored.key == *self
    }
}

impl Answers {
    /// At most about `bytes` of answers (0: no cache), each kept at most `max_ttl`, and
    /// `front_bytes` more in each answering thread's table.
    pub fn new(bytes: u64, max_ttl: Duration, front_bytes: usize) -> Self {
        let hasher = foldhash::fast::FixedState::with_seed(rand::random());
        let entries = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_key: &Key, value: &Arc<Stored>| {
                    let size = shared_bytes_of(value);
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .expire_after(ByTtl)
                .build_with_hasher(hasher)
        });
        let front = Table {
            owner: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            slots: if entries.is_some() {
                slots_for::<Arc<Stored>>(front_bytes, FRONT_TYPICAL_ENTRY)
            } else {
                0
            },
            bytes: front_bytes,
        };
        Self {
            entries,
            hasher,
            front,
            max_ttl,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The stored answer for `key` and the whole seconds it has been in the cache (to take off
    /// its TTLs).
    pub fn get(&self, key: &Key, now: Instant) -> Option<(SocketAddr, Arc<Relayed>, u32)> {
        let entries = self.entries.as_ref()?;
        let hash = self.hasher.hash_one(key);
        let t = self.front;
        let held = FRONT.with(|f| f.borrow().get(t.owner, hash, key));
        // An entry past its TTL in the front is a miss there: the shared cache decides.
        let stored = match held.filter(|s| now.saturating_duration_since(s.stored_at) < s.ttl) {
            Some(stored) => stored,
            None => {
                let stored = entries.get(key)?;
                // The entry is the shared cache's too, but may outlive it there.
                let bytes = bytes_of(&stored);
                FRONT.with(|f| f.borrow_mut().put(t, hash, key, &stored, bytes));
                stored
            }
        };
        let age = now.saturating_duration_since(stored.stored_at);
        if age >= stored.ttl {
            entries.invalidate(key);
            return None;
        }
        let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        Some((stored.upstream, stored.answer.clone(), age))
    }

    /// Stores `message` from `upstream` if it may be cached (see [`cache_ttl`]), with record
    /// TTLs capped at the cache's maximum.
    pub fn insert(&self, key: Key, upstream: SocketAddr, message: &Message, now: Instant) {
        let Some(entries) = &self.entries else {
            return;
        };
        let Some(ttl) = cache_ttl(message, self.max_ttl) else {
            return;
        };
        let mut message = message.clone();
        let cap = u32::try_from(self.max_ttl.as_secs()).unwrap_or(u32::MAX);
        for record in sections_mut(&mut message) {
            record.ttl = record.ttl.min(cap);
        }
        if is_negative(&message) {
            // RFC 2308 §3: the SOA of a negative answer carries the negative TTL, so it counts
            // down to 0 with the entry and clients keep the answer no longer than we do.
            let negative = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
            for record in &mut message.authorities {
                if matches!(record.data, RData::SOA(_)) {
                    record.ttl = record.ttl.min(negative);
                }
            }
        }
        entries.insert(
            key.clone(),
            Arc::new(Stored {
                key,
                answer: Arc::new(Relayed::new(&message)),
                upstream,
                stored_at: now,
                ttl,
            }),
        );
    }

    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.weighted_size()
        })
    }
}

fn sections_mut(message: &mut Message) -> impl Iterator<Item = &mut hickory_proto::rr::Record> {
    message
        .answers
        .iter_mut()
        .chain(message.authorities.iter_mut())
        .chain(message.additionals.iter_mut())
}

/// How long `message` may be served from the cache, or `None` if it must not be cached:
/// - a positive answer: its smallest answer-record TTL;
/// - NXDOMAIN, or NOERROR without answers (NODATA): min(SOA TTL, SOA MINIMUM) of the SOA in the
///   authority section (RFC 2308 §5), and never without one;
/// - anything else (SERVFAIL, REFUSED, ...), a truncated answer, or a TTL of 0: not cached.
///
/// Capped at `max_ttl`.
pub fn cache_ttl(message: &Message, max_ttl: Duration) -> Option<Duration> {
    if message.metadata.truncation {
        return None;
    }
    if !matches!(
        message.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        return None;
    }
    let negative = is_negative(message);
    let mut ttl = message.answers.iter().map(|r| r.ttl).min();
    if negative {
        let soa = message.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?;
        ttl = Some(ttl.map_or(soa, |t| t.min(soa)));
    }
    let ttl = Duration::from_secs(u64::from(ttl?)).min(max_ttl);
    (!ttl.is_zero()).then_some(ttl)
}

/// NXDOMAIN, or NOERROR without answers (NODATA).
fn is_negative(message: &Message) -> bool {
    message.metadata.response_code == ResponseCode::NXDomain || message.answers.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::{Name, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn key(q: &str, dnssec_ok: bool, checking_disabled: bool) -> Key {
        Key::new(
            &Query::query(name(q), RecordType::A),
            dnssec_ok,
            checking_disabled,
            true,
        )
    }

    /// What a client asking `question` would decode from the cache's answer.
    fn get_message(
        cache: &Answers,
        key: &Key,
        question: &Name,
        now: Instant,
    ) -> Option<(SocketAddr, Message)> {
        cache
            .get(key, now)
            .map(|(addr, relayed, age)| (addr, relayed.message(question, age)))
    }

    fn upstream() -> SocketAddr {
        "127.0.0.1:53".parse().unwrap()
    }

    fn answer(q: &str, ttl: u32) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(q), RecordType::A));
        m.add_answer(Record::from_rdata(
            name(q),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn negative(code: ResponseCode, soa_ttl: Option<(u32, u32)>) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        m.add_query(Query::query(name("gone.example."), RecordType::A));
        if let Some((ttl, minimum)) = soa_ttl {
            let soa = SOA::new(
                name("ns.example."),
                name("hostmaster.example."),
                1,
                3600,
                600,
                86400,
                minimum,
            );
            m.add_authority(Record::from_rdata(name("example."), ttl, RData::SOA(soa)));
        }
        m
    }

    #[test]
    fn ttls_count_down_while_cached() {
        let cache = Answers::new(1 << 20, Duration::from_secs(3600), 1 << 16);
        let t0 = Instant::now();
        cache.insert(
            key("a.example.", false, false),
            upstream(),
            &answer("a.example.", 300),
            t0,
        );
        let get = |after: u64| {
            get_message(
                &cache,
                &key("a.example.", false, false),
                &name("a.example."),
                t0 + Duration::from_secs(after),
            )
            .map(|(_, m)| m.answers[0].ttl)
        };
        assert_eq!(get(0), Some(300));
        assert_eq!(get(10), Some(290));
        assert_eq!(get(299), Some(1));
        assert_eq!(get(300), None, "expired at its TTL");
    }

    #[test]
    fn ttls_are_capped() {
        let cache = Answers::new(1 << 20, Duration::from_secs(3600), 1 << 16);
        let t0 = Instant::now();
        cache.insert(
            key("a.example.", false, false),
            upstream(),
            &answer("a.example.", 86400),
            t0,
        );
        let (_, m) = get_message(
            &cache,
            &key("a.example.", false, false),
            &name("a.example."),
            t0,
        )
        .unwrap();
        assert_eq!(m.answers[0].ttl, 3600);
        let later = t0 + Duration::from_secs(3600);
        assert!(get_message(
            &cache,
            &key("a.example.", false, false),
            &name("a.example."),
            later
        )
        .is_none());
    }

    #[test]
    fn negative_answers_follow_rfc_2308() {
        let max = Duration::from_secs(3600);
        let secs = |m: &Message| cache_ttl(m, max).map(|d| d.as_secs());
        // min(SOA TTL, SOA MINIMUM), for NXDOMAIN and NODATA alike.
        assert_eq!(
            secs(&negative(ResponseCode::NXDomain, Some((600, 60)))),
            Some(60)
        );
        assert_eq!(
            secs(&negative(ResponseCode::NXDomain, Some((30, 60)))),
            Some(30)
        );
        assert_eq!(
            secs(&negative(ResponseCode::NoError, Some((600, 120)))),
            Some(120)
        );
        // No SOA: not cached.
        assert_eq!(secs(&negative(ResponseCode::NXDomain, None)), None);
        assert_eq!(secs(&negative(ResponseCode::NoError, None)), None);
        // Failures and truncated answers are never cached.
        assert_eq!(
            secs(&negative(ResponseCode::ServFail, Some((600, 60)))),
            None
        );
        assert_eq!(
            secs(&negative(ResponseCode::Refused, Some((600, 60)))),
            None
        );
        let mut truncated = answer("a.example.", 300);
        truncated.metadata.truncation = true;
        assert_eq!(secs(&truncated), None);
        assert_eq!(
            secs(&answer("a.example.", 0)),
            None,
            "TTL 0 means do not cache"
        );
        assert_eq!(
            secs(&negative(ResponseCode::NXDomain, Some((86400, 86400)))),
            Some(3600)
        );

        let cache = Answers::new(1 << 20, max, 1 << 16);
        let t0 = Instant::now();
        let k = Key::new(
            &Query::query(name("gone.example."), RecordType::A),
            false,
            false,
            true,
        );
        cache.insert(
            k.clone(),
            upstream(),
            &negative(ResponseCode::NXDomain, Some((600, 60))),
            t0,
        );
        let (_, m) = get_message(
            &cache,
            &k,
            &name("gone.example."),
            t0 + Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            m.authorities[0].ttl, 40,
            "the SOA counts down from the negative TTL"
        );
        assert!(get_message(
            &cache,
            &k,
            &name("gone.example."),
            t0 + Duration::from_secs(60)
        )
        .is_none());
        let k2 = Key::new(
            &Query::query(name("gone.example."), RecordType::MX),
            false,
            false,
            true,
        );
        cache.insert(
            k2.clone(),
            upstream(),
            &negative(ResponseCode::NXDomain, None),
            t0,
        );
        assert!(get_message(&cache, &k2, &name("gone.example."), t0).is_none());
    }

    #[test]
    fn key_includes_do_and_cd_but_not_case() {
        let cache = Answers::new(1 << 20, Duration::from_secs(3600), 1 << 16);
        let t0 = Instant::now();
        cache.insert(
            key("a.example.", false, false),
            upstream(),
            &answer("a.example.", 300),
            t0,
        );
        let q = name("a.example.");
        assert!(get_message(&cache, &key("a.example.", true, false), &q, t0).is_none());
        assert!(get_message(&cache, &key("a.example.", false, true), &q, t0).is_none());
        let rd0 = Key::new(&Query::query(q.clone(), RecordType::A), false, false, false);
        assert!(get_message(&cache, &rd0, &q, t0).is_none());
        assert!(get_message(&cache, &key("A.Example.", false, false), &q, t0).is_some());
    }

    #[test]
    fn the_clients_case_is_restored() {
        let cache = Answers::new(1 << 20, Duration::from_secs(3600), 1 << 16);
        let t0 = Instant::now();
        let mut stored = answer("www.example.", 300);
        stored.add_answer(Record::from_rdata(
            name("Other.example."),
            300,
            RData::A(A::new(192, 0, 2, 2)),
        ));
        cache.insert(key("www.example.", false, false), upstream(), &stored, t0);
        let theirs = name("wWw.ExAmple.");
        let (_, m) = get_message(&cache, &key("WWW.EXAMPLE.", false, false), &theirs, t0).unwrap();
        assert!(m.answers[0].name.eq_case(&theirs));
        assert!(
            m.answers[1].name.eq_case(&name("Other.example.")),
            "other owner names stay as received"
        );
    }

    #[test]
    fn size_is_bounded_in_bytes() {
        let bytes = 64 * 1024;
        let cache = Answers::new(bytes, Duration::from_secs(3600), 1 << 16);
        let t0 = Instant::now();
        for i in 0..2000 {
            let q = format!("host-{i}.example.");
            let mut m = answer(&q, 300);
            for j in 0..10 {
                m.add_answer(Record::from_rdata(
                    name(&q),
                    300,
                    RData::A(A::new(10, 0, 0, j)),
                ));
            }
            cache.insert(key(&q, false, false), upstream(), &m, t0);
        }
        let size = cache.weighted_size();
        assert!(
            size > 0 && size <= bytes,
            "{size} bytes cached, limit {bytes}"
        );
        let off = Answers::new(0, Duration::from_secs(3600), 1 << 16);
        off.insert(
            key("a.example.", false, false),
            upstream(),
            &answer("a.example.", 300),
            t0,
        );
        assert!(!off.is_enabled());
        assert!(get_message(
            &off,
            &key("a.example.", false, false),
            &name("a.example."),
            t0
        )
        .is_none());
    }
}
