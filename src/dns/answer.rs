//! Built answers, what every zone gives the answer core: the records for one name and type
//! rendered to wire form once (with their glue, and for referrals and relayed upstream answers
//! the authority and additional records), their ordering keys, and the per-response order
//! (weighted random, with the RNG passed in). [`super::wire::write_reply`] writes them.

use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, Record};
use rand::Rng;

/// What a built answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with records.
    Answer,
    /// NOERROR, no records of that type (the name exists).
    NoData,
    /// The name does not exist.
    NxDomain,
    /// NOERROR, not authoritative: the name is below a zone cut; the authority section holds
    /// the delegation's NS records and the additional section their glue.
    Referral,
}

/// What the client's locality did to an answer (README "Locality-aware answers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// Locality plays no part: it is off, or the name is an instance's own.
    Ignored,
    /// The name follows locality, but the client has none: every served instance.
    Unlocated,
    /// Local instances only (`only`), or first (`prefer`).
    Local,
    /// Too few local instances: every served instance (`only`), or none local to prefer.
    SpillOver,
}

impl Locality {
    /// Whether another locality could have got another answer.
    pub fn depends_on_client(self) -> bool {
        matches!(self, Locality::Local | Locality::SpillOver)
    }
}

/// The largest DNS message (over TCP); answers are cut to fit it.
const MAX_MESSAGE: usize = 65_535;

/// One record of an answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub record: Record,
    /// SRV priority (0 for other types): lower comes first in every response.
    pub priority: u16,
    /// Weight within a priority: a higher one is more likely to come first.
    pub weight: u16,
    /// Addresses of the record's target (SRV, MX, NS), for the additional section. A boxed
    /// slice: most answers (A, AAAA, TXT) have none, and an empty one allocates nothing.
    pub glue: Box<[Record]>,
    /// The owner is not the question's name (a CNAME chain's later records): written whole
    /// rather than as a pointer to the question.
    pub owned: bool,
    /// Upper bound of the record's wire size, its owner counted as a 2-byte pointer to the
    /// question unless `owned`. Set by [`Builder::finish`].
    pub size: usize,
}

/// A built answer rendered once, apart from its records, so that a response reads a few
/// contiguous bytes rather than a scattered struct and two boxes per record: per answer its
/// ordering keys and where its bytes are, and all the bytes in one block.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    /// One per answer, in the order the builder was given them.
    pub spans: Box<[Span]>,
    /// Each answer's record without its owner (type, class, TTL, length and data, names
    /// uncompressed: a response writes a pointer to the question, then these bytes) or, for an
    /// owned answer, whole; followed by its glue records whole, answer after answer; then the
    /// authority and additional records, whole; then the key the answer is cached under, if
    /// any ([`Built::keyed`]).
    pub bytes: Box<[u8]>,
    /// Every answer has the same priority and weight (any order is as likely as another).
    pub uniform: bool,
    /// Where the authority records are in `bytes`, and how many there are.
    pub authority: (u32, u32, u16),
    /// Where the additional records (beyond the answers' glue) are, and how many.
    pub additional: (u32, u32, u16),
}

/// Where one answer's bytes are in [`Wire::bytes`], with its ordering keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub at: u32,
    pub len: u32,
    /// Glue follows the record; 0 bytes when there is none.
    pub glue_len: u32,
    /// How many glue records those bytes hold.
    pub glue_count: u16,
    /// The record's bytes start with its owner name (this many bytes); 0: they start at the
    /// type, and a response writes a pointer to the question before them.
    pub owner: u16,
    pub priority: u16,
    pub weight: u16,
}

impl Wire {
    /// Answer `i` (without owner) and its glue (empty when none).
    pub fn answer(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let s = self.spans.get(i)?;
        let (at, len, glue) = (s.at as usize, s.len as usize, s.glue_len as usize);
        let record = self.bytes.get(at..at + len)?;
        let glue = self.bytes.get(at + len..at + len + glue)?;
        Some((record, glue))
    }
}

