//! The answer core in-process: protocol checks, positive and negative answers, freshness, UDP
//! sizes, order, locality, DNS-SD, and the fast path against the general path.

use super::*;
use crate::dns::answer::Locality;
use crate::dns::reply::*;
use crate::dns::respond::*;
use hickory_proto::op::Edns;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

/// The message hickory encodes for `reply`'s records, in its order: the reference the
/// wire writer's bytes are compared with.
fn reference_message(request: &Request, reply: &Reply) -> Message {
    let mut m = Message::new(
        request.metadata.id,
        hickory_proto::op::MessageType::Response,
        OpCode::Query,
    );
    m.metadata = reply.meta;
    m.metadata.id = request.metadata.id;
    m.add_query(request.queries.queries()[0].original().clone());
    if let Some(built) = &reply.built {
        for &i in &reply.order {
            let answer = &built.answers()[i as usize];
            let mut record = answer.record.clone();
            if !answer.owned {
                // Written as a pointer to the question (a wildcard's too).
                record.name = request.queries.queries()[0].name().into();
            }
            m.add_answer(record);
        }
        m.authorities.extend(built.authority().iter().cloned());
        for &i in &reply.order {
            m.additionals
                .extend(built.answers()[i as usize].glue.iter().cloned());
        }
        m.additionals.extend(built.additional().iter().cloned());
    }
    m.answers.extend(reply.extra.iter().cloned());
    if let Some(soa) = &reply.soa {
        m.add_authority(soa.record.clone());
    }
    if let Some(edns) = &reply.edns {
        m.set_edns(edns.clone());
    }
    Message::from_vec(&m.to_vec().unwrap()).unwrap()
}
use crate::cache::{Health, Instance, InstanceId, ServiceName, SourceId, Update};
use hickory_proto::op::{Message, Query};
use rand::SeedableRng;

const STALE: Freshness = Freshness::Stale { age: None };

fn instance(id: &str, addr: &str, port: u16) -> Instance {
    Instance::for_test(id, addr, Some(port))
}

/// A handler for `svc.internal.` over a mirror with `web` (3 instances) and `big` (200).
fn handler() -> Handler {
    let mirror = Arc::new(Mirror::new());
    let mut updates = Vec::new();
    for (i, ip) in ["10.0.0.1", "10.0.0.2", "fd00::3"].iter().enumerate() {
        updates.push(Update::Put {
            service: ServiceName::new("web").unwrap(),
            instance: instance(&format!("w{i}"), ip, 8080),
        });
    }
    for i in 0..200u16 {
        updates.push(Update::Put {
            service: ServiceName::new("big").unwrap(),
            instance: instance(
                &format!("b{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250),
                80,
            ),
        });
    }
    mirror.apply(updates, 7);
    let cfg = DnsConfig {
        zone: "svc.internal.".into(),
        ..DnsConfig::default()
    };
    // answer_now reads the status: a connected registry.
    let status = Arc::new(Status::default());
    status.set_connected();
    with_zones(Handler::new(&cfg, mirror, status, Arc::new(Metrics::new())).unwrap())
}

/// `h` also answering a static zone `static.test.` and a SkyDNS zone `skydns.local.` (with
/// two entries under `east`).
fn with_zones(h: Handler) -> Handler {
    use crate::registry::{Layout, Source};
    let sky = Source::framework(
        Layout::Skydns {
            zones: vec!["skydns.local.".into()],
            ttl: 300,
        },
        "/skydns/",
    );
    for (key, value) in [
        (
            "/skydns/local/skydns/east/a",
            r#"{"host":"10.9.0.1","port":80,"ttl":60}"#,
        ),
        (
            "/skydns/local/skydns/east/b",
            r#"{"host":"10.9.0.2","port":80}"#,
        ),
    ] {
        let update = sky.put(key.as_bytes(), value.as_bytes()).unwrap().unwrap();
        // At the same revision: the SOA serial tests expect the registry's.
        h.mirror.apply([update], h.mirror.load().revision);
    }
    let origin = Name::from_ascii("skydns.local.").unwrap();
    let sky_zone = SkyZone {
        soa: Default::default(),
        apex: LowerName::new(&origin),
        zone: h.zone_for(origin).unwrap(),
        source: sky.id,
        ttl: 300,
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("static.test.zone"),
        "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 10.8.0.53\n\
         www IN A 10.8.0.1\nwww IN A 10.8.0.2\n*.apps IN A 10.8.0.3\nalias IN CNAME www\n\
         sub IN NS ns.sub\nns.sub IN A 10.8.0.54\n",
    )
    .unwrap();
    let zones = StaticZones::load_dir(dir.path()).unwrap();
    h.with_sky(vec![sky_zone]).with_outside(
        Arc::new(ArcSwap::from_pointee(zones)),
        None,
        Vec::new(),
    )
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn with_edns(mut m: Message, payload: u16, version: u8) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    e.set_version(version);
    m.set_edns(e);
    m
}

/// Answers `m` as a UDP query and decodes what would be sent.
fn ask(h: &Handler, m: &Message, freshness: Freshness) -> (Reply, Message) {
    ask_over(h, m, freshness, Protocol::Udp)
}

fn ask_over(
    h: &Handler,
    m: &Message,
    freshness: Freshness,
    protocol: Protocol,
) -> (Reply, Message) {
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        "127.0.0.1:5300".parse().unwrap(),
        protocol,
    )
    .unwrap();
    let snapshot = h.mirror.load();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let reply = h.answer(
        &Question::of(&request),
        &Client::of(&request),
        &snapshot,
        freshness,
        &mut rng,
    );
    let mut out = Vec::new();
    encode_reply(
        &request,
        &reply,
        &mut out,
        crate::metrics::Proto::of(request.protocol()),
    );
    (reply, Message::from_vec(&out).unwrap())
}

