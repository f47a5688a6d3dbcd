//! DNS-SD browsing (RFC 6763) and locality-aware answers, against a real etcd and the real
//! binary: clients bound to different loopback addresses stand for different localities.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

const P: &str = "/ruddr/services/";

/// Sends `name`/`qtype` over UDP from `src` (an address of 127/8), with the client subnet
/// option `subnet` if given, and parses the response.
fn ask_from(
    src: &str,
    to: SocketAddr,
    name: &str,
    qtype: RecordType,
    subnet: Option<&str>,
) -> Message {
    let sock = UdpSocket::bind(format!("{src}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut q = query_message(name, qtype, Some(1232));
    if let Some(s) = subnet {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.options_mut()
            .insert(EdnsOption::Subnet(s.parse().unwrap()));
        q.set_edns(e);
    }
    sock.send_to(&q.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a response");
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

fn from(src: &str, r: &Ruddr, name: &str, qtype: RecordType) -> Vec<String> {
    answer_strings(&ask_from(src, r.addr(), name, qtype, None))
}

/// The scope of the client subnet option in `m`, if it has one.
fn scope(m: &Message) -> Option<u8> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(s.scope_prefix()),
        _ => None,
    }
}

/// Starts ruddr with `[locality]` in mode `mode`: 127.0.0.2 and 10.1/16 are `eu-1a`,
/// 127.0.0.3 is `eu-1b`, and 127.0.0.4 is a trusted forwarder.
fn start_zoned(etcd: &Etcd, mode: &str) -> (Ruddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ruddr.toml");
    std::fs::write(
        &path,
        format!(
            "[locality]\nmode = \"{mode}\"\nmin_healthy = 1\ntrust_client_subnet = [\"127.0.0.4/32\"]\n\
             [[locality.clients]]\nnetworks = [\"127.0.0.2/32\", \"10.1.0.0/16\"]\nlocality = \"eu-1a\"\n\
             [[locality.clients]]\nnetworks = [\"127.0.0.3/32\"]\nlocality = \"eu-1b\"\n"
        ),
    )
    .unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", path.to_str().unwrap()]);
    r.wait_log("watching etcd");
    (r, dir)
}

/// `api` with two instances in eu-1a, one in eu-1b and one with no locality.
fn zoned_registry() -> Etcd {
    let etcd = Etcd::start();
    for (id, ip, loc) in [
        ("a1", "10.0.1.1", Some("eu-1a")),
        ("a2", "10.0.1.2", Some("eu-1a")),
        ("b1", "10.0.2.1", Some("eu-1b")),
        ("n1", "10.0.3.1", None),
    ] {
        let loc = loc.map_or(String::new(), |l| format!(r#","locality":"{l}""#));
        etcd.put(
            &format!("{P}api/{id}"),
            &format!(r#"{{"address":"{ip}","port":8080{loc}}}"#),
        );
    }
    etcd
}

const ALL: [&str; 4] = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"];

#[test]
fn browsing_lists_service_types_instances_srv_glue_and_txt() {
    let etcd = Etcd::start();
    etcd.put(
        &format!("{P}web/web-1"),
        r#"{"address":"10.0.0.5","port":8080,"tags":["v2"],"meta":{"path":"/api","version":"2"}}"#,
    );
    etcd.put(
        &format!("{P}web/web-2"),
        r#"{"address":"fd00::6","port":8081,"weight":5,"priority":2}"#,
    );
    etcd.put(
        &format!("{P}db/db-1"),
        r#"{"address":"10.0.1.1","port":5432}"#,
    );
    etcd.put(&format!("{P}noport/x"), r#"{"address":"10.0.2.1"}"#);
    etcd.put(
        &format!("{P}down/y"),
        r#"{"address":"10.0.3.1","port":1,"health":"critical"}"#,
    );
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_log("watching etcd");
    let p = r.port;
    assert_eq!(
        dig_short(p, "_services._dns-sd._udp.svc.internal", "PTR"),
        ["_db._tcp.svc.internal.", "_web._tcp.svc.internal."],
        "only services with a healthy instance that has a port"
    );
    assert_eq!(
        dig_short(p, "_web._tcp.svc.internal", "PTR"),
        [
            "web-1._web._tcp.svc.internal.",
            "web-2._web._tcp.svc.internal."
        ]
    );
    // The same name still answers SRV in the RFC 2782 form.
    assert_eq!(dig_short(p, "_web._tcp.svc.internal", "SRV").len(), 2);
    assert_eq!(
        dig_short(p, "web-2._web._tcp.svc.internal", "SRV"),
        ["2 5 8081 web-2.web.svc.internal."]
    );
    let srv = dig(
        p,
        &[
            "web-1._web._tcp.svc.internal",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ],
    );
    assert!(srv.contains("0 1 8080 web-1.web.svc.internal."), "{srv}");
    assert!(
        srv.lines()
            .any(|l| l.starts_with("web-1.web.svc.internal.") && l.contains("10.0.0.5")),
        "the target's address in the additional section: {srv}"
    );
    assert_eq!(
        dig_short(p, "web-1._web._tcp.svc.internal", "TXT"),
        ["\"path=/api\" \"version=2\""],
        "meta only, one string per pair"
    );
    assert_eq!(
        dig_short(p, "web-2._web._tcp.svc.internal", "TXT"),
        ["\"\""]
    );
    for browse in [
        "b._dns-sd._udp.svc.internal",
        "lb._dns-sd._udp.svc.internal",
    ] {
        assert_eq!(dig_short(p, browse, "PTR"), ["svc.internal."]);
    }
    for node in [
        "_udp.svc.internal",
        "_dns-sd._udp.svc.internal",
        "_tcp.svc.internal",
    ] {
        let out = dig(p, &[node, "PTR"]);
        assert!(
            out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
            "{node}: {out}"
        );
    }
    let nx = dig(p, &["nope._web._tcp.svc.internal", "SRV"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    // TCP gets the same browse answer.
    let tcp = dig(
        p,
        &[
            "+tcp",
            "+short",
            "_services._dns-sd._udp.svc.internal",
            "PTR",
        ],
    );
    assert_eq!(tcp.lines().count(), 2, "{tcp}");

    // A service whose last healthy instance fails leaves the service types, and a new one
    // joins them: the browse answer follows the set of services, not one service.
    etcd.put(
        &format!("{P}db/db-1"),
        r#"{"address":"10.0.1.1","port":5432,"health":"critical"}"#,
    );
    eventually(Duration::from_secs(5), "db leaves browsing", || {
        (dig_short(p, "_services._dns-sd._udp.svc.internal", "PTR") == ["_web._tcp.svc.internal."])
            .then_some(())
    });
    assert!(dig(p, &["_db._tcp.svc.internal", "PTR"]).contains("status: NXDOMAIN"));
    etcd.put(
        &format!("{P}cache/c1"),
        r#"{"address":"10.0.4.1","port":6379}"#,
    );
    eventually(Duration::from_secs(5), "cache joins browsing", || {
        (dig_short(p, "_services._dns-sd._udp.svc.internal", "PTR")
            == ["_cache._tcp.svc.internal.", "_web._tcp.svc.internal."])
        .then_some(())
    });
}

#[test]
fn only_mode_answers_each_locality_its_own_and_spills_over() {
    let etcd = zoned_registry();
    let (r, _dir) = start_zoned(&etcd, "only");
    let (a, b) = (["10.0.1.1", "10.0.1.2"], ["10.0.2.1"]);
    // Alternating clients never get each other's answers through the answer cache.
    for _ in 0..10 {
        assert_eq!(from("127.0.0.2", &r, "api.svc.internal.", RecordType::A), a);
        assert_eq!(from("127.0.0.3", &r, "api.svc.internal.", RecordType::A), b);
        assert_eq!(
            from("127.0.0.1", &r, "api.svc.internal.", RecordType::A),
            ALL
        );
    }
    // SRV (service name and RFC 2782) and DNS-SD instance lists follow locality too.
    assert_eq!(
        from("127.0.0.3", &r, "_api._tcp.svc.internal.", RecordType::SRV),
        ["0 1 8080 b1.api.svc.internal."]
    );
    assert_eq!(
        from("127.0.0.2", &r, "_api._tcp.svc.internal.", RecordType::PTR),
        ["a1._api._tcp.svc.internal.", "a2._api._tcp.svc.internal."]
    );
    // An instance's own name answers everyone.
    assert_eq!(
        from("127.0.0.2", &r, "b1.api.svc.internal.", RecordType::A),
        ["10.0.2.1"]
    );

    // A trusted forwarder's client subnet decides, and is echoed with the client network's
    // prefix as scope; an untrusted source's subnet is ignored.
    let via = ask_from(
        "127.0.0.4",
        r.addr(),
        "api.svc.internal.",
        RecordType::A,
        Some("10.1.7.0/24"),
    );
    assert_eq!(answer_strings(&via), a);
    assert_eq!(scope(&via), Some(16));
    let spoofed = ask_from(
        "127.0.0.3",
        r.addr(),
        "api.svc.internal.",
        RecordType::A,
        Some("10.1.7.0/24"),
    );
    assert_eq!(answer_strings(&spoofed), b);
    let forwarder_alone = ask_from(
        "127.0.0.4",
        r.addr(),
        "api.svc.internal.",
        RecordType::A,
        None,
    );
    assert_eq!(
        answer_strings(&forwarder_alone),
        ALL,
        "the forwarder itself has no locality"
    );
    let unmapped = ask_from(
        "127.0.0.4",
        r.addr(),
        "api.svc.internal.",
        RecordType::A,
        Some("192.0.2.0/24"),
    );
    assert_eq!(
        (answer_strings(&unmapped), scope(&unmapped)),
        (ALL.map(String::from).to_vec(), Some(0))
    );

    // The last local instance turning critical: eu-1b spills over to every served instance.
    etcd.put(
        &format!("{P}api/b1"),
        r#"{"address":"10.0.2.1","port":8080,"locality":"eu-1b","health":"critical"}"#,
    );
    eventually(Duration::from_secs(5), "eu-1b spills over", || {
        (from("127.0.0.3", &r, "api.svc.internal.", RecordType::A)
            == ["10.0.1.1", "10.0.1.2", "10.0.3.1"])
        .then_some(())
    });
    assert_eq!(from("127.0.0.2", &r, "api.svc.internal.", RecordType::A), a);
    r.wait_metric(r#"ruddr_dns_locality_answers_total{result="local"}"#, |v| {
        v >= 20.0
    });
    r.wait_metric(
        r#"ruddr_dns_locality_answers_total{result="spill_over"}"#,
        |v| v >= 1.0,
    );
    r.wait_metric(
        r#"ruddr_dns_locality_answers_total{result="no_locality"}"#,
        |v| v >= 10.0,
    );
}

#[test]
fn prefer_mode_puts_each_localitys_own_first() {
    let etcd = zoned_registry();
    let (r, _dir) = start_zoned(&etcd, "prefer");
    for _ in 0..10 {
        let a = ask_from(
            "127.0.0.2",
            r.addr(),
            "api.svc.internal.",
            RecordType::A,
            None,
        );
        assert_eq!(answer_strings(&a), ALL, "prefer keeps every instance");
        let first = rdata_string(&a.answers[0].data);
        assert!(first.starts_with("10.0.1."), "eu-1a first: {first}");
        let b = ask_from(
            "127.0.0.3",
            r.addr(),
            "api.svc.internal.",
            RecordType::A,
            None,
        );
        assert_eq!(rdata_string(&b.answers[0].data), "10.0.2.1");
    }
    // SRV: 2 x priority inside the locality, 2 x priority + 1 outside.
    assert_eq!(
        from("127.0.0.3", &r, "api.svc.internal.", RecordType::SRV),
        [
            "0 1 8080 b1.api.svc.internal.",
            "1 1 8080 a1.api.svc.internal.",
            "1 1 8080 a2.api.svc.internal.",
            "1 1 8080 n1.api.svc.internal.",
        ]
    );
    // A client with no locality gets today's answer.
    assert!(from("127.0.0.1", &r, "api.svc.internal.", RecordType::SRV)
        .iter()
        .all(|s| s.starts_with("0 1 8080")));
    let rec = ask_from(
        "127.0.0.3",
        r.addr(),
        "api.svc.internal.",
        RecordType::SRV,
        None,
    );
    assert!(matches!(rec.answers[0].data, RData::SRV(_)));
}