/// The order of one response's records: indexes into [`Wire::spans`]. Inline up to 32
/// records, so ordering a typical answer allocates nothing.
pub type Order = smallvec::SmallVec<[u32; 32]>;

/// An answer for one name and type being built: its records as hickory records, with their
/// ordering keys and glue. [`Builder::finish`] renders it into a [`Built`], which keeps the wire
/// form alone (the records are dropped: a cached answer holds its bytes, not two copies).
#[derive(Debug, Clone)]
pub struct Builder {
    /// Generation of the service it is built from: a different one means it is outdated.
    pub generation: u64,
    pub outcome: Outcome,
    pub answers: Vec<Answer>,
    /// Built in panic mode: too few healthy instances, so all were used.
    pub panic: bool,
    /// The answers are alternative CNAMEs: send only the first in response order.
    pub single: bool,
    /// This many leading answers keep their built order (a CNAME chain before the records of
    /// its target); the rest are ordered per response.
    pub lead: u16,
    /// Records of the authority section (a referral's NS records), owners written whole.
    pub authority: Vec<Record>,
    /// Records of the additional section beyond the answers' glue (a referral's glue).
    pub additional: Vec<Record>,
    pub locality: Locality,
}

/// A built answer for one name and type, rendered, before per-response ordering.
#[derive(Debug, Clone)]
pub struct Built {
    /// Generation of the service it was built from: a different one means it is outdated.
    pub generation: u64,
    pub outcome: Outcome,
    /// The answers rendered, with the authority and additional records.
    pub wire: Wire,
    /// Built in panic mode: too few healthy instances, so all were used.
    pub panic: bool,
    /// The answers are alternative CNAMEs: send only the first in response order.
    pub single: bool,
    /// Answers were left out to fit a 64 KiB message: the response says so with TC.
    pub cut: bool,
    /// This many leading answers keep their built order (a CNAME chain before the records of
    /// its target); the rest are ordered per response.
    pub lead: u16,
    pub locality: Locality,
    /// The last this many bytes of `wire.bytes` are the key it is cached under ([`Built::keyed`]).
    key_len: u16,
}

impl Builder {
    /// An empty answer (NODATA until records are added).
    pub fn new(generation: u64) -> Self {
        Self::negative(generation, Outcome::NoData)
    }

    pub fn negative(generation: u64, outcome: Outcome) -> Self {
        Self {
            generation,
            outcome,
            answers: Vec::new(),
            panic: false,
            single: false,
            lead: 0,
            authority: Vec::new(),
            additional: Vec::new(),
            locality: Locality::Ignored,
        }
    }

    /// Adds a record with its ordering keys and SRV glue.
    pub fn push(&mut self, record: Record, priority: u16, weight: u16, glue: Option<Record>) {
        self.answers.push(Answer {
            record,
            priority,
            weight,
            glue: glue.into_iter().collect(),
            owned: false,
            size: 0,
        });
    }

    /// Adds a record whose owner is written whole (not the question's name) or, when `owned`
    /// is false, one owned by the question's name; with any number of glue records.
    pub fn push_record(&mut self, record: Record, owned: bool, glue: Vec<Record>) {
        self.answers.push(Answer {
            record,
            priority: 0,
            weight: 0,
            glue: glue.into_boxed_slice(),
            owned,
            size: 0,
        });
    }

