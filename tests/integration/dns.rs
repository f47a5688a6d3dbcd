//! The DNS contract, checked with dig and the hickory-proto client.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

const WEB1: &str = r#"{"address":"10.0.0.5","port":8080,"ports":{"http":8080,"grpc":9090},"tags":["v2"],"weight":10,"priority":0,"health":"passing","meta":{"az":"a"}}"#;
const WEB2: &str = r#"{"address":"10.0.0.6","port":8081,"ports":{"http":8081},"tags":["v1"]}"#;
const WEB3: &str = r#"{"address":"fd00::7","port":8082,"health":"warning"}"#;
const WEB4: &str = r#"{"address":"10.0.0.8","port":8083,"health":"critical"}"#;

fn setup(extra: &[&str]) -> (Etcd, Ruddr) {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/web-1", WEB1);
    etcd.put("/ruddr/services/web/web-2", WEB2);
    etcd.put("/ruddr/services/web/web-3", WEB3);
    etcd.put("/ruddr/services/web/web-4", WEB4);
    etcd.put("/ruddr/services/db/db-1", r#"{"address":"10.0.1.1"}"#);
    let ruddr = Ruddr::start(&etcd.endpoint(), extra);
    ruddr.wait_watching();
    (etcd, ruddr)
}

#[test]
fn dig_a_and_srv_with_additionals() {
    let (_etcd, r) = setup(&[]);
    assert_eq!(
        dig_short(r.port, "web.svc.internal", "A"),
        ["10.0.0.5", "10.0.0.6"]
    );
    assert_eq!(dig_short(r.port, "web.svc.internal", "AAAA"), ["fd00::7"]);
    assert_eq!(
        dig_short(r.port, "web.svc.internal", "SRV"),
        [
            "0 1 8081 web-2.web.svc.internal.",
            "0 1 8082 web-3.web.svc.internal.",
            "0 10 8080 web-1.web.svc.internal.",
        ]
    );
    // RFC 2782 form and named ports.
    assert_eq!(dig_short(r.port, "_web._tcp.svc.internal", "SRV").len(), 3);
    assert_eq!(
        dig_short(r.port, "_grpc._tcp.web.svc.internal", "SRV"),
        ["0 10 9090 web-1.web.svc.internal."]
    );
    assert_eq!(
        dig_short(r.port, "_http._tcp.web.svc.internal", "SRV").len(),
        2
    );
    // Instance and tag forms.
    assert_eq!(
        dig_short(r.port, "web-2.web.svc.internal", "A"),
        ["10.0.0.6"]
    );
    assert_eq!(
        dig_short(r.port, "WEB-3.Web.SVC.internal", "AAAA"),
        ["fd00::7"]
    );
    assert_eq!(
        dig_short(r.port, "v2._tag.web.svc.internal", "A"),
        ["10.0.0.5"]
    );
    assert_eq!(
        dig_short(r.port, "web-1.web.svc.internal", "TXT"),
        ["\"az=a\" \"tag=v2\""]
    );

    // SRV answers carry the targets' addresses in the additional section.
    let m = query(r.addr(), "web.svc.internal.", RecordType::SRV);
    assert!(m.metadata.authoritative);
    let mut adds: Vec<String> = m
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
        .map(|r| format!("{} {}", r.name, rdata_string(&r.data)))
        .collect();
    adds.sort();
    assert_eq!(
        adds,
        [
            "web-1.web.svc.internal. 10.0.0.5",
            "web-2.web.svc.internal. 10.0.0.6",
            "web-3.web.svc.internal. fd00::7",
        ]
    );
}

#[test]
fn negative_answers_soa_aa_and_refused() {
    let (_etcd, r) = setup(&["--ttl", "17", "--negative-ttl", "9"]);
    let a = r.addr();
    let ok = query(a, "web.svc.internal.", RecordType::A);
    assert_eq!(rcode(&ok), ResponseCode::NoError);
    assert!(ok.metadata.authoritative);
    assert!(!ok.metadata.recursion_available);
    assert!(ok.answers.iter().all(|r| r.ttl == 17));

    let check_soa = |m: &hickory_proto::op::Message| {
        assert_eq!(m.authorities.len(), 1, "one SOA in authority: {m:?}");
        let soa = &m.authorities[0];
        assert_eq!(soa.ttl, 9);
        let RData::SOA(s) = &soa.data else {
            panic!("not an SOA: {soa:?}")
        };
        assert_eq!(s.minimum, 9);
        assert_eq!(soa.name.to_string(), "svc.internal.");
    };
    for name in [
        "nope.svc.internal.",
        "web-4.web.svc.internal.", // critical instance
        "nope.web.svc.internal.",
        "v9._tag.web.svc.internal.",
        "_smtp._tcp.web.svc.internal.",
        "a.b.c.d.svc.internal.",
    ] {
        let m = query(a, name, RecordType::A);
        assert_eq!(rcode(&m), ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert!(m.answers.is_empty());
        check_soa(&m);
    }
    // NODATA: the name exists, not with this type.
    for (name, t) in [
        ("db.svc.internal.", RecordType::AAAA),
        ("db.svc.internal.", RecordType::SRV), // db-1 has no port
        ("web.svc.internal.", RecordType::MX),
        ("_web._tcp.svc.internal.", RecordType::A),
        ("svc.internal.", RecordType::A),
        ("_tcp.web.svc.internal.", RecordType::A),
    ] {
        let m = query(a, name, t);
        assert_eq!(rcode(&m), ResponseCode::NoError, "{name} {t}");
        assert!(m.answers.is_empty(), "{name} {t}");
        check_soa(&m);
    }
    // Apex.
    let soa = query(a, "svc.internal.", RecordType::SOA);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let ns = query(a, "svc.internal.", RecordType::NS);
    assert_eq!(answer_strings(&ns), ["ns.dns.svc.internal."]);
    // Outside the zone: REFUSED, not authoritative. Zone transfers refused.
    let m = query(a, "example.com.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    let axfr = exchange(
        a,
        &query_message("svc.internal.", RecordType::AXFR, None),
        Transport::Tcp,
    );
    assert_eq!(rcode(&axfr), ResponseCode::Refused);
}

#[test]
fn edns_is_honoured() {
    let (_etcd, r) = setup(&[]);
    let with = query(r.addr(), "web.svc.internal.", RecordType::A);
    let edns = with.edns.expect("OPT in the response to an EDNS query");
    assert_eq!(edns.max_payload(), 1232);
    let small = exchange(
        r.addr(),
        &query_message("web.svc.internal.", RecordType::A, Some(600)),
        Transport::Udp,
    );
    assert_eq!(small.edns.unwrap().max_payload(), 600);
    let without = exchange(
        r.addr(),
        &query_message("web.svc.internal.", RecordType::A, None),
        Transport::Udp,
    );
    assert!(without.edns.is_none(), "no OPT when the query had none");
    // EDNS version 1 gets BADVERS (RFC 6891 6.1.3).
    let out = dig(r.port, &["web.svc.internal", "A", "+edns=1", "+noednsneg"]);
    assert!(out.contains("status: BADVERS"), "{out}");
}

#[test]
fn truncation_over_udp_and_complete_answer_over_tcp() {
    let etcd = Etcd::start();
    let kvs: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("/ruddr/services/big/i{i}"),
                format!(
                    r#"{{"address":"10.1.{}.{}","port":{}}}"#,
                    i / 250,
                    i % 250 + 1,
                    8000 + i
                ),
            )
        })
        .collect();
    etcd.put_many(&kvs);
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();

    for qtype in [RecordType::A, RecordType::SRV] {
        let udp = exchange(
            r.addr(),
            &query_message("big.svc.internal.", qtype, Some(1232)),
            Transport::Udp,
        );
        assert!(udp.metadata.truncation, "{qtype}: TC set over UDP");
        assert!(
            udp.edns.is_some(),
            "{qtype}: the OPT record survives truncation"
        );
        assert!(!udp.answers.is_empty(), "{qtype}: as many answers as fit");
        assert!(udp.answers.len() < 300);
        let plain = exchange(
            r.addr(),
            &query_message("big.svc.internal.", qtype, None),
            Transport::Udp,
        );
        assert!(plain.metadata.truncation);
        let tcp = exchange(
            r.addr(),
            &query_message("big.svc.internal.", qtype, Some(1232)),
            Transport::Tcp,
        );
        assert!(!tcp.metadata.truncation, "{qtype}: no TC over TCP");
        assert_eq!(tcp.answers.len(), 300, "{qtype}: all instances over TCP");
        if qtype == RecordType::SRV {
            assert_eq!(
                tcp.additionals
                    .iter()
                    .filter(|r| matches!(r.data, RData::A(_)))
                    .count(),
                300
            );
        }
    }
    // dig sees TC on UDP and retries over TCP by itself.
    let out = dig(r.port, &["big.svc.internal", "A"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert_eq!(dig_short(r.port, "big.svc.internal", "A").len(), 300);

    // An SRV answer that fits without its additionals is sent whole, additionals cut, no TC.
    let kvs: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("/ruddr/services/mid/instance-number-{i}"),
                format!(r#"{{"address":"10.2.0.{}","port":80}}"#, i + 1),
            )
        })
        .collect();
    etcd.put_many(&kvs);
    let m = eventually(std::time::Duration::from_secs(5), "12 SRV answers", || {
        let m = exchange(
            r.addr(),
            &query_message("mid.svc.internal.", RecordType::SRV, Some(1232)),
            Transport::Udp,
        );
        (m.answers.len() == 12).then_some(m)
    });
    assert!(!m.metadata.truncation, "SRV answers fit: no TC");
    let adds = m
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(_)))
        .count();
    assert!(
        adds > 0 && adds < 12,
        "additionals cut to fit, not all dropped: {adds}"
    );
    let tcp = exchange(
        r.addr(),
        &query_message("mid.svc.internal.", RecordType::SRV, Some(1232)),
        Transport::Tcp,
    );
    assert_eq!(
        tcp.additionals
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .count(),
        12
    );
}
