//! DNS packets as the transport handles them: [`decode`], then the answer core
//! ([`Handler::answer_now`], and [`Handler::answer_later`] for the static zone), over UDP and TCP,
//! with the registry data current, stale, expired or not there yet.
//!
//! Input: a corpus of real queries (every type ruddr answers, EDNS with cookies, client subnet
//! and NSID, mixed case, names in each kind of zone and outside, reverse names), the same
//! mutated as bytes and as DNS (counts, label lengths, compression pointers), and random bytes.
//! Property: no panic; a packet that is a query gets exactly one well-formed response (QR set,
//! its id, over UDP no larger than the client's buffer: 512 without EDNS, else its EDNS size
//! within 512..=1232); a packet that is not a query gets none.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{LowerName, Name};
use hickory_server::net::xfer::Protocol;
use proptest::prelude::*;
use proptest::sample::Index;

use super::{check, mutation, random_bytes, Mutation};
use crate::cache::{Freshness, Mirror};
use crate::config::DnsConfig;
use crate::dns::server::{decode, format_error, is_answerable, Decoded};
use crate::dns::zone::file::StaticZones;
use crate::dns::zone::registry::Zone;
use crate::dns::zone::skydns::SkyZone;
use crate::dns::Handler;
use crate::metrics::Metrics;
use crate::registry::{Layout, Source, Status};

/// ruddr's own UDP payload limit (`dns.max_udp_payload` default).
const MAX_UDP: u16 = 1232;

const STATIC_ZONE: &str = "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 10.0.0.53\nwww IN A 10.0.0.80\nwww IN AAAA fd00::80\nmail IN MX 10 www\ntxt IN TXT \"hello\" \"world\"\nalias IN CNAME www\n_sip._udp IN SRV 0 5 5060 www\n*.wild IN A 10.0.0.81\n";

/// The handlers under test (one per registry state, over the same data) and what they need.
struct Server {
    /// Current, stale, expired, empty.
    handlers: Vec<Handler>,
    runtime: tokio::runtime::Runtime,
    _zones_dir: tempfile::TempDir,
}

fn put(mirror: &Mirror, source: &Source, key: &str, value: &str) {
    let update = source
        .put(key.as_bytes(), value.as_bytes())
        .unwrap()
        .unwrap();
    mirror.apply([update], mirror.load().revision + 1);
}