    /// Renders the answer: sets the outcome from the answers, and leaves out answers past what
    /// a TCP message can hold (with their glue), so that a huge answer is cut rather than
    /// failing to encode.
    pub fn finish(mut self, qname: &Name) -> Built {
        if !self.answers.is_empty() {
            self.outcome = Outcome::Answer;
        }
        // Header, the question and room for an OPT record with options.
        let extra: usize = self
            .authority
            .iter()
            .chain(&self.additional)
            .map(wire_size)
            .sum();
        let mut room = MAX_MESSAGE.saturating_sub(12 + qname.len() + 1 + 4 + 64 + extra);
        let all = self.answers.len();
        let mut keep = all;
        // Answers share the question's name: count it as a 2-byte pointer.
        for (n, a) in self.answers.iter_mut().enumerate() {
            a.size = if a.owned {
                wire_size(&a.record)
            } else {
                (wire_size(&a.record) + 2).saturating_sub(qname.len() + 1)
            };
            let glue: usize = a.glue.iter().map(wire_size).sum();
            match room.checked_sub(a.size + glue) {
                Some(left) if keep == all => room = left,
                _ if keep == all => keep = n,
                _ => {}
            }
        }
        self.answers.truncate(keep);
        Built {
            generation: self.generation,
            outcome: self.outcome,
            wire: Wire::render(&self.answers, &self.authority, &self.additional),
            panic: self.panic,
            single: self.single,
            cut: keep < all,
            lead: self.lead.min(keep as u16),
            locality: self.locality,
            key_len: 0,
        }
    }
}

impl Built {
    /// An answer without records.
    pub fn negative(generation: u64, outcome: Outcome) -> Self {
        Builder::negative(generation, outcome).finish(&Name::root())
    }

    /// The answer with `key` (the encoded cache key, at most 64 KiB) stored after its bytes, in
    /// the same block: the caches' per-thread tables compare keys with it rather than keeping
    /// a copy of each key per thread.
    pub fn keyed(mut self, key: &[u8]) -> Self {
        let Ok(key_len) = u16::try_from(key.len()) else {
            return self;
        };
        let mut bytes = std::mem::take(&mut self.wire.bytes).into_vec();
        bytes.truncate(bytes.len() - usize::from(self.key_len));
        bytes.extend_from_slice(key);
        self.wire.bytes = bytes.into_boxed_slice();
        self.key_len = key_len;
        self
    }

    /// The key stored with [`Built::keyed`] (empty when none).
    pub fn key(&self) -> &[u8] {
        &self.wire.bytes[self.wire.bytes.len() - usize::from(self.key_len)..]
    }

    /// How many answer records it holds.
    pub fn len(&self) -> usize {
        self.wire.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wire.spans.is_empty()
    }

    /// Bytes this answer holds in memory (for the caches' byte limits): the struct, its spans
    /// and its rendered bytes.
    pub fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.wire.bytes.len()
            + self.wire.spans.len() * std::mem::size_of::<Span>()
    }

    /// A fresh order for one response: by priority, then weighted random (a higher weight is
    /// more likely to come first; Efraimidis-Spirakis keys `-ln(u)/w`). Weight 0 ranks last but
    /// still rotates. Alternative CNAMEs keep only the first.
    pub fn order(&self, rng: &mut impl Rng) -> Order {
        // Built answers hold far fewer than 2^32 records (they are cut to fit 64 KiB on TCP).
        let spans = &self.wire.spans;
        let mut order: Order = (0..spans.len() as u32).collect();
        let lead = usize::from(self.lead).min(order.len());
        if self.wire.uniform || lead > 0 {
            // One priority, one weight (the common case, and every static zone's): every order
            // is equally likely, which a shuffle gives without a key per record.
            use rand::seq::SliceRandom;
            order[lead..].shuffle(rng);
        } else {
            let key = |priority: u16, weight: u16, rng: &mut dyn rand::RngCore| {
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                let w = if weight == 0 { 0.01 } else { f64::from(weight) };
                (priority, -u.ln() / w)
            };
            // Keys on the stack for answers of up to 64 records (one allocation, the order).
            let mut small = [(0u16, 0f64); 64];
            let mut large = Vec::new();
            let keys: &mut [(u16, f64)] = if spans.len() <= small.len() {
                &mut small[..spans.len()]
            } else {
                large.resize(spans.len(), (0, 0.0));
                &mut large
            };
            for (k, a) in keys.iter_mut().zip(spans.iter()) {
                *k = key(a.priority, a.weight, rng);
            }
            order.sort_unstable_by(|&x, &y| {
                let (x, y) = (&keys[x as usize], &keys[y as usize]);
                x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
            });
        }
        if self.single {
            order.truncate(1);
        }
        order
    }
}

