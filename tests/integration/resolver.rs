//! ruddr as the nameserver in resolv.conf: static zones, forwarding with failover, the
//! recursion allow list, AXFR/ANY/PTR, and real clients (glibc through a private resolv.conf,
//! dnspython).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

fn rd_query(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    udp_query_from("127.0.0.1:0", addr, name, qtype)
}

#[test]
fn forwarding_passes_answers_through_and_fails_over() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.40.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&dir);
    // Nobody listens on port 53 of an address of our own.
    let dead = format!("{}:53", own_loopback());
    let upstreams = format!("{dead},127.0.0.1:{}", up.port);
    let r = Ruddr::start(
        &etcd.endpoint(),
        &["--upstream", &upstreams, "--forward-timeout", "500ms"],
    );
    r.wait_watching();

    // Through the dead first upstream to the second; TTL and AA come from the upstream.
    let m = rd_query(r.addr(), "www.upstream.test.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert_eq!(answer_strings(&m), ["192.0.2.10"]);
    assert_eq!(m.answers[0].ttl, 300, "TTL passed through");
    assert!(
        m.metadata.authoritative,
        "flags passed through (upstream is authoritative)"
    );
    let nx = rd_query(r.addr(), "nope.upstream.test.", RecordType::A);
    assert_eq!(rcode(&nx), ResponseCode::NXDomain, "rcode passed through");
    assert!(matches!(nx.authorities[0].data, RData::SOA(_)));
    // The discovery zone is still answered by ruddr itself.
    assert_eq!(
        answer_strings(&rd_query(r.addr(), "web.svc.internal.", RecordType::A)),
        ["10.40.0.1"]
    );
    // Over TCP too, and with dig.
    assert_eq!(dig_short(r.port, "www.upstream.test", "A"), ["192.0.2.10"]);
    let out = dig(r.port, &["www.upstream.test", "A", "+tcp", "+short"]);
    assert_eq!(out.trim(), "192.0.2.10");
    let failed = |result: &str| {
        r.metric(&format!(
            r#"ruddr_dns_forwarded_total{{upstream="{dead}",result="{result}"}}"#
        ))
    };
    assert!(
        failed("error") + failed("timeout") >= 1.0,
        "the dead upstream's failure is counted: {}",
        r.http_get("/metrics").1
    );
    let answered = format!(
        r#"ruddr_dns_forwarded_total{{upstream="127.0.0.1:{}",result="answered"}}"#,
        up.port
    );
    assert!(r.metric(&answered) >= 2.0, "answers counted per upstream");
    // The repeated questions (dig over UDP and TCP) came from the forward cache.
    assert!(
        r.metric(r#"ruddr_dns_forward_cache_total{result="hit"}"#) >= 2.0,
        "{}",
        r.http_get("/metrics").1
    );

    // An upstream that refuses us (here a ruddr without upstreams of its own) is skipped.
    let refuser = Ruddr::start(&format!("http://{}:2379", own_loopback()), &[]);
    let via = format!("127.0.0.1:{},127.0.0.1:{}", refuser.port, up.port);
    let r2 = Ruddr::start(&etcd.endpoint(), &["--upstream", &via]);
    let m = rd_query(r2.addr(), "www.upstream.test.", RecordType::A);
    assert_eq!(
        answer_strings(&m),
        ["192.0.2.10"],
        "REFUSED from the first upstream fails over"
    );

    // All upstreams down: a cached answer is still given, with its TTL counted down...
    drop(up);
    let cached = rd_query(r.addr(), "www.upstream.test.", RecordType::A);
    assert_eq!(answer_strings(&cached), ["192.0.2.10"]);
    assert!(cached.answers[0].ttl <= 300);
    // ...and a name not asked before gets SERVFAIL within the timeout.
    let t = Instant::now();
    let m = rd_query(r.addr(), "www2.upstream.test.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SERVFAIL after {:?}",
        t.elapsed()
    );
}

#[test]
fn no_upstreams_or_outside_allow_list_is_refused_but_discovery_answers() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.41.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&dir);
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[forward]\nupstreams = [\"127.0.0.1:{}\"]\nallow_recursion = [\"127.0.0.1/32\"]\n",
            up.port
        ),
    )
    .unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    r.wait_watching();
    let allowed = udp_query_from("127.0.0.1:0", r.addr(), "www.upstream.test.", RecordType::A);
    assert_eq!(answer_strings(&allowed), ["192.0.2.10"]);
    let outsider = udp_query_from("127.0.0.2:0", r.addr(), "www.upstream.test.", RecordType::A);
    assert_eq!(
        rcode(&outsider),
        ResponseCode::Refused,
        "not an open resolver"
    );
    let discovery = udp_query_from("127.0.0.2:0", r.addr(), "web.svc.internal.", RecordType::A);
    assert_eq!(
        answer_strings(&discovery),
        ["10.41.0.1"],
        "discovery answers for everyone"
    );

    // Without upstreams: REFUSED, as before.
    let plain = Ruddr::start(&etcd.endpoint(), &[]);
    assert_eq!(
        rcode(&rd_query(plain.addr(), "www.upstream.test.", RecordType::A)),
        ResponseCode::Refused
    );
}