fn rcode(h: &Handler, name: &str, qtype: RecordType, f: Freshness) -> ResponseCode {
    ask(h, &query(name, qtype), f).0.meta.response_code
}

#[test]
fn protocol_checks_come_first() {
    let h = handler();
    let bad_version = with_edns(query("web.svc.internal.", RecordType::A), 1232, 1);
    assert_eq!(
        ask(&h, &bad_version, Freshness::Current)
            .0
            .meta
            .response_code,
        ResponseCode::BADVERS
    );
    let mut notify = query("web.svc.internal.", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask(&h, &notify, Freshness::Current).0.meta.response_code,
        ResponseCode::NotImp
    );
    let mut chaos = query("web.svc.internal.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        ask(&h, &chaos, Freshness::Current).0.meta.response_code,
        ResponseCode::Refused
    );
    let mut two = query("web.svc.internal.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("x.svc.internal.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        ask(&h, &two, Freshness::Current).0.meta.response_code,
        ResponseCode::FormErr
    );
    assert_eq!(
        rcode(&h, "svc.internal.", RecordType::AXFR, Freshness::Current),
        ResponseCode::Refused
    );
    // Outside every zone, with no forwarder: REFUSED.
    assert_eq!(
        rcode(&h, "example.com.", RecordType::A, Freshness::Current),
        ResponseCode::Refused
    );
}

#[test]
fn positive_negative_and_apex_answers() {
    let h = handler();
    let (reply, m) = ask(
        &h,
        &query("wEb.SvC.InTeRnAl.", RecordType::A),
        Freshness::Current,
    );
    assert_eq!(reply.meta.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 2);
    assert!(m.answers.iter().all(|r| r.ttl == 5));
    let (_, nx) = ask(
        &h,
        &query("nope.svc.internal.", RecordType::A),
        Freshness::Current,
    );
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        matches!(nx.authorities[0].data, RData::SOA(_)),
        "NXDOMAIN carries the SOA"
    );
    let (_, nodata) = ask(
        &h,
        &query("web.svc.internal.", RecordType::MX),
        Freshness::Current,
    );
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && matches!(nodata.authorities[0].data, RData::SOA(_)));
    let (_, soa) = ask(
        &h,
        &query("svc.internal.", RecordType::SOA),
        Freshness::Current,
    );
    let RData::SOA(s) = &soa.answers[0].data else {
        panic!()
    };
    assert_eq!(s.serial, 7, "the serial is the revision");
    assert_eq!(
        rcode(&h, "_tcp.svc.internal.", RecordType::A, Freshness::Current),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(
            &h,
            "a.b.c.d.svc.internal.",
            RecordType::A,
            Freshness::Current
        ),
        ResponseCode::NXDomain
    );
}