impl Wire {
    fn render(answers: &[Answer], authority: &[Record], additional: &[Record]) -> Self {
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(answers.len());
        for a in answers {
            let at = bytes.len();
            bytes.extend_from_slice(&render(&a.record, !a.owned));
            let len = bytes.len() - at;
            let mut glue_count = 0u16;
            for g in a.glue.iter() {
                let r = render(g, false);
                glue_count += u16::from(!r.is_empty());
                bytes.extend_from_slice(&r);
            }
            // Answers are cut to fit a 64 KiB message, so offsets fit 32 bits.
            spans.push(Span {
                at: at as u32,
                len: len as u32,
                glue_len: (bytes.len() - at - len) as u32,
                glue_count,
                owner: if a.owned {
                    owner_len(&a.record.name) as u16
                } else {
                    0
                },
                priority: a.priority,
                weight: a.weight,
            });
        }
        let mut section = |records: &[Record]| {
            let at = bytes.len();
            let mut count = 0u16;
            // A record that does not render (a decoded upstream record hickory cannot encode
            // again) is left out, and not counted.
            for r in records {
                let r = render(r, false);
                count += u16::from(!r.is_empty());
                bytes.extend_from_slice(&r);
            }
            (at as u32, (bytes.len() - at) as u32, count)
        };
        let authority = section(authority);
        let additional = section(additional);
        let uniform = spans.first().is_none_or(|f| {
            spans
                .iter()
                .all(|s| (s.priority, s.weight) == (f.priority, f.weight))
        });
        Self {
            spans: spans.into_boxed_slice(),
            bytes: bytes.into_boxed_slice(),
            uniform,
            authority,
            additional,
        }
    }

    /// The authority records' bytes and count.
    pub fn authority(&self) -> (&[u8], u16) {
        self.section(self.authority)
    }

    /// The additional records' bytes (beyond glue) and count.
    pub fn additional(&self) -> (&[u8], u16) {
        self.section(self.additional)
    }

    fn section(&self, (at, len, n): (u32, u32, u16)) -> (&[u8], u16) {
        let bytes = self.bytes.get(at as usize..(at + len) as usize);
        (bytes.unwrap_or(&[]), n)
    }
}

/// Bytes of `name` in uncompressed wire form.
pub fn owner_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// A record kept with its wire form, rendered once (an SOA for negative answers): a response
/// copies the bytes, its owner a pointer into the question where the question spells it.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub record: Record,
    /// The whole record, every name uncompressed.
    pub wire: Box<[u8]>,
    /// Length of the owner name at the start of `wire`.
    pub owner_len: usize,
}

impl Rendered {
    pub fn new(record: Record) -> Self {
        let wire = render(&record, false).into_boxed_slice();
        let owner_len = owner_len(&record.name);
        Self {
            record,
            wire,
            owner_len,
        }
    }
}

/// `record` in wire format with every name uncompressed (so the bytes can go anywhere in a
/// message), without its owner name when `skip_owner`.
pub fn render(record: &Record, skip_owner: bool) -> Vec<u8> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
    let mut out = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut out);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    // Records of our own making always encode (names are valid, rdata is bounded).
    if record.emit(&mut encoder).is_err() {
        return Vec::new();
    }
    if skip_owner {
        out.drain(..owner_len(&record.name).min(out.len()));
    }
    out
}

/// Upper bound of a record's wire size. Owner names are counted in full (an upper bound: the
/// encoder may compress them); SRV targets are never compressed (RFC 2782).
pub fn wire_size(record: &Record) -> usize {
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::SRV(s) => 6 + s.target.len() + 1,
        RData::TXT(t) => t.txt_data.iter().map(|s| s.len() + 1).sum(),
        RData::CNAME(c) => c.0.len() + 1,
        RData::PTR(p) => p.0.len() + 1,
        RData::NS(n) => n.0.len() + 1,
        RData::MX(m) => 2 + m.exchange.len() + 1,
        // Anything else (static zones hold every type): its exact encoding.
        _ => return render(record, false).len().max(1),
    };
    record.name.len() + 1 + 10 + rdata
}