#[test]
fn static_zones_axfr_any_ptr_and_reload() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.42.0.1","port":80}"#,
    );
    etcd.put(
        "/ruddr/services/api/a1",
        r#"{"address":"10.42.0.1","port":81}"#,
    );
    etcd.put("/ruddr/services/v6/x", r#"{"address":"fd00::42"}"#);
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let zone_file = zones.join("static.test.zone");
    std::fs::write(&zone_file, UPSTREAM_ZONE).unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--zones-dir", zones.to_str().unwrap()]);
    r.wait_watching();

    assert_eq!(dig_short(r.port, "www.static.test", "A"), ["192.0.2.10"]);
    let m = query(r.addr(), "www.static.test.", RecordType::A);
    assert!(m.metadata.authoritative);
    assert_eq!(
        rcode(&query(r.addr(), "nope.static.test.", RecordType::A)),
        ResponseCode::NXDomain
    );

    // AXFR refused, for the static zone and the discovery zone.
    for zone in ["static.test", "svc.internal"] {
        let out = dig(r.port, &[zone, "AXFR"]);
        assert!(
            out.contains("Transfer failed") || out.contains("REFUSED"),
            "{zone}: {out}"
        );
    }
    // ANY: a minimal answer (RFC 8482), the SOA at the apex as for the discovery zone.
    let any = query(r.addr(), "static.test.", RecordType::ANY);
    assert_eq!(any.answers.len(), 1);
    assert!(matches!(&any.answers[0].data, RData::SOA(_)), "{any:?}");
    let any = query(r.addr(), "www.static.test.", RecordType::ANY);
    assert_eq!(answer_strings(&any), ["192.0.2.10"]);

    // PTR for registered addresses (two instances share one address).
    let mut ptr = dig_short(r.port, "-x", "10.42.0.1");
    ptr.sort();
    assert_eq!(ptr, ["a1.api.svc.internal.", "w1.web.svc.internal."]);
    assert_eq!(dig_short(r.port, "-x", "fd00::42"), ["x.v6.svc.internal."]);
    assert_eq!(
        rcode(&rd_query(
            r.addr(),
            "9.9.9.10.in-addr.arpa.",
            RecordType::PTR
        )),
        ResponseCode::Refused
    );

    // SIGHUP reloads; a broken file keeps the old data and says why.
    std::fs::write(
        &zone_file,
        UPSTREAM_ZONE.replace("192.0.2.10", "192.0.2.11"),
    )
    .unwrap();
    r.signal("HUP");
    eventually(Duration::from_secs(10), "reloaded zone", || {
        (dig_short(r.port, "www.static.test", "A") == ["192.0.2.11"]).then_some(())
    });
    std::fs::write(
        &zone_file,
        format!("{UPSTREAM_ZONE}bad IN A not-an-address\n"),
    )
    .unwrap();
    r.signal("HUP");
    r.wait_log("configuration reload failed");
    assert!(r.log_text().contains("line 6"), "{}", r.log_text());
    assert_eq!(dig_short(r.port, "www.static.test", "A"), ["192.0.2.11"]);

    // A bad zone file is a startup error naming the file and line: check-config exits 64.
    let out = Command::new(ruddr_bin())
        .args(["check-config", "--zones-dir", zones.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("static.test.zone") && err.contains("line 6"),
        "{err}"
    );
}

/// glibc through a private resolv.conf (a private mount namespace with a bind mount), including
/// a short name through `search` and a forwarded name.
#[test]
fn glibc_getent_through_a_private_resolv_conf() {
    require("unshare", "util-linux");
    require("getent", "libc-bin");
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.43.0.1"}"#);
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.43.0.2"}"#);
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&dir);
    // glibc only talks to port 53: use an address of our own in 127/8.
    let ns = format!(
        "127.53.{}.{}",
        std::process::id() % 250,
        1 + free_port() % 250
    );
    let listen = format!("{ns}:53");
    let r = Ruddr::start(
        &etcd.endpoint(),
        &[
            "--listen",
            &listen,
            "--upstream",
            &format!("127.0.0.1:{}", up.port),
        ],
    );
    r.wait_watching();
    r.wait_log(&format!("udp={listen}"));
    let conf = dir.path().join("resolv.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "nameserver {ns}\nsearch svc.internal\noptions ndots:1 timeout:2 attempts:2"
    )
    .unwrap();

    let getent = |name: &str| -> Vec<String> {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && getent ahostsv4 {name}",
            conf.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .unwrap();
        let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("STREAM"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    };
    assert_eq!(getent("web.svc.internal"), ["10.43.0.1", "10.43.0.2"]);
    assert_eq!(
        getent("web"),
        ["10.43.0.1", "10.43.0.2"],
        "short name through search"
    );
    assert_eq!(
        getent("www.upstream.test"),
        ["192.0.2.10"],
        "forwarded name"
    );
}

/// dnspython: SRV lookup, then connect to the returned host and port of a real TCP server.
#[test]
fn dnspython_srv_lookup_and_connect() {
    let found = Command::new("python3")
        .args(["-c", "import dns.resolver"])
        .status()
        .unwrap()
        .success();
    assert!(
        found,
        "dnspython missing: python3 -m pip install dnspython (scripts/deps.sh does)"
    );
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        conn.write_all(b"hello from the registered instance\n")
            .unwrap();
    });
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/echo/e1",
        &format!(r#"{{"address":"127.0.0.1","port":{port}}}"#),
    );
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let script = format!(
        r#"
import socket, dns.resolver
res = dns.resolver.Resolver(configure=False)
res.nameservers = ["127.0.0.1"]
res.port = {dns_port}
srv = res.resolve("_echo._tcp.svc.internal", "SRV")
rr = sorted(srv, key=lambda r: (r.priority, -r.weight))[0]
addr = res.resolve(rr.target, "A")[0].address
with socket.create_connection((addr, rr.port), timeout=5) as s:
    print(rr.target, rr.port, s.recv(100).decode().strip())
"#,
        dns_port = r.port
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("e1.echo.svc.internal. {port} hello from the registered instance")
    );
    serve.join().unwrap();
}