fn server() -> Server {
    let mirror = Arc::new(Mirror::new());
    let native = Source::native("/ruddr/services/");
    for (id, addr) in [("w0", "10.0.0.1"), ("w1", "10.0.0.2"), ("w2", "fd00::3")] {
        put(
            &mirror,
            &native,
            &format!("/ruddr/services/web/{id}"),
            &format!(
                r#"{{"address":"{addr}","port":8080,"ports":{{"http":8080,"grpc":9090}},"tags":["v2","canary"],"weight":5,"meta":{{"az":"a","n":3}}}}"#
            ),
        );
    }
    put(
        &mirror,
        &native,
        "/ruddr/services/web/w3",
        r#"{"address":"10.0.0.4","port":8080,"health":"critical"}"#,
    );
    for i in 0..60 {
        put(
            &mirror,
            &native,
            &format!("/ruddr/services/big/b{i}"),
            &format!(r#"{{"address":"10.1.0.{i}","port":80}}"#),
        );
    }
    let kratos = Source::framework(Layout::Kratos, "/microservices/");
    put(
        &mirror,
        &kratos,
        "/microservices/named/n1",
        r#"{"endpoints":["grpc://db.example.com:9000","http://db.example.com:8000"]}"#,
    );
    let sky = Source::framework(
        Layout::Skydns {
            zones: vec!["skydns.local.".into()],
            ttl: 300,
        },
        "/skydns/",
    );
    for (path, value) in [
        (
            "local/skydns/east/production/rails/1",
            r#"{"host":"10.0.0.1","port":8080,"ttl":60}"#,
        ),
        (
            "local/skydns/east/production/rails/2",
            r#"{"host":"fd00::2","port":8080,"weight":3}"#,
        ),
        (
            "local/skydns/west/db/1",
            r#"{"host":"db.example.com","port":5432,"targetstrip":1}"#,
        ),
        ("local/skydns/west/db/t", r#"{"text":"hello"}"#),
    ] {
        put(&mirror, &sky, &format!("/skydns/{path}"), value);
    }

    let zones_dir = tempfile::tempdir().unwrap();
    std::fs::write(zones_dir.path().join("static.internal.zone"), STATIC_ZONE).unwrap();
    let zones = Arc::new(ArcSwap::from_pointee(
        StaticZones::load_dir(zones_dir.path()).unwrap(),
    ));
    let cfg = DnsConfig {
        zone: "svc.internal.".into(),
        ..DnsConfig::default()
    };
    assert_eq!(cfg.max_udp_payload, MAX_UDP);
    let current = Status::default();
    current.set_connected();
    let stale = Status::default();
    stale.set_connected();
    stale.set_disconnected();
    let expired = Status::new(Some(std::time::Duration::from_nanos(1)));
    expired.set_connected();
    expired.set_disconnected();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let statuses = [current, stale, expired, Status::default()];
    let freshness: Vec<Freshness> = statuses.iter().map(Status::freshness).collect();
    assert!(
        matches!(
            freshness[..],
            [
                Freshness::Current,
                Freshness::Stale { .. },
                Freshness::Expired,
                Freshness::Empty
            ]
        ),
        "{freshness:?}"
    );
    let handlers = statuses
        .into_iter()
        .map(|status| {
            let h = Handler::new(
                &cfg,
                mirror.clone(),
                Arc::new(status),
                Arc::new(Metrics::new()),
            )
            .unwrap();
            let origin = Name::from_ascii("skydns.local.").unwrap();
            let sky_zone = SkyZone {
                soa: Default::default(),
                apex: LowerName::new(&origin),
                zone: sky_zone_of(&h, origin),
                source: sky.id,
                ttl: 300,
            };
            h.with_sky(vec![sky_zone])
                .with_outside(zones.clone(), None, Vec::new())
        })
        .collect();
    Server {
        handlers,
        runtime: runtime(),
        _zones_dir: zones_dir,
    }
}

fn sky_zone_of(h: &Handler, origin: Name) -> Zone {
    h.zone_for(origin).unwrap()
}

/// An OPT record: UDP payload, extended rcode, version, DO, options (code, data).
pub(super) struct Opt {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
    options: Vec<(u16, Vec<u8>)>,
}

/// A query in wire form, with `name`'s labels exactly as given (case kept; "." is the root).
pub(super) fn wire_query(
    id: u16,
    flags: u16,
    name: &str,
    qtype: u16,
    opt: Option<&Opt>,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes()); // IN
    if let Some(o) = opt {
        b.push(0); // root owner
        b.extend_from_slice(&41u16.to_be_bytes());
        b.extend_from_slice(&o.payload.to_be_bytes());
        b.push(0); // extended rcode
        b.push(o.version);
        b.extend_from_slice(&(if o.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
        let rdata: Vec<u8> = o
            .options
            .iter()
            .flat_map(|(code, data)| {
                let mut v = code.to_be_bytes().to_vec();
                v.extend_from_slice(&(data.len() as u16).to_be_bytes());
                v.extend_from_slice(data);
                v
            })
            .collect();
        b.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        b.extend_from_slice(&rdata);
    }
    b
}

/// Real queries: each name with each type, without EDNS and with the OPT records resolvers
/// and dig send.
fn corpus() -> Vec<Vec<u8>> {
    let long_label = "a".repeat(63);
    let long_name = format!("{long_label}.{long_label}.{long_label}.{}", "b".repeat(61));
    let names = [
        "web.svc.internal.",
        "wEb.SvC.iNtErNaL.",
        "_web._tcp.svc.internal.",
        "_http._tcp.web.svc.internal.",
        "_grpc._tcp.WEB.svc.internal.",
        "w0.web.svc.internal.",
        "w3.web.svc.internal.",
        "v2._tag.web.svc.internal.",
        "big.svc.internal.",
        "_big._tcp.svc.internal.",
        "named.svc.internal.",
        "n1.named.svc.internal.",
        "svc.internal.",
        "_tcp.svc.internal.",
        "nope.svc.internal.",
        "a.b.c.d.e.svc.internal.",
        "*.svc.internal.",
        "rails.production.east.skydns.local.",
        "*.production.east.skydns.local.",
        "east.skydns.local.",
        "db.west.skydns.local.",
        "skydns.local.",
        "www.static.internal.",
        "alias.static.internal.",
        "x.wild.static.internal.",
        "static.internal.",
        "1.0.0.10.in-addr.arpa.",
        "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        "example.com.",
        "internal.",
        ".",
        &long_name,
    ];
    // A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, IXFR, AXFR, ANY, CAA, a private type.
    let types = [
        1u16, 2, 5, 6, 12, 15, 16, 28, 33, 41, 251, 252, 255, 257, 65280,
    ];
    let cookie = (10u16, vec![0x5a, 0x1c, 0x3b, 0x7e, 0x00, 0x11, 0x22, 0x33]);
    let ecs = (8u16, vec![0, 1, 24, 0, 192, 0, 2]);
    let nsid = (3u16, Vec::new());
    let opts = [
        None,
        Some(Opt {
            payload: 1232,
            version: 0,
            dnssec_ok: false,
            options: vec![cookie.clone()],
        }),
        Some(Opt {
            payload: 4096,
            version: 0,
            dnssec_ok: true,
            options: vec![ecs, nsid, cookie],
        }),
        Some(Opt {
            payload: 100,
            version: 0,
            dnssec_ok: false,
            options: vec![],
        }),
        Some(Opt {
            payload: 1232,
            version: 1,
            dnssec_ok: false,
            options: vec![],
        }),
    ];
    let mut out = Vec::new();
    for (n, name) in names.iter().enumerate() {
        for (t, qtype) in types.iter().enumerate() {
            for (o, opt) in opts.iter().enumerate() {
                // RD as stub resolvers set it, AD as dig does, and without either.
                let flags = [0x0100, 0x0120, 0x0000][(n + t + o) % 3];
                let id = (n * 1000 + t * 10 + o) as u16;
                out.push(wire_query(id, flags, name, *qtype, opt.as_ref()));
            }
        }
    }
    // Opcodes other than QUERY, and the CH class (version.bind).
    for opcode in [1u16, 2, 4, 5, 15] {
        out.push(wire_query(7, opcode << 11, "web.svc.internal.", 1, None));
    }
    let mut chaos = wire_query(8, 0, "version.bind.", 16, None);
    let class_at = chaos.len() - 2;
    chaos[class_at..].copy_from_slice(&3u16.to_be_bytes());
    out.push(chaos);
    // Two questions (FORMERR).
    let mut two = wire_query(9, 0x0100, "web.svc.internal.", 1, None);
    two[5] = 2;
    two.extend_from_slice(&wire_query(9, 0, "big.svc.internal.", 33, None)[12..]);
    out.push(two);
    out
}

/// A change to a query that keeps it DNS-shaped enough to reach the parser's depths.
#[derive(Debug, Clone)]
enum Change {
    Bytes(Mutation),
    /// Sets a section count (question, answer, authority, additional).
    Count(usize, u16),
    /// Sets the length byte of one of the question's labels.
    Label(Index, u8),
    /// Writes a compression pointer at a position (at or after the header) to a target: the
    /// pointer itself (a loop), the question's start, or anywhere.
    Pointer(Index, Target),
    /// Sets the header's flag bytes.
    Flags(u16),
}

#[derive(Debug, Clone)]
enum Target {
    Itself,
    Question,
    Offset(u16),
}

fn change() -> impl Strategy<Value = Change> {
    let count = prop_oneof![
        prop::sample::select(vec![0u16, 1, 2, 3, 255, 0x7fff, 0xffff]),
        any::<u16>()
    ];
    let label = prop::sample::select(vec![0u8, 1, 2, 62, 63, 64, 0x7f, 0x80, 0xc0, 0xff]);
    let target = prop_oneof![
        Just(Target::Itself),
        Just(Target::Question),
        any::<u16>().prop_map(|o| Target::Offset(o & 0x3fff)),
    ];
    prop_oneof![
        4 => mutation().prop_map(Change::Bytes),
        1 => (0usize..4, count).prop_map(|(f, v)| Change::Count(f, v)),
        2 => (any::<Index>(), label).prop_map(|(i, l)| Change::Label(i, l)),
        1 => (any::<Index>(), target).prop_map(|(i, t)| Change::Pointer(i, t)),
        1 => any::<u16>().prop_map(Change::Flags),
    ]
}

/// Offsets of the question name's length bytes.
fn label_offsets(packet: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 12;
    while let Some(&len) = packet.get(at) {
        out.push(at);
        if len == 0 || len > 63 {
            break;
        }
        at += 1 + usize::from(len);
    }
    out
}

fn apply_change(packet: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Bytes(m) => super::apply(packet, m),
        Change::Count(field, value) => {
            let at = 4 + 2 * field;
            if packet.len() >= at + 2 {
                packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        Change::Label(i, len) => {
            let offsets = label_offsets(packet);
            if !offsets.is_empty() {
                packet[offsets[i.index(offsets.len())]] = *len;
            }
        }
        Change::Pointer(i, target) => {
            if packet.len() >= 14 {
                let at = 12 + i.index(packet.len() - 13);
                let to = match target {
                    Target::Itself => at as u16,
                    Target::Question => 12,
                    Target::Offset(o) => *o,
                };
                packet[at] = 0xc0 | (to >> 8) as u8 & 0x3f;
                packet[at + 1] = to as u8;
            }
        }
        Change::Flags(flags) => {
            if packet.len() >= 4 {
                packet[2..4].copy_from_slice(&flags.to_be_bytes());
            }
        }
    }
}

/// One fuzz case: the packet, which handler (registry state), transport and client.
#[derive(Debug, Clone)]
struct Case {
    packet: Vec<u8>,
    state: usize,
    tcp: bool,
    src: SocketAddr,
}

fn case(corpus: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Case> {
    let n = corpus.len();
    let packet = prop_oneof![
        // As sent: every query of the corpus reaches the answer core unchanged too.
        1 => (0..n).prop_map({
            let c = corpus.clone();
            move |i| c[i].clone()
        }),
        6 => ((0..n), prop::collection::vec(change(), 1..6)).prop_map(move |(i, changes)| {
            let mut p = corpus[i].clone();
            for c in &changes {
                apply_change(&mut p, c);
            }
            p
        }),
        2 => random_bytes(600),
        // A header that says "query" and random bytes after it: past the header check.
        1 => (any::<u16>(), random_bytes(300)).prop_map(|(id, rest)| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
            p.extend(rest);
            p
        }),
    ];
    let src = prop::sample::select(vec![
        CLIENT.parse::<SocketAddr>().unwrap(),
        "[::1]:5353".parse().unwrap(),
        "[::ffff:10.0.0.9]:40000".parse().unwrap(),
        "0.0.0.0:53".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ]);
    (packet, 0usize..4, any::<bool>(), src).prop_map(|(packet, state, tcp, src)| Case {
        packet,
        state,
        tcp,
        src,
    })
}

/// The whole path of one packet through `handler`, as the transport takes it: the response it
/// would send, if any, and the client's EDNS buffer size.
fn respond(
    handler: &Handler,
    runtime: &tokio::runtime::Runtime,
    packet: &[u8],
    src: SocketAddr,
    tcp: bool,
) -> (Option<Vec<u8>>, Option<u16>) {
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    let mut out = Vec::new();
    match decode(packet, src, protocol) {
        Decoded::Drop => (None, None),
        Decoded::Malformed(header) => {
            format_error(&header, &mut out);
            (Some(out), None)
        }
        Decoded::Request(request) => {
            let payload = request.edns.as_ref().map(|e| e.max_payload());
            if let Err(deferred) = handler.answer_now(
                &request,
                &mut out,
                crate::metrics::Proto::of(request.protocol()),
            ) {
                runtime.block_on(handler.answer_later(&request, deferred, &mut out));
            }
            (Some(out), payload)
        }
    }
}

/// Sends `packet` through `handler` and checks the property: a query gets one well-formed
/// response (returned), anything else none.
pub(super) fn ask(
    handler: &Handler,
    runtime: &tokio::runtime::Runtime,
    packet: &[u8],
    src: SocketAddr,
    tcp: bool,
) -> Result<Option<Message>, TestCaseError> {
    let is_query = packet.len() >= 12 && packet[2] & 0x80 == 0 && is_answerable(src);
    let (out, edns_payload) = respond(handler, runtime, packet, src, tcp);
    let Some(out) = out else {
        prop_assert!(!is_query, "a query got no response");
        return Ok(None);
    };
    prop_assert!(is_query, "a response to what is not a query");
    let m = match Message::from_vec(&out) {
        Ok(m) => m,
        Err(e) => return Err(TestCaseError::fail(format!("response does not parse: {e}"))),
    };
    prop_assert_eq!(m.metadata.message_type, MessageType::Response);
    prop_assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
    if !tcp {
        let limit = edns_payload.map_or(512, |e| e.clamp(512, MAX_UDP));
        prop_assert!(
            out.len() <= usize::from(limit),
            "{} bytes over UDP for a buffer of {limit}",
            out.len()
        );
    }
    if u16::from(m.metadata.response_code) > 15 {
        // The high bits of an extended code (BADVERS) travel in the OPT record.
        prop_assert!(m.edns.is_some(), "an extended response code without OPT");
    }
    Ok(Some(m))
}

/// A handler for `svc.internal.` over `mirror`, with the registry connected.
pub(super) fn handler(mirror: Arc<Mirror>) -> Handler {
    let cfg = DnsConfig {
        zone: "svc.internal.".into(),
        ..DnsConfig::default()
    };
    let status = Status::default();
    status.set_connected();
    Handler::new(&cfg, mirror, Arc::new(status), Arc::new(Metrics::new())).unwrap()
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(super) const CLIENT: &str = "127.0.0.1:5353";

fn check_case(server: &Server, case: &Case) -> Result<(), TestCaseError> {
    let handler = &server.handlers[case.state];
    ask(handler, &server.runtime, &case.packet, case.src, case.tcp).map(drop)
}

#[test]
fn packets_get_a_well_formed_answer_or_none() {
    let server = server();
    let corpus = Arc::new(corpus());
    check(4, case(corpus), |case| check_case(&server, &case));
}

/// The corpus itself gets the answers it should, so mutations start from queries that reach
/// every part of the answer core.
#[test]
fn the_corpus_reaches_every_zone() {
    let server = server();
    let mut codes = std::collections::HashMap::<u16, usize>::new();
    let mut answered = 0;
    for packet in corpus() {
        let case = Case {
            packet,
            state: 0,
            tcp: true,
            src: CLIENT.parse().unwrap(),
        };
        let m = ask(
            &server.handlers[0],
            &server.runtime,
            &case.packet,
            case.src,
            true,
        )
        .unwrap()
        .expect("an answer");
        *codes
            .entry(u16::from(m.metadata.response_code))
            .or_default() += 1;
        answered += usize::from(!m.answers.is_empty());
    }
    for code in [
        ResponseCode::NoError,
        ResponseCode::NXDomain,
        ResponseCode::Refused,
        ResponseCode::NotImp,
        ResponseCode::BADVERS,
        ResponseCode::FormErr,
    ] {
        assert!(
            codes.contains_key(&u16::from(code)),
            "{code:?} in {codes:?}"
        );
    }
    assert!(answered > 100, "{answered} answers");
}
