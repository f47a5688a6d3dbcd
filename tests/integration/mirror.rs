//! Registry changes reaching DNS answers, bad values, etcd outages and compaction.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(10);

fn a_records(r: &Ruddr, name: &str) -> Vec<String> {
    answers(r, name, RecordType::A)
}

fn wait_for_a(r: &Ruddr, name: &str, want: &[&str]) {
    wait_answers(r, name, RecordType::A, want, WAIT);
}

#[test]
fn register_update_health_delete() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let name = "api.svc.internal.";
    assert_eq!(
        rcode(&query(r.addr(), name, RecordType::A)),
        ResponseCode::NXDomain
    );

    etcd.put(
        "/ruddr/services/api/a1",
        r#"{"address":"10.9.0.1","port":80}"#,
    );
    wait_for_a(&r, name, &["10.9.0.1"]);
    etcd.put(
        "/ruddr/services/api/a2",
        r#"{"address":"10.9.0.2","port":80}"#,
    );
    wait_for_a(&r, name, &["10.9.0.1", "10.9.0.2"]);
    // Update: new address.
    etcd.put(
        "/ruddr/services/api/a1",
        r#"{"address":"10.9.0.11","port":80}"#,
    );
    wait_for_a(&r, name, &["10.9.0.11", "10.9.0.2"]);
    // Health: critical disappears, warning stays, passing comes back.
    etcd.put(
        "/ruddr/services/api/a2",
        r#"{"address":"10.9.0.2","port":80,"health":"critical"}"#,
    );
    wait_for_a(&r, name, &["10.9.0.11"]);
    etcd.put(
        "/ruddr/services/api/a1",
        r#"{"address":"10.9.0.11","port":80,"health":"warning"}"#,
    );
    etcd.put(
        "/ruddr/services/api/a2",
        r#"{"address":"10.9.0.2","port":80,"health":"passing"}"#,
    );
    wait_for_a(&r, name, &["10.9.0.11", "10.9.0.2"]);
    // All critical: NXDOMAIN.
    etcd.put(
        "/ruddr/services/api/a1",
        r#"{"address":"10.9.0.11","health":"critical"}"#,
    );
    etcd.put(
        "/ruddr/services/api/a2",
        r#"{"address":"10.9.0.2","health":"critical"}"#,
    );
    eventually(WAIT, "NXDOMAIN when no instance is healthy", || {
        (rcode(&query(r.addr(), name, RecordType::A)) == ResponseCode::NXDomain).then_some(())
    });
    // Delete.
    etcd.put("/ruddr/services/api/a1", r#"{"address":"10.9.0.11"}"#);
    wait_for_a(&r, name, &["10.9.0.11"]);
    etcd.delete("/ruddr/services/api/a1");
    etcd.delete("/ruddr/services/api/a2");
    eventually(WAIT, "NXDOMAIN after delete", || {
        (rcode(&query(r.addr(), name, RecordType::A)) == ResponseCode::NXDomain).then_some(())
    });
    // dig sees the same over UDP and TCP.
    etcd.put(
        "/ruddr/services/api/a3",
        r#"{"address":"10.9.0.3","port":80}"#,
    );
    wait_for_a(&r, name, &["10.9.0.3"]);
    assert_eq!(dig_short(r.port, "api.svc.internal", "A"), ["10.9.0.3"]);
    let out = dig(r.port, &["api.svc.internal", "SRV", "+tcp", "+short"]);
    assert_eq!(out.trim(), "0 1 80 a3.api.svc.internal.");
}