#[test]
fn a_dead_upstream_cannot_take_the_file_descriptors_and_discovery_keeps_answering() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.46.0.1"}"#);
    // An upstream that reads and never replies.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = dead.local_addr().unwrap().to_string();
    // Open-file limits of 1,024, soft and hard, as many services and containers get.
    let r = Ruddr::start_limited(&etcd.endpoint(), &["--upstream", &up], &[], Some(1024));
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.46.0.1"],
        Duration::from_secs(10),
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", r.pid()))
            .unwrap()
            .count()
    };
    let base = fds();

    // 3,000 outside queries, sent without waiting for their answers.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut peak = base;
    for n in 0..3000 {
        let mut m = query_message(&format!("x{n}.example.org."), RecordType::A, None);
        m.metadata.recursion_desired = true;
        client.send_to(&m.to_vec().unwrap(), r.addr()).unwrap();
        if n % 100 == 0 {
            peak = peak.max(fds());
        }
    }
    for _ in 0..20 {
        peak = peak.max(fds());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak < base + 300,
        "{peak} file descriptors at the peak, {base} before"
    );
    // Discovery answers meanwhile, at once.
    assert_eq!(
        answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        ["10.46.0.1"]
    );
    // The queries over the limit got SERVFAIL at once, and that is counted (how many depends
    // on how many the kernel let through to ruddr's socket).
    r.wait_metric("ruddr_dns_forward_limited_total", |v| v >= 1.0);
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = client.recv_from(&mut buf).expect("an answer");
    let m = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    assert!(r
        .log_text()
        .contains("too many forwarded queries in flight"));
}

#[test]
fn a_big_static_rrset_over_udp_is_capped_at_max_udp_payload_with_tc() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    // 300 A records at one name: about 4.8 KB on the wire.
    let mut zone = String::from(UPSTREAM_ZONE);
    for n in 0..300 {
        zone.push_str(&format!("big IN A 192.0.{}.{}\n", n / 250, n % 250 + 1));
    }
    std::fs::write(zones.join("static.test.zone"), zone).unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--zones-dir", zones.to_str().unwrap()]);
    r.wait_log("serving static zone");

    let q = query_message("big.static.test.", RecordType::A, Some(65535));
    let bytes = exchange_raw(r.addr(), &q.to_vec().unwrap(), Transport::Udp).expect("an answer");
    assert!(bytes.len() <= 1232, "{} bytes over UDP", bytes.len());
    let m = Message::from_vec(&bytes).unwrap();
    assert!(m.metadata.truncation, "TC set");
    // The whole RRset over TCP.
    let tcp = exchange(r.addr(), &q, Transport::Tcp);
    assert_eq!(tcp.answers.len(), 300);
}