/// The records of a built answer read back from its wire form: what a response carries, for
/// tests. Answers written after a pointer to the question decode with the root as their owner.
#[cfg(test)]
impl Built {
    pub fn answers(&self) -> Vec<Answer> {
        (0..self.len())
            .map(|i| {
                let s = self.wire.spans[i];
                let (record, glue) = self.wire.answer(i).expect("spans are inside the bytes");
                let record = if s.owner == 0 {
                    let mut whole = vec![0u8];
                    whole.extend_from_slice(record);
                    decode(&whole, 1).remove(0)
                } else {
                    decode(record, 1).remove(0)
                };
                Answer {
                    size: wire_size(&record),
                    record,
                    priority: s.priority,
                    weight: s.weight,
                    glue: decode(glue, usize::from(s.glue_count)).into_boxed_slice(),
                    owned: s.owner != 0,
                }
            })
            .collect()
    }

    pub fn authority(&self) -> Vec<Record> {
        let (bytes, n) = self.wire.authority();
        decode(bytes, usize::from(n))
    }

    pub fn additional(&self) -> Vec<Record> {
        let (bytes, n) = self.wire.additional();
        decode(bytes, usize::from(n))
    }
}

/// `n` whole records from `bytes`.
#[cfg(test)]
fn decode(bytes: &[u8], n: usize) -> Vec<Record> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut decoder = BinDecoder::new(bytes);
    let records: Vec<Record> = (0..n)
        .map(|_| Record::read(&mut decoder).expect("rendered records decode"))
        .collect();
    assert!(decoder.is_empty(), "no bytes after the records");
    records
}

/// An upstream's answer as ruddr relays it: its header bits, and its records rendered once
/// (owners equal to the question as pointers to it, so each client gets its own spelling; the
/// upstream's order kept).
#[derive(Debug)]
pub struct Relayed {
    pub built: Arc<Built>,
    pub response_code: ResponseCode,
    pub authoritative: bool,
    pub authentic_data: bool,
    pub recursion_available: bool,
    /// The upstream's answer was truncated (TC), and asking over TCP did not get it whole.
    pub truncated: bool,
    /// The DO bit of the upstream's OPT record.
    pub dnssec_ok: bool,
}

impl Relayed {
    pub fn new(message: &Message) -> Self {
        let question = message.queries.first().map(|q| q.name().clone());
        let qname = question.clone().unwrap_or_else(Name::root);
        let mut built = Builder::new(0);
        for r in &message.answers {
            let owned = question.as_ref() != Some(&r.name);
            built.push_record(r.clone(), owned, Vec::new());
        }
        built.lead = u16::try_from(built.answers.len()).unwrap_or(u16::MAX);
        built.authority = message.authorities.clone();
        built.additional = message.additionals.clone();
        Self {
            built: Arc::new(built.finish(&qname)),
            response_code: message.metadata.response_code,
            authoritative: message.metadata.authoritative,
            authentic_data: message.metadata.authentic_data,
            recursion_available: message.metadata.recursion_available,
            truncated: message.metadata.truncation,
            dnssec_ok: message.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        }
    }

    /// The answer as a message, TTLs reduced by `age` and owners equal to the question spelled
    /// as `question` (what a client would decode).
    #[cfg(test)]
    pub fn message(&self, question: &Name, age: u32) -> Message {
        use hickory_proto::op::{MessageType, OpCode};
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.response_code = self.response_code;
        let aged = |r: &hickory_proto::rr::Record| {
            let mut r = r.clone();
            r.ttl = r.ttl.saturating_sub(age);
            r
        };
        for a in self.built.answers() {
            let mut r = aged(&a.record);
            if !a.owned {
                r.name = question.clone();
            }
            m.answers.push(r);
        }
        m.authorities = self.built.authority().iter().map(aged).collect();
        m.additionals = self.built.additional().iter().map(aged).collect();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SRV};
    use rand::SeedableRng;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn srv_answer(n: usize, priority: u16, weight: u16) -> Built {
        let owner = name("_web._tcp.svc.internal.");
        let mut b = Builder::new(1);
        for i in 0..n {
            let target = name(&format!("i{i}.web.svc.internal."));
            let glue = Record::from_rdata(
                target.clone(),
                5,
                RData::A(A::new(10, 0, (i / 250) as u8, (i % 250) as u8)),
            );
            let srv = SRV::new(priority, weight, 8080, target);
            b.push(
                Record::from_rdata(owner.clone(), 5, RData::SRV(srv)),
                priority,
                weight,
                Some(glue),
            );
        }
        b.finish(&owner)
    }