#[test]
fn freshness_decides_registry_names_only() {
    let h = handler();
    for f in [Freshness::Empty, Freshness::Expired] {
        let (reply, m) = ask(&h, &query("web.svc.internal.", RecordType::A), f);
        assert_eq!(reply.meta.response_code, ResponseCode::ServFail, "{f:?}");
        assert!(!reply.meta.authoritative);
        assert!(m.answers.is_empty());
        assert_eq!(
            rcode(&h, "nope.svc.internal.", RecordType::A, f),
            ResponseCode::ServFail
        );
        // The apex is ruddr's own, not registry data.
        assert_eq!(
            rcode(&h, "svc.internal.", RecordType::SOA, f),
            ResponseCode::NoError
        );
    }
    let (reply, _) = ask(&h, &query("web.svc.internal.", RecordType::SRV), STALE);
    let built = reply.built.unwrap();
    assert!(
        built.answers().iter().all(|a| a.record.ttl == 30),
        "stale TTL replaces the TTL"
    );
    assert!(built
        .answers()
        .iter()
        .flat_map(|a| a.glue.iter())
        .all(|g| g.ttl == 30));
    assert!(reply.from_registry);
}

#[test]
fn udp_answers_are_cut_to_the_clients_buffer_with_tc() {
    let h = handler();
    for (payload, edns) in [(512u16, false), (1232, true), (4096, true)] {
        let mut m = query("_big._tcp.svc.internal.", RecordType::SRV);
        if edns {
            m = with_edns(m, payload, 0);
        }
        let request = Request::from_bytes(
            m.to_vec().unwrap(),
            "127.0.0.1:5300".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        let mut out = Vec::new();
        h.answer_now(
            &request,
            &mut out,
            crate::metrics::Proto::of(request.protocol()),
        )
        .ok()
        .unwrap();
        // ruddr's own limit is 1232 whatever the client offers.
        assert!(
            out.len() <= usize::from(payload.min(1232)),
            "{} for {payload}",
            out.len()
        );
        let sent = Message::from_vec(&out).unwrap();
        assert!(
            sent.metadata.truncation,
            "200 SRV records do not fit {payload}"
        );
        assert!(!sent.answers.is_empty());
        assert_eq!(
            sent.edns.is_some(),
            edns,
            "OPT kept whenever the client sent one"
        );
    }
    // Over TCP everything is sent.
    let (_, all) = ask_over(
        &h,
        &query("_big._tcp.svc.internal.", RecordType::SRV),
        Freshness::Current,
        Protocol::Tcp,
    );
    assert_eq!(all.answers.len(), 200);
    assert_eq!(all.additionals.len(), 200);
    assert!(!all.metadata.truncation);
}

#[test]
fn order_comes_from_the_rng() {
    let h = handler();
    let m = query("web.svc.internal.", RecordType::SRV);
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        "127.0.0.1:5300".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    let snapshot = h.mirror.load();
    let order = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        h.answer(
            &Question::of(&request),
            &Client::of(&request),
            &snapshot,
            Freshness::Current,
            &mut rng,
        )
        .order
    };
    assert_eq!(order(1), order(1), "same seed, same order");
    let firsts: std::collections::HashSet<u32> = (0..50).map(|s| order(s)[0]).collect();
    assert_eq!(firsts.len(), 3, "every instance comes first for some seed");
}

