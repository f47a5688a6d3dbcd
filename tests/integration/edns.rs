//! EDNS compliance with the `dig` checks of ISC's EDNS compliance tester, on the UDP fast path
//! and on the general path (`dns.udp_fast_path = false`), and the question's case kept in
//! answers (0x20).

use hickory_proto::rr::RecordType;

use crate::harness::*;

/// A ruddr with the UDP fast path on or off, watching etcd.
fn start(etcd: &Etcd, fast: bool) -> Ruddr {
    Ruddr::start_with_config(
        &etcd.endpoint(),
        &format!("[dns]\nudp_fast_path = {fast}\n"),
    )
}

/// The `status:` dig prints.
fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

/// The EDNS line dig prints for the response's OPT record (`; EDNS: version: 0, flags: do;
/// udp: 1232`), if it has one.
fn edns_line(out: &str) -> Option<&str> {
    out.lines().find(|l| l.starts_with("; EDNS:"))
}

fn check_compliance(r: &Ruddr, path: &str) {
    wait_answers(
        r,
        "web.svc.internal.",
        RecordType::A,
        &["10.70.0.1", "10.70.0.2"],
        std::time::Duration::from_secs(10),
    );
    let soa = |extra: &[&str]| {
        let mut args = vec!["+norec", "svc.internal", "SOA"];
        args.extend_from_slice(extra);
        dig(r.port, &args)
    };
    // plain: no EDNS in, none out.
    let out = soa(&["+noedns"]);
    assert_eq!(status(&out), "NOERROR", "{path} plain: {out}");
    assert!(edns_line(&out).is_none(), "{path} plain: {out}");
    assert!(out.contains("IN\tSOA"), "{path} plain: {out}");
    // edns: version 0 echoed, no flags.
    let out = soa(&["+edns=0", "+nocookie"]);
    assert_eq!(status(&out), "NOERROR", "{path} edns: {out}");
    let line = edns_line(&out).unwrap_or_else(|| panic!("{path} edns: {out}"));
    assert!(line.contains("version: 0"), "{path} edns: {line}");
    // edns1: BADVERS, answered with version 0 and no records.
    let out = soa(&["+edns=1", "+noednsneg", "+nocookie"]);
    assert_eq!(status(&out), "BADVERS", "{path} edns1: {out}");
    assert!(
        edns_line(&out).is_some_and(|l| l.contains("version: 0")),
        "{path} edns1: {out}"
    );
    assert!(out.contains("ANSWER: 0"), "{path} edns1: {out}");
    // ednsopt: an unknown option is ignored, not echoed.
    let out = soa(&["+edns=0", "+nocookie", "+ednsopt=100"]);
    assert_eq!(status(&out), "NOERROR", "{path} ednsopt: {out}");
    assert!(!out.contains("OPT=100"), "{path} ednsopt: {out}");
    // ednsflags: an unknown flag is ignored, and not set in the response (MBZ clear).
    let out = soa(&["+edns=0", "+nocookie", "+ednsflags=0x80"]);
    assert_eq!(status(&out), "NOERROR", "{path} ednsflags: {out}");
    assert!(!out.contains("MBZ"), "{path} ednsflags: {out}");
    // dnssec: the DO bit comes back (RFC 3225).
    let out = soa(&["+edns=0", "+nocookie", "+dnssec"]);
    assert_eq!(status(&out), "NOERROR", "{path} do: {out}");
    assert!(
        edns_line(&out).is_some_and(|l| l.contains("flags: do")),
        "{path} do: {out}"
    );
    // ednstcp: the same over TCP.
    let out = soa(&["+edns=0", "+nocookie", "+tcp"]);
    assert_eq!(status(&out), "NOERROR", "{path} tcp: {out}");
    assert!(edns_line(&out).is_some(), "{path} tcp: {out}");
    // cookie: answered (ruddr keeps no cookies; it need not echo one).
    let out = soa(&["+edns=0", "+cookie"]);
    assert_eq!(status(&out), "NOERROR", "{path} cookie: {out}");
    assert!(out.contains("IN\tSOA"), "{path} cookie: {out}");
    // nsid: answered (no NSID configured, so none sent).
    let out = soa(&["+edns=0", "+nocookie", "+nsid"]);
    assert_eq!(status(&out), "NOERROR", "{path} nsid: {out}");
    // subnet: answered; an echoed option carries scope 0 (the answer does not depend on it).
    let out = soa(&["+edns=0", "+nocookie", "+subnet=192.0.2.0/24"]);
    assert_eq!(status(&out), "NOERROR", "{path} subnet: {out}");
    if let Some(ecs) = out.lines().find(|l| l.contains("CLIENT-SUBNET")) {
        assert!(ecs.contains("/24/0"), "{path} subnet: {ecs}");
    }
    // opcode 15: NOTIMP.
    let out = dig(r.port, &["+norec", "+noedns", "+opcode=15", "+header-only"]);
    assert_eq!(status(&out), "NOTIMP", "{path} opcode 15: {out}");

    // 0x20: the answer's owner is the question's own spelling, on every answer.
    for qtype in ["A", "SRV"] {
        let (name, owner_name) = if qtype == "A" {
            ("wEb.SvC.InTeRnAl", "wEb.SvC.InTeRnAl.")
        } else {
            ("_WeB._TcP.sVc.InTeRnAl", "_WeB._TcP.sVc.InTeRnAl.")
        };
        let out = dig(r.port, &["+norec", "+noall", "+answer", name, qtype]);
        let owners: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(owners.len(), 2, "{path} {qtype}: {out}");
        assert!(
            owners.iter().all(|o| *o == owner_name),
            "{path} {qtype}: {out}"
        );
    }
    // DO on an ordinary answer too.
    let out = dig(
        r.port,
        &["+norec", "+dnssec", "+nocookie", "web.svc.internal", "A"],
    );
    assert!(
        edns_line(&out).is_some_and(|l| l.contains("flags: do")),
        "{path}: {out}"
    );
}