    #[test]
    fn order_puts_lower_priorities_first_and_follows_weights() {
        let mut b = Builder::new(1);
        let owner = name("web.svc.internal.");
        for (prio, weight) in [(2, 1), (1, 90), (1, 10), (0, 0)] {
            b.push(
                Record::from_rdata(owner.clone(), 5, RData::A(A::new(10, 0, 0, 1))),
                prio,
                weight,
                None,
            );
        }
        let b = b.finish(&owner);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut heavy_first = 0;
        for _ in 0..2000 {
            let order = b.order(&mut rng);
            assert_eq!(order.len(), 4);
            assert_eq!(order[0], 3, "priority 0 always leads");
            assert_eq!(order[3], 0, "priority 2 always trails");
            if order[1] == 1 {
                heavy_first += 1;
            }
        }
        // Weight 90 against 10: first about 90% of the time.
        assert!((1700..1900).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn zero_weights_still_rotate_and_single_keeps_one() {
        let owner = name("web.svc.internal.");
        let mut b = Builder::new(1);
        for i in 0..3 {
            b.push(
                Record::from_rdata(owner.clone(), 5, RData::A(A::new(10, 0, 0, i))),
                0,
                0,
                None,
            );
        }
        let mut b = b.finish(&owner);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let firsts: std::collections::HashSet<u32> =
            (0..100).map(|_| b.order(&mut rng)[0]).collect();
        assert_eq!(firsts.len(), 3);
        b.single = true;
        assert_eq!(b.order(&mut rng).len(), 1);
    }

    #[test]
    fn answers_past_a_tcp_message_are_left_out() {
        let b = srv_answer(3000, 1, 1);
        assert!(b.len() < 3000, "{}", b.len());
        assert!(b.cut);
        let total: usize = b.answers().iter().map(|a| a.size).sum();
        assert!(total < 65_535, "{total}");
        assert_eq!(srv_answer(100, 1, 1).len(), 100);
        assert!(!srv_answer(100, 1, 1).cut);
    }

    #[test]
    fn a_chain_keeps_its_lead_and_owned_records_carry_their_owner() {
        let owner = name("alias.example.");
        let mut b = Builder::new(0);
        let cname = hickory_proto::rr::rdata::CNAME(name("www.example."));
        b.push_record(
            Record::from_rdata(owner.clone(), 60, RData::CNAME(cname)),
            false,
            vec![],
        );
        b.lead = 1;
        for i in 0..5 {
            let a = Record::from_rdata(name("www.example."), 60, RData::A(A::new(10, 0, 0, i)));
            b.push_record(a, true, vec![]);
        }
        let b = b.finish(&owner);
        assert_eq!(b.wire.spans[0].owner, 0);
        assert_eq!(
            usize::from(b.wire.spans[1].owner),
            owner_len(&name("www.example."))
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut seconds = std::collections::HashSet::new();
        for _ in 0..50 {
            let order = b.order(&mut rng);
            assert_eq!(order[0], 0, "the CNAME leads");
            seconds.insert(order[1]);
        }
        assert!(seconds.len() > 1, "the target's records rotate");
    }

    #[test]
    fn memory_size_grows_with_the_answer() {
        assert!(srv_answer(10, 1, 1).memory_size() > srv_answer(1, 1, 1).memory_size());
        assert!(srv_answer(1, 1, 1).memory_size() > std::mem::size_of::<Built>());
    }
}