/// A handler over `web` with a1, a2 in locality `a`, b1 in `b`, with `[locality]` mode
/// `mode`: 127.0.0.2 is in `a`, 127.0.0.3 in `b`, 127.0.0.4 is a trusted forwarder.
fn zoned_handler(mode: crate::config::LocalityMode) -> Handler {
    let h = handler();
    let updates = [
        ("a1", "10.0.1.1", "a"),
        ("a2", "10.0.1.2", "a"),
        ("b1", "10.0.2.1", "b"),
    ]
    .into_iter()
    .map(|(id, ip, loc)| {
        let mut i = instance(id, ip, 8080);
        i.locality = Some(loc.into());
        i.meta.insert("v".into(), id.into());
        Update::Put {
            service: ServiceName::new("zoned").unwrap(),
            instance: i,
        }
    });
    h.mirror.apply(updates, 8);
    let net = |s: &str| s.parse().unwrap();
    h.with_locality(&LocalityConfig {
        mode,
        min_healthy: 1,
        trust_client_subnet: vec![net("127.0.0.4/32")],
        clients: vec![
            crate::config::ClientLocality {
                networks: vec![net("127.0.0.2/32"), net("10.1.0.0/16")],
                locality: "a".into(),
            },
            crate::config::ClientLocality {
                networks: vec![net("127.0.0.3/32")],
                locality: "b".into(),
            },
        ],
    })
}

/// Answers `m` from `src` over UDP.
fn ask_from(h: &Handler, m: &Message, src: &str) -> (Reply, Message) {
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        format!("{src}:5300").parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    let snapshot = h.mirror.load();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let reply = h.answer(
        &Question::of(&request),
        &Client::of(&request),
        &snapshot,
        Freshness::Current,
        &mut rng,
    );
    let mut out = Vec::new();
    encode_reply(
        &request,
        &reply,
        &mut out,
        crate::metrics::Proto::of(request.protocol()),
    );
    (reply, Message::from_vec(&out).unwrap())
}

fn answer_data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.to_string(),
            RData::PTR(p) => p.0.to_string(),
            RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
            other => format!("{other:?}"),
        })
        .collect();
    v.sort();
    v
}

fn with_subnet(m: Message, subnet: &str) -> Message {
    let mut m = with_edns(m, 1232, 0);
    let mut e = m.edns.take().unwrap();
    e.options_mut()
        .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
            subnet.parse().unwrap(),
        ));
    m.set_edns(e);
    m
}

fn scope(m: &Message) -> Option<u8> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(s.scope_prefix()),
        _ => None,
    }
}

#[test]
fn localities_never_share_cached_answers() {
    let h = zoned_handler(crate::config::LocalityMode::Only);
    let q = query("zoned.svc.internal.", RecordType::A);
    for _ in 0..3 {
        let (reply, a) = ask_from(&h, &q, "127.0.0.2");
        assert_eq!(answer_data(&a), ["10.0.1.1", "10.0.1.2"]);
        assert_eq!(reply.locality, Locality::Local);
        let (_, b) = ask_from(&h, &q, "127.0.0.3");
        assert_eq!(answer_data(&b), ["10.0.2.1"]);
        let (reply, all) = ask_from(&h, &q, "127.0.0.1");
        assert_eq!(answer_data(&all).len(), 3);
        assert_eq!(reply.locality, Locality::Unlocated);
    }
    // An instance's own name answers whoever asks.
    let (_, own) = ask_from(
        &h,
        &query("b1.zoned.svc.internal.", RecordType::A),
        "127.0.0.2",
    );
    assert_eq!(answer_data(&own), ["10.0.2.1"]);
    // DNS-SD instance lists follow locality too.
    let ptr = query("_zoned._tcp.svc.internal.", RecordType::PTR);
    let (_, b) = ask_from(&h, &ptr, "127.0.0.3");
    assert_eq!(answer_data(&b), ["b1._zoned._tcp.svc.internal."]);
    // The last local instance gone critical: spill-over at once.
    let mut b1 = instance("b1", "10.0.2.1", 8080);
    b1.locality = Some("b".into());
    b1.health = Health::Critical;
    h.mirror.apply(
        [Update::Put {
            service: ServiceName::new("zoned").unwrap(),
            instance: b1,
        }],
        9,
    );
    let (reply, b) = ask_from(&h, &q, "127.0.0.3");
    assert_eq!(answer_data(&b), ["10.0.1.1", "10.0.1.2"]);
    assert_eq!(reply.locality, Locality::SpillOver);
}