#[test]
fn bad_values_are_skipped_and_the_rest_served() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/good",
        r#"{"address":"10.3.0.1","port":80}"#,
    );
    etcd.put("/ruddr/services/web/bad-json", "{not json");
    etcd.put(
        "/ruddr/services/web/bad-addr",
        r#"{"address":"web.example","port":80}"#,
    );
    etcd.put("/ruddr/services/web_x/y", r#"{"address":"10.3.0.9"}"#);
    etcd.put("/ruddr/services/web/too/deep", r#"{"address":"10.3.0.9"}"#);
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    assert_eq!(a_records(&r, "web.svc.internal."), ["10.3.0.1"]);
    let log = r.log_text();
    for key in [
        "/ruddr/services/web/bad-json",
        "/ruddr/services/web/bad-addr",
        "/ruddr/services/web_x/y",
        "/ruddr/services/web/too/deep",
    ] {
        assert_eq!(
            log.lines()
                .filter(
                    |l| l.contains("skipping registry entry") && l.contains(&format!("key={key} "))
                )
                .count(),
            1,
            "one warning naming {key}"
        );
    }
    assert!(log.contains("not an IPv4 or IPv6 literal"));

    // Through the watch: a bad value for a new key is skipped, the others stay.
    etcd.put(
        "/ruddr/services/web/good2",
        r#"{"address":"10.3.0.2","port":80}"#,
    );
    etcd.put(
        "/ruddr/services/web/new-bad",
        r#"{"address":"10.3.0.3","port":99999}"#,
    );
    etcd.put(
        "/ruddr/services/web/good3",
        r#"{"address":"10.3.0.4","port":80}"#,
    );
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.3.0.1", "10.3.0.2", "10.3.0.4"],
    );
    // A bad value over a good one keeps the last good one; a later good value replaces it.
    etcd.put("/ruddr/services/web/good", "garbage");
    etcd.put("/ruddr/services/web/marker", r#"{"address":"10.3.0.5"}"#);
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.3.0.1", "10.3.0.2", "10.3.0.4", "10.3.0.5"],
    );
    etcd.put("/ruddr/services/web/good", r#"{"address":"10.3.0.6"}"#);
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.3.0.2", "10.3.0.4", "10.3.0.5", "10.3.0.6"],
    );
    assert!(r.log_text().contains("key=/ruddr/services/web/new-bad "));
}

#[test]
fn etcd_killed_answers_unchanged_then_changes_flow_again() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.4.0.1","port":80}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.4.0.2","port":80}"#,
    );
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let before = a_records(&r, "web.svc.internal.");
    let srv_before = answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::SRV));
    assert_eq!(before, ["10.4.0.1", "10.4.0.2"]);

    etcd.kill();
    r.wait_log("etcd unreachable; serving the last known state");
    assert!(r.log_text().contains("stale_since="));
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) {
        for t in [Transport::Udp, Transport::Tcp] {
            let m = exchange(
                r.addr(),
                &query_message("web.svc.internal.", RecordType::A, Some(1232)),
                t,
            );
            assert_eq!(rcode(&m), ResponseCode::NoError);
            assert_eq!(
                answer_strings(&m),
                before,
                "answer unchanged while etcd is down"
            );
            n += 1;
        }
        assert_eq!(
            answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::SRV)),
            srv_before
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(n > 20);

    etcd.restart();
    r.wait_log("etcd reachable again");
    etcd.put(
        "/ruddr/services/web/w3",
        r#"{"address":"10.4.0.3","port":80}"#,
    );
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.4.0.1", "10.4.0.2", "10.4.0.3"],
    );
    etcd.delete("/ruddr/services/web/w1");
    wait_for_a(&r, "web.svc.internal.", &["10.4.0.2", "10.4.0.3"]);
    let lists = r.log_text().matches("registry listed").count();
    assert_eq!(lists, 1, "resumed from the last revision, no re-list");
}

