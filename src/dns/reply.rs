//! A decided response before it is written: the question as the answer core reads it, who
//! asks, and the reply (header, EDNS outcome, built answers in their order, the zone's SOA).
//! [`super::wire::write_reply`] writes it.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, LowerQuery, Metadata, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::Record;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use rand::Rng;

use super::answer::{Built, Locality, Order, Outcome, Relayed, Rendered};

/// The question of a request, as the answer core reads it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'r> {
    /// The request's header fields.
    pub header: &'r Metadata,
    pub edns: Option<&'r Edns>,
    /// The query, when the request holds exactly one.
    pub query: Option<&'r LowerQuery>,
}

impl<'r> Question<'r> {
    pub fn of(request: &'r Request) -> Self {
        let queries = request.queries.queries();
        Self {
            header: &request.metadata,
            edns: request.edns.as_ref(),
            query: (queries.len() == 1).then(|| &queries[0]),
        }
    }
}

/// Who asks, and how.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub protocol: Protocol,
}

impl Client {
    pub fn of(request: &Request) -> Self {
        Self {
            ip: request.src().ip(),
            protocol: request.protocol(),
        }
    }
}

/// Who sends the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// ruddr itself, with the records in the [`Reply`] (every zone, and forwarded answers
    /// from the cache).
    Reply,
    /// An upstream resolver (not in the forward cache).
    Forward,
}

/// A decided response: header, EDNS and records, owned until the response is encoded.
pub struct Reply {
    pub meta: Metadata,
    pub edns: Option<Edns>,
    pub built: Option<Arc<Built>>,
    /// Indexes into `built.answers`, in response order.
    pub order: Order,
    /// Seconds to take off every TTL (an answer that waited in the forward cache).
    pub age: u32,
    /// Answers not from `built` (apex, reverse and RFC 8482 records).
    pub extra: Vec<Record>,
    /// The zone's SOA, in the authority section of a negative answer.
    pub soa: Option<Arc<Rendered>>,
    /// The answer came from registry data (counted as stale while etcd is away).
    pub from_registry: bool,
    pub via: Via,
    /// The client set AD or DO, so an upstream's AD bit may be passed on (RFC 6840 5.8).
    pub wants_ad: bool,
    /// UDP payload limit for this client.
    pub payload: u16,
    /// What the client's locality did to the answer.
    pub locality: Locality,
    /// Which kind of zone answered.
    pub zone: super::observe::ZoneKind,
}

impl Reply {
    /// An empty NOERROR response to `header`, with our OPT record if the client sent one
    /// (its buffer size clamped to 512..=`max_udp`).
    pub fn new(q: &Question<'_>, max_udp: u16) -> Self {
        let mut reply = Reply {
            meta: Metadata::response_from_request(q.header),
            edns: None,
            built: None,
            order: Default::default(),
            age: 0,
            extra: Vec::new(),
            soa: None,
            from_registry: false,
            via: Via::Reply,
            wants_ad: q.header.authentic_data || q.edns.is_some_and(|e| e.flags().dnssec_ok),
            payload: 512,
            locality: Locality::Ignored,
            zone: Default::default(),
        };
        if let Some(req) = q.edns {
            let mut edns = Edns::new();
            reply.payload = req.max_payload().clamp(512, max_udp);
            edns.set_max_payload(reply.payload);
            // RFC 3225: the DO bit of the query is copied into the response.
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            reply.edns = Some(edns);
        }
        reply
    }

    pub fn to(request: &Request, max_udp: u16) -> Self {
        Self::new(&Question::of(request), max_udp)
    }

    /// Echoes the query's client subnet option (if any), with the scope the answer used.
    pub fn echo_subnet(&mut self, subnet: Option<EdnsOption>) {
        if let (Some(edns), Some(subnet)) = (self.edns.as_mut(), subnet) {
            let options = edns.options_mut();
            options.remove(hickory_proto::rr::rdata::opt::EdnsCode::Subnet);
            options.insert(subnet);
        }
    }

    /// Relays an upstream's answer that waited `age` seconds in the forward cache: its response
    /// code and flags, its records in its order, our OPT with its DO bit.
    /// The AD bit only for clients that asked for it ([`Reply::wants_ad`]).
    pub fn relay(&mut self, relayed: &Relayed, age: u32) {
        self.zone = super::observe::ZoneKind::Forward;
        self.meta.response_code = relayed.response_code;
        self.meta.authoritative = relayed.authoritative;
        self.meta.authentic_data = relayed.authentic_data && self.wants_ad;
        self.meta.recursion_available = true;
        self.meta.truncation = relayed.truncated;
        if let Some(edns) = self.edns.as_mut() {
            edns.set_dnssec_ok(relayed.dnssec_ok);
        }
        self.order = (0..relayed.built.len() as u32).collect();
        self.built = Some(relayed.built.clone());
        self.age = age;
    }

    /// Negative answers (NODATA, NXDOMAIN) carry the zone's SOA (RFC 2308).
    pub fn settle(mut self, outcome: Outcome, soa: impl FnOnce() -> Arc<Rendered>) -> Self {
        match outcome {
            Outcome::Answer | Outcome::Referral => {}
            Outcome::NoData => self.soa = Some(soa()),
            Outcome::NxDomain => {
                self.meta.response_code = ResponseCode::NXDomain;
                self.soa = Some(soa());
            }
        }
        self
    }

    pub fn code(mut self, code: ResponseCode) -> Self {
        self.meta.response_code = code;
        self
    }

    /// Puts `built` in a fresh random order. What fits a UDP message is decided when the
    /// reply is written ([`wire::write_reply`]).
    pub fn place(&mut self, built: Arc<Built>, rng: &mut impl Rng) {
        self.order = built.order(rng);
        self.locality = built.locality;
        self.built = Some(built);
    }
}