#[test]
fn a_trusted_client_subnet_decides_and_is_echoed_with_its_scope() {
    let h = zoned_handler(crate::config::LocalityMode::Only);
    let q = with_subnet(query("zoned.svc.internal.", RecordType::A), "10.1.2.0/24");
    let (_, via) = ask_from(&h, &q, "127.0.0.4");
    assert_eq!(answer_data(&via), ["10.0.1.1", "10.0.1.2"]);
    assert_eq!(scope(&via), Some(16), "the matched client network's prefix");
    // From an untrusted source the option is ignored (and echoed with scope 0).
    let (_, direct) = ask_from(&h, &q, "127.0.0.3");
    assert_eq!(answer_data(&direct), ["10.0.2.1"]);
    assert_eq!(scope(&direct), Some(32));
    let (_, nobody) = ask_from(&h, &q, "127.0.0.1");
    assert_eq!(answer_data(&nobody).len(), 3);
    assert_eq!(scope(&nobody), Some(0));
    // An instance's own name does not depend on locality: scope 0.
    let own = with_subnet(
        query("a1.zoned.svc.internal.", RecordType::A),
        "10.1.2.0/24",
    );
    assert_eq!(scope(&ask_from(&h, &own, "127.0.0.4").1), Some(0));
    // Without the option, none is added.
    let (_, plain) = ask_from(
        &h,
        &with_edns(query("zoned.svc.internal.", RecordType::A), 1232, 0),
        "127.0.0.4",
    );
    assert_eq!(scope(&plain), None);
}

#[test]
fn prefer_puts_local_instances_first() {
    let h = zoned_handler(crate::config::LocalityMode::Prefer);
    let q = query("zoned.svc.internal.", RecordType::A);
    for _ in 0..20 {
        let (_, b) = ask_from(&h, &q, "127.0.0.3");
        assert_eq!(b.answers.len(), 3);
        let RData::A(first) = &b.answers[0].data else {
            panic!()
        };
        assert_eq!(first.to_string(), "10.0.2.1");
    }
    let (_, srv) = ask_from(
        &h,
        &query("_zoned._tcp.svc.internal.", RecordType::SRV),
        "127.0.0.2",
    );
    assert_eq!(
        answer_data(&srv),
        [
            "0 1 8080 a1.zoned.svc.internal.",
            "0 1 8080 a2.zoned.svc.internal.",
            "1 1 8080 b1.zoned.svc.internal."
        ]
    );
}