#[test]
fn compaction_while_disconnected_rebuilds_state() {
    let mut etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.5.0.1"}"#);
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.5.0.2"}"#);
    etcd.put("/ruddr/services/old/o1", r#"{"address":"10.5.1.1"}"#);
    let mut r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    wait_for_a(&r, "web.svc.internal.", &["10.5.0.1", "10.5.0.2"]);

    // Freeze ruddr so its watch cannot see anything, change etcd, compact past ruddr's revision.
    r.signal("STOP");
    etcd.restart();
    etcd.delete("/ruddr/services/web/w1");
    etcd.put("/ruddr/services/web/w3", r#"{"address":"10.5.0.3"}"#);
    etcd.delete("/ruddr/services/old/o1");
    etcd.put("/ruddr/services/new/n1", r#"{"address":"10.5.2.1"}"#);
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.5.0.22"}"#);
    etcd.compact();
    etcd.defragment();
    r.signal("CONT");

    r.wait_log("watch lost its revision");
    // The re-list comes after a random wait (etcd.relist_jitter).
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.5.0.22", "10.5.0.3"],
        RELIST_WAIT,
    );
    assert_eq!(a_records(&r, "new.svc.internal."), ["10.5.2.1"]);
    assert_eq!(
        rcode(&query(r.addr(), "old.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain
    );
    // And the watch follows changes after the re-list.
    etcd.put("/ruddr/services/web/w4", r#"{"address":"10.5.0.4"}"#);
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.5.0.22", "10.5.0.3", "10.5.0.4"],
    );
    assert!(r.is_alive());
}

#[test]
fn several_endpoints_one_dead() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.5.8.1"}"#);
    let dead = format!("http://{}:2379", own_loopback());
    let endpoints = format!("{dead},{}", etcd.endpoint());
    let r = Ruddr::start(&endpoints, &[]);
    wait_for_a(&r, "web.svc.internal.", &["10.5.8.1"]);
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.5.8.2"}"#);
    wait_for_a(&r, "web.svc.internal.", &["10.5.8.1", "10.5.8.2"]);
}

#[test]
fn tls_with_client_certificate_and_password_auth() {
    let pki = Pki::new();
    let mut etcd = Etcd::start_tls(&pki);
    etcd.enable_auth("s3cret");
    etcd.put("/ruddr/services/sec/s1", r#"{"address":"10.5.7.1"}"#);

    // Without credentials, etcd refuses the list: no data, so SERVFAIL; the reason is logged.
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let tls = ["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let denied = Ruddr::start(&etcd.endpoint(), &tls);
    denied.wait_log("serving the last known state");
    assert_eq!(
        rcode(&query(denied.addr(), "sec.svc.internal.", RecordType::A)),
        ResponseCode::ServFail
    );
    drop(denied);

    // With a config file naming the TLS files (relative to the file) and the password from the
    // environment, it lists and watches.
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(pki.path(f), dir.path().join(f)).unwrap();
    }
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        "[etcd]\nusername = \"root\"\n[etcd.tls]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n",
    )
    .unwrap();
    let r = Ruddr::start_env(
        &etcd.endpoint(),
        &["--config", cfg.to_str().unwrap()],
        &[("RUDDR_ETCD_PASSWORD", "s3cret")],
    );
    wait_for_a(&r, "sec.svc.internal.", &["10.5.7.1"]);
    etcd.put("/ruddr/services/sec/s2", r#"{"address":"10.5.7.2"}"#);
    wait_for_a(&r, "sec.svc.internal.", &["10.5.7.1", "10.5.7.2"]);
    assert!(!r.log_text().contains("s3cret"), "password never logged");
}

#[test]
fn etcd_rebuilt_from_scratch_is_relisted() {
    let mut etcd = Etcd::start();
    for i in 1..=5 {
        etcd.put(
            &format!("/ruddr/services/web/w{i}"),
            &format!(r#"{{"address":"10.5.9.{i}"}}"#),
        );
    }
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    wait_for_a(
        &r,
        "web.svc.internal.",
        &["10.5.9.1", "10.5.9.2", "10.5.9.3", "10.5.9.4", "10.5.9.5"],
    );
    // A new, empty cluster at a lower revision: resuming the watch there would miss everything.
    etcd.wipe_and_restart();
    etcd.put("/ruddr/services/web/fresh", r#"{"address":"10.5.9.99"}"#);
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.5.9.99"],
        RELIST_WAIT,
    );
    assert!(r.log_text().contains("re-listing"));
}

/// Measures how long a write to etcd takes to show in answers (printed, not asserted: timing
/// belongs in benchmarks). Run with `--nocapture` to see the figures.
#[test]
fn propagation_latency_is_measured() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &["-q"]);
    r.wait_watching();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut samples = Vec::new();
    for i in 0..30u32 {
        let addr = format!("10.6.{}.{}", i / 200, i % 200 + 1);
        let start = Instant::now();
        etcd.put(
            "/ruddr/services/lat/x",
            &format!(r#"{{"address":"{addr}"}}"#),
        );
        let put_done = start.elapsed();
        let q = query_message("lat.svc.internal.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap();
        let mut buf = [0u8; 1500];
        loop {
            sock.send_to(&q, r.addr()).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let m = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
                if answer_strings(&m) == [addr.clone()] {
                    break;
                }
            }
            assert!(start.elapsed() < WAIT, "change never became visible");
        }
        samples.push((start.elapsed(), put_done));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    eprintln!(
        "propagation etcd put -> DNS answer over {} changes: median {:.2} ms (put itself {:.2} ms), max {:.2} ms",
        samples.len(),
        ms(median.0),
        ms(median.1),
        ms(max.0),
    );
}