#[test]
fn edns_compliance_and_0x20_on_the_fast_and_the_general_path() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.70.0.1","port":8080}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.70.0.2","port":8080}"#,
    );
    let fast = start(&etcd, true);
    check_compliance(&fast, "fast path");
    let general = start(&etcd, false);
    check_compliance(&general, "general path");
}

#[test]
fn the_fast_and_the_general_path_answer_alike() {
    // The same corpus to two servers, one per path: rcode, flags and record sets match.
    let etcd = Etcd::start();
    for i in 0..3 {
        etcd.put(
            &format!("/ruddr/services/web/w{i}"),
            &format!(r#"{{"address":"10.71.0.{i}","port":8080,"ports":{{"grpc":9090}},"tags":["v2"],"meta":{{"az":"a"}}}}"#),
        );
    }
    for i in 0..150 {
        etcd.put(
            &format!("/ruddr/services/big/b{i}"),
            &format!(r#"{{"address":"10.72.{}.{}","port":80}}"#, i / 250, i % 250),
        );
    }
    // SkyDNS entries, a static zone (wildcard, CNAME chain, delegation) and an upstream for
    // forwarded names: every kind of zone goes through both paths.
    etcd.put(
        "/skydns/local/skydns/east/rails/1",
        r#"{"host":"10.73.0.1","port":8080,"ttl":60}"#,
    );
    etcd.put(
        "/skydns/local/skydns/east/rails/2",
        r#"{"host":"10.73.0.2","port":8080,"ttl":60}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let soa =
        "$TTL 300\n@ IN SOA ns hostmaster 7 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\n";
    std::fs::write(
        zones.join("static.test.zone"),
        format!(
            "{soa}www IN A 192.0.2.10\nwww IN A 192.0.2.11\n*.apps IN A 192.0.2.20\n\
             alias IN CNAME www\nmail IN MX 10 www\nsub IN NS ns.sub\nns.sub IN A 192.0.2.53\n\
             txt IN TXT \"a\" \"b\"\n"
        ),
    )
    .unwrap();
    let up_zones = dir.path().join("up");
    std::fs::create_dir_all(&up_zones).unwrap();
    std::fs::write(
        up_zones.join("upstream.test.zone"),
        format!("{soa}www IN A 192.0.2.99\nalias IN CNAME www\n"),
    )
    .unwrap();
    let upstream = Ruddr::start(
        &format!("http://{}:2379", own_loopback()),
        &[
            "--zones-dir",
            up_zones.to_str().unwrap(),
            "--zone",
            "upstream-registry.test",
        ],
    );
    let start = |fast: bool| {
        Ruddr::start_with_config(
            &etcd.endpoint(),
            &format!(
                "zones_dir = {:?}\n[dns]\nudp_fast_path = {fast}\n[forward]\nupstreams = [\"{}\"]\n\
                 [[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\nzones = [\"skydns.local.\"]\n",
                zones.to_str().unwrap(),
                upstream.addr()
            ),
        )
    };
    let fast = start(true);
    let general = start(false);
    // Both have every instance (the last one written, and the first service).
    for r in [&fast, &general] {
        wait_answers(
            r,
            "b149.big.svc.internal.",
            RecordType::A,
            &["10.72.0.149"],
            std::time::Duration::from_secs(10),
        );
        wait_answers(
            r,
            "web.svc.internal.",
            RecordType::A,
            &["10.71.0.0", "10.71.0.1", "10.71.0.2"],
            std::time::Duration::from_secs(10),
        );
    }
    let names = [
        "web.svc.internal.",
        "WEB.svc.internal.",
        "w1.web.svc.internal.",
        "_web._tcp.svc.internal.",
        "_grpc._tcp.web.svc.internal.",
        "v2._tag.web.svc.internal.",
        "big.svc.internal.",
        "_big._tcp.svc.internal.",
        "svc.internal.",
        "_tcp.svc.internal.",
        "nope.svc.internal.",
        "10.0.71.10.in-addr.arpa.",
        "rails.east.skydns.local.",
        "east.skydns.local.",
        "nope.skydns.local.",
        "skydns.local.",
        "www.static.test.",
        "WwW.Static.Test.",
        "x.apps.static.test.",
        "alias.static.test.",
        "mail.static.test.",
        "host.sub.static.test.",
        "txt.static.test.",
        "nope.static.test.",
        "static.test.",
        "www.upstream.test.",
        "alias.upstream.test.",
        "nope.upstream.test.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::SOA,
        RecordType::MX,
    ];
    let mut compared = 0;
    for name in names {
        for qtype in types {
            for edns in [None, Some(512), Some(1232)] {
                let mut q = query_message(name, qtype, edns);
                // Forwarded names are answered for queries that ask for recursion.
                q.metadata.recursion_desired = true;
                let a = exchange(fast.addr(), &q, Transport::Udp);
                let b = exchange(general.addr(), &q, Transport::Udp);
                let what = format!("{name} {qtype} {edns:?}");
                assert_eq!(a.metadata.response_code, b.metadata.response_code, "{what}");
                assert_eq!(a.metadata.authoritative, b.metadata.authoritative, "{what}");
                assert_eq!(a.metadata.truncation, b.metadata.truncation, "{what}");
                assert_eq!(a.edns.is_some(), b.edns.is_some(), "{what}");
                assert_eq!(a.queries, b.queries, "{what}");
                if a.metadata.truncation {
                    continue;
                }
                // A forwarded answer's TTLs count down in each server's cache: a second apart
                // at most, so they are left out for those.
                let forwarded = name.to_ascii_lowercase().ends_with("upstream.test.");
                let set = |m: &hickory_proto::op::Message| {
                    let v: Vec<Vec<String>> = [&m.answers, &m.authorities, &m.additionals]
                        .iter()
                        .map(|s| {
                            let mut v: Vec<String> = s
                                .iter()
                                .map(|r| {
                                    let ttl = if forwarded { 0 } else { r.ttl };
                                    format!("{} {} {}", r.name, ttl, r.data)
                                })
                                .collect();
                            v.sort();
                            v
                        })
                        .collect();
                    v
                };
                assert_eq!(set(&a), set(&b), "{what}");
                compared += 1;
            }
        }
    }
    assert!(compared > 500, "{compared}");
}