#[test]
fn dns_sd_browsing() {
    let h = handler();
    let types = query("_services._dns-sd._udp.svc.internal.", RecordType::PTR);
    let (reply, m) = ask(&h, &types, Freshness::Current);
    assert_eq!(
        answer_data(&m),
        ["_big._tcp.svc.internal.", "_web._tcp.svc.internal."]
    );
    assert!(reply.from_registry);
    let (_, list) = ask(
        &h,
        &query("_web._tcp.svc.internal.", RecordType::PTR),
        Freshness::Current,
    );
    assert_eq!(
        answer_data(&list),
        [
            "w0._web._tcp.svc.internal.",
            "w1._web._tcp.svc.internal.",
            "w2._web._tcp.svc.internal."
        ]
    );
    let (_, srv) = ask(
        &h,
        &query("w0._web._tcp.svc.internal.", RecordType::SRV),
        Freshness::Current,
    );
    assert_eq!(answer_data(&srv), ["0 1 8080 w0.web.svc.internal."]);
    assert_eq!(srv.additionals.len(), 1, "the target's address");
    let (_, txt) = ask(
        &h,
        &query("w0._web._tcp.svc.internal.", RecordType::TXT),
        Freshness::Current,
    );
    let RData::TXT(t) = &txt.answers[0].data else {
        panic!()
    };
    assert_eq!(t.txt_data.len(), 1);
    assert!(t.txt_data[0].is_empty(), "no meta: one empty string");
    for b in [
        "b._dns-sd._udp.svc.internal.",
        "lb._dns-sd._udp.svc.internal.",
    ] {
        let (_, m) = ask(&h, &query(b, RecordType::PTR), Freshness::Current);
        assert_eq!(answer_data(&m), ["svc.internal."]);
    }
    for n in [
        "_udp.svc.internal.",
        "_dns-sd._udp.svc.internal.",
        "_tcp.svc.internal.",
    ] {
        let (_, m) = ask(&h, &query(n, RecordType::PTR), Freshness::Current);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{n}");
        assert!(m.answers.is_empty() && !m.authorities.is_empty(), "{n}");
    }
    assert_eq!(
        rcode(
            &h,
            "zz._web._tcp.svc.internal.",
            RecordType::SRV,
            Freshness::Current
        ),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(
            &h,
            "_services._dns-sd._udp.svc.internal.",
            RecordType::PTR,
            Freshness::Expired
        ),
        ResponseCode::ServFail
    );
    // A service losing its last instance leaves the types at once (the cache is keyed to
    // the whole snapshot, not one service).
    h.mirror.apply(
        (0..3).map(|i| Update::Delete {
            service: ServiceName::new("web").unwrap(),
            id: InstanceId::new(&format!("w{i}")).unwrap(),
            source: SourceId::NATIVE,
        }),
        8,
    );
    let (_, m) = ask(&h, &types, Freshness::Current);
    assert_eq!(answer_data(&m), ["_big._tcp.svc.internal."]);
    let (_, stale) = ask(&h, &types, STALE);
    assert!(stale.answers.iter().all(|r| r.ttl == 30));
}

#[test]
fn nxdomain_zone_for_rate_limiting() {
    let h = handler();
    let wire = |s: &str| {
        let mut out = Vec::new();
        let n = Name::from_ascii(s).unwrap();
        use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
        let mut e = BinEncoder::new(&mut out);
        n.emit(&mut e).unwrap();
        out
    };
    let name = wire("a.b.WEB.Svc.internal.");
    assert_eq!(h.zone_suffix(&name), wire("Svc.internal.").as_slice());
    let other = wire("x.y.example.com.");
    assert_eq!(h.zone_suffix(&other), wire("example.com.").as_slice());
    let root = wire(".");
    assert_eq!(h.zone_suffix(&root), root.as_slice());
    // Cut short: no panic.
    assert!(h.zone_suffix(&name[..5]).len() <= 5);
}

/// The sections of a response in a comparable form: per section, sorted (owner, TTL, data).
fn sections(m: &Message, fold_case: bool) -> Vec<Vec<String>> {
    let show = |r: &Record| {
        let owner = r.name.to_string();
        let owner = if fold_case {
            owner.to_ascii_lowercase()
        } else {
            owner
        };
        format!("{owner} {} {}", r.ttl, r.data)
    };
    [&m.answers, &m.authorities, &m.additionals]
        .iter()
        .map(|sec| {
            let mut v: Vec<String> = sec.iter().map(show).collect();
            v.sort();
            v
        })
        .collect()
}

fn flags(m: &Message) -> String {
    let md = &m.metadata;
    let edns = m
        .edns
        .as_ref()
        .map(|e| (e.max_payload(), e.version(), e.flags().dnssec_ok));
    format!(
        "id={} qr={:?} op={:?} aa={} tc={} rd={} ra={} ad={} cd={} rcode={:?} q={:?} edns={edns:?}",
        md.id,
        md.message_type,
        md.op_code,
        md.authoritative,
        md.truncation,
        md.recursion_desired,
        md.recursion_available,
        md.authentic_data,
        md.checking_disabled,
        md.response_code,
        m.queries
    )
}