/// A static zone with what zone files hold beyond plain records: wildcards, CNAMEs inside the
/// zone, a delegation with glue, empty non-terminals, and negative answers with the zone's
/// SOA, over UDP and TCP, with dig and the hickory client.
#[test]
fn static_zone_wildcards_cnames_delegations_and_negative_answers() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let zone = format!(
        "{UPSTREAM_ZONE}*.apps IN A 192.0.2.20\n*.apps IN TXT \"wild\"\nalias IN CNAME www\n\
         chain IN CNAME alias\nexternal IN CNAME www.example.com.\n\
         sub IN NS ns1.sub\nsub IN NS ns.elsewhere.example.\nns1.sub IN A 192.0.2.53\n\
         a.b.deep IN A 192.0.2.30\nmail IN MX 10 www\n"
    );
    std::fs::write(zones.join("static.test.zone"), zone).unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--zones-dir", zones.to_str().unwrap()]);
    r.wait_watching();

    // Wildcards answer with the question's name, at any depth below the closest encloser.
    for name in ["x.apps.static.test.", "Y.Z.apps.static.test."] {
        let m = query(r.addr(), name, RecordType::A);
        assert_eq!(answer_strings(&m), ["192.0.2.20"], "{name}");
        assert_eq!(
            m.answers[0].name.to_string(),
            name,
            "owner spelled as asked"
        );
        assert!(m.metadata.authoritative);
    }
    assert_eq!(dig_short(r.port, "q.apps.static.test", "TXT"), ["\"wild\""]);
    // CNAME chains inside the zone: every link, then the target's records.
    let m = query(r.addr(), "chain.static.test.", RecordType::A);
    assert_eq!(
        answer_strings_of(&m.answers),
        ["alias.static.test.", "www.static.test.", "192.0.2.10"]
    );
    assert_eq!(m.answers[1].name.to_string(), "alias.static.test.");
    assert_eq!(m.answers[2].name.to_string(), "www.static.test.");
    let m = query(r.addr(), "external.static.test.", RecordType::A);
    assert_eq!(answer_strings(&m), ["www.example.com."]);
    // MX with the exchange's address in the additional section.
    let m = query(r.addr(), "mail.static.test.", RecordType::MX);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(answer_strings_of(&m.additionals), ["192.0.2.10"]);

    // Below a delegation: a referral, not authoritative, NS in authority and glue.
    for name in [
        "sub.static.test.",
        "host.sub.static.test.",
        "ns1.sub.static.test.",
    ] {
        let m = query(r.addr(), name, RecordType::A);
        assert_eq!(rcode(&m), ResponseCode::NoError, "{name}");
        assert!(
            !m.metadata.authoritative,
            "{name}: a referral is not authoritative"
        );
        assert!(m.answers.is_empty(), "{name}");
        let mut ns = answer_strings_of(&m.authorities);
        ns.sort();
        assert_eq!(
            ns,
            ["ns.elsewhere.example.", "ns1.sub.static.test."],
            "{name}"
        );
        assert_eq!(answer_strings_of(&m.additionals), ["192.0.2.53"], "{name}");
    }
    let out = dig(r.port, &["host.sub.static.test", "A", "+norec"]);
    assert!(
        out.contains("AUTHORITY: 2") && !out.contains(" aa"),
        "{out}"
    );

    // NXDOMAIN and NODATA carry the SOA with min(TTL, MINIMUM) = 60; empty non-terminals
    // exist.
    for (name, qtype, code) in [
        ("nope.static.test.", RecordType::A, ResponseCode::NXDomain),
        ("q.www.static.test.", RecordType::A, ResponseCode::NXDomain),
        ("www.static.test.", RecordType::AAAA, ResponseCode::NoError),
        ("b.deep.static.test.", RecordType::A, ResponseCode::NoError),
        ("deep.static.test.", RecordType::TXT, ResponseCode::NoError),
    ] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let m = exchange(r.addr(), &query_message(name, qtype, Some(1232)), transport);
            assert_eq!(rcode(&m), code, "{name} {qtype}");
            assert!(m.answers.is_empty(), "{name} {qtype}");
            assert!(m.metadata.authoritative);
            assert_eq!(m.authorities.len(), 1, "{name} {qtype}");
            assert!(matches!(m.authorities[0].data, RData::SOA(_)));
            assert_eq!(m.authorities[0].ttl, 60);
        }
    }
}

fn answer_strings_of(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records.iter().map(|r| rdata_string(&r.data)).collect()
}