/// The corpus of the differential test: every name form and type, mixed case, EDNS on and
/// off with large and small buffers, DO set.
fn corpus() -> Vec<Vec<u8>> {
    let names = [
        "web.svc.internal.",
        "WeB.sVc.InTeRnAl.",
        "w0.web.svc.internal.",
        "W1.Web.svc.internal.",
        "_web._tcp.svc.internal.",
        "_big._tcp.svc.internal.",
        "big.svc.internal.",
        "svc.internal.",
        "SVC.Internal.",
        "_tcp.svc.internal.",
        "nope.svc.internal.",
        "a.b.c.d.svc.internal.",
        "x.nope.svc.internal.",
        "1.0.0.10.in-addr.arpa.",
        "example.com.",
        "www.static.test.",
        "WWW.Static.TEST.",
        "x.apps.static.test.",
        "alias.static.test.",
        "host.sub.static.test.",
        "nope.static.test.",
        "static.test.",
        "east.skydns.local.",
        "A.East.SkyDNS.local.",
        "nope.skydns.local.",
        "skydns.local.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::SOA,
        RecordType::NS,
        RecordType::MX,
        RecordType::CNAME,
    ];
    let mut out = Vec::new();
    for name in names {
        for qtype in types {
            for edns in [
                None,
                Some((512, false)),
                Some((1232, true)),
                Some((4096, false)),
            ] {
                let mut m = query(name, qtype);
                m.metadata.recursion_desired = qtype == RecordType::A;
                if let Some((payload, dnssec_ok)) = edns {
                    let mut e = Edns::new();
                    e.set_max_payload(payload);
                    e.set_dnssec_ok(dnssec_ok);
                    m.set_edns(e);
                }
                out.push(m.to_vec().unwrap());
            }
        }
    }
    out
}

#[test]
fn answers_known_current_follow_every_registry_change() {
    let h = handler();
    let src: IpAddr = "127.0.0.1".parse().unwrap();
    let addresses = |name: &str| {
        let mut out = Vec::new();
        let q = query(name, RecordType::A).to_vec().unwrap();
        assert!(h.answer_fast(&q, src, &mut out).is_some());
        let m = Message::from_vec(&out).unwrap();
        let mut ips: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        ips.sort();
        (m.metadata.response_code, ips)
    };
    // Asked twice: built, then served as known current at this change count.
    for _ in 0..2 {
        assert_eq!(
            addresses("web.svc.internal."),
            (
                ResponseCode::NoError,
                vec!["10.0.0.1".into(), "10.0.0.2".into()]
            )
        );
    }
    let web = ServiceName::new("web").unwrap();
    h.mirror.apply(
        [Update::Put {
            service: web.clone(),
            instance: instance("w9", "10.0.0.9", 8080),
        }],
        8,
    );
    assert_eq!(
        addresses("web.svc.internal.").1,
        ["10.0.0.1", "10.0.0.2", "10.0.0.9"]
    );
    // A change to another service leaves this answer as it was, and it is still served.
    h.mirror.apply(
        [Update::Put {
            service: ServiceName::new("big").unwrap(),
            instance: instance("b999", "10.9.9.9", 80),
        }],
        9,
    );
    assert_eq!(addresses("web.svc.internal.").1.len(), 3);
    let deletes = ["w0", "w1", "w2", "w9"].map(|id| Update::Delete {
        service: web.clone(),
        id: InstanceId::new(id).unwrap(),
        source: SourceId::NATIVE,
    });
    h.mirror.apply(deletes, 10);
    assert_eq!(
        addresses("web.svc.internal."),
        (ResponseCode::NXDomain, vec![])
    );
}

#[test]
fn the_fast_path_allocates_nothing_per_answer_in_steady_state() {
    let h = handler();
    let src: IpAddr = "127.0.0.1".parse().unwrap();
    let mut queries = Vec::new();
    for (name, qtype) in [
        ("web.svc.internal.", RecordType::A),
        ("WeB.SVC.internal.", RecordType::AAAA),
        ("_web._tcp.svc.internal.", RecordType::SRV),
        ("w1.web.svc.internal.", RecordType::A),
        ("web.svc.internal.", RecordType::MX),
        ("nope.svc.internal.", RecordType::A),
    ] {
        queries.push(query(name, qtype).to_vec().unwrap());
        let mut m = with_edns(query(name, qtype), 1232, 0);
        m.metadata.id = 7;
        queries.push(m.to_vec().unwrap());
    }
    let mut out = Vec::with_capacity(4096);
    let mut answer_all = |rounds| {
        for _ in 0..rounds {
            for q in &queries {
                out.clear();
                assert!(h.answer_fast(q, src, &mut out).is_some());
            }
        }
    };
    // The first answers build and cache what later ones reuse (and create metric series).
    answer_all(3);
    let before = crate::alloc_count::on_this_thread();
    answer_all(100);
    let made = crate::alloc_count::on_this_thread() - before;
    assert_eq!(
        made,
        0,
        "{made} allocations for {} answers",
        100 * queries.len()
    );
}

#[test]
fn fast_path_gives_the_general_paths_answers() {
    let h = handler();
    let src: std::net::SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let mut compared = 0;
    let (mut static_fast, mut sky_fast) = (0, 0);
    for stale in [false, true] {
        if stale {
            h.status.set_disconnected();
        }
        for bytes in corpus() {
            let mut fast = Vec::new();
            if h.answer_fast(&bytes, src.ip(), &mut fast).is_none() {
                continue;
            }
            let lower = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            static_fast += usize::from(lower.contains("\x06static\x04test"));
            sky_fast += usize::from(lower.contains("\x06skydns\x05local"));
            let request = Request::from_bytes(bytes.clone(), src, Protocol::Udp).unwrap();
            let mut general = Vec::new();
            h.answer_now(
                &request,
                &mut general,
                crate::metrics::Proto::of(request.protocol()),
            )
            .ok()
            .unwrap();
            let (fast, general) = (
                Message::from_vec(&fast).unwrap(),
                Message::from_vec(&general).unwrap(),
            );
            let what = format!(
                "{:?} {:?}",
                request.queries.queries()[0].original(),
                request.edns.as_ref().map(|e| e.max_payload())
            );
            assert_eq!(flags(&fast), flags(&general), "{what}");
            // Hickory's encoder for the same decision: the reference for the bytes.
            let reply = h.answer(
                &Question::of(&request),
                &Client::of(&request),
                &h.mirror.load(),
                h.status.freshness(),
                &mut rand::rng(),
            );
            let mut reference = reference_message(&request, &reply);
            // The reference holds every record: the writer alone decides what fits.
            reference.metadata.truncation = fast.metadata.truncation;
            assert_eq!(flags(&fast), flags(&reference), "{what}");
            if fast.metadata.truncation {
                // Which records made it (and so how many: SRV targets differ in length)
                // depends on the order drawn.
                let (a, b) = (fast.answers.len(), general.answers.len());
                assert!(a > 0 && a.abs_diff(b) <= 2, "{a} and {b} answers: {what}");
                assert!(fast.additionals.len() <= 1 + a, "{what}");
            } else {
                assert_eq!(sections(&fast, false), sections(&general, false), "{what}");
                assert_eq!(sections(&fast, true), sections(&reference, true), "{what}");
            }
            if stale
                && !fast.answers.is_empty()
                && fast.metadata.response_code == ResponseCode::NoError
                && what.contains("web")
            {
                assert!(
                    fast.answers.iter().all(|r| r.ttl == 30),
                    "stale TTL: {what}"
                );
            }
            // The question's case comes back as sent, in the question and every owner
            // that is the question's name.
            assert_eq!(fast.queries, Message::from_vec(&bytes).unwrap().queries);
            for r in &fast.answers {
                if r.name
                    .to_string()
                    .eq_ignore_ascii_case(&fast.queries[0].name().to_string())
                {
                    assert_eq!(
                        r.name.to_string(),
                        fast.queries[0].name().to_string(),
                        "{what}"
                    );
                }
            }
            compared += 1;
        }
    }
    assert!(compared > 500, "{compared} compared");
    // Static and SkyDNS names take the fast path like registry names.
    assert!(
        static_fast > 200 && sky_fast > 100,
        "static {static_fast}, skydns {sky_fast}"
    );
}
