//! Surviving registry outages: a 3-member cluster losing members under load, leases expiring
//! during an outage, snapshots across restarts, and max_stale.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

/// A bounded UDP query loop in a thread: counts answers that are not exactly `expected`.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    handle: thread::JoinHandle<LoadResult>,
}

#[derive(Debug, Default)]
struct LoadResult {
    sent: usize,
    servfail: usize,
    timeouts: usize,
    wrong: usize,
}

impl Load {
    const MAX_QUERIES: usize = 200_000;

    fn start(addr: std::net::SocketAddr, name: &'static str, expected: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (flag, counter) = (stop.clone(), sent.clone());
        let handle = thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut r = LoadResult::default();
            let mut buf = [0u8; 4096];
            while r.sent < Self::MAX_QUERIES && !flag.load(Ordering::Relaxed) {
                let q = query_message(name, RecordType::A, Some(1232));
                sock.send_to(&q.to_vec().unwrap(), addr).unwrap();
                r.sent += 1;
                counter.store(r.sent, Ordering::Relaxed);
                // Skip stray late responses to earlier queries.
                let m = loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, _)) => match Message::from_vec(&buf[..n]) {
                            Ok(m) if m.metadata.id == q.metadata.id => break Some(m),
                            _ => continue,
                        },
                        Err(_) => break None,
                    }
                };
                match m {
                    None => r.timeouts += 1,
                    Some(m) if rcode(&m) == ResponseCode::ServFail => r.servfail += 1,
                    Some(m) if answer_strings(&m) != expected => r.wrong += 1,
                    Some(_) => {}
                }
                thread::sleep(Duration::from_micros(300));
            }
            r
        });
        Load { stop, sent, handle }
    }

    /// Stops once at least `at_least` queries were sent (waiting at most a minute for them).
    fn finish(self, at_least: usize) -> LoadResult {
        let start = Instant::now();
        while self.sent.load(Ordering::Relaxed) < at_least
            && start.elapsed() < Duration::from_secs(60)
            && !self.handle.is_finished()
        {
            thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        let r = self.handle.join().unwrap();
        assert!(r.sent >= at_least, "only {} queries sent", r.sent);
        r
    }
}

#[test]
fn cluster_members_die_under_load_without_a_single_failed_answer() {
    let mut cluster = Cluster::start(3);
    for i in 1..=3 {
        cluster.put(
            &format!("/ruddr/services/web/w{i}"),
            &format!(r#"{{"address":"10.20.0.{i}","port":80}}"#),
        );
    }
    let r = Ruddr::start(&cluster.endpoints(), &[]);
    r.wait_watching();
    let expected = vec![
        "10.20.0.1".to_string(),
        "10.20.0.2".into(),
        "10.20.0.3".into(),
    ];
    eventually(Duration::from_secs(10), "all three instances", || {
        (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)) == expected)
            .then_some(())
    });

    let load = Load::start(r.addr(), "web.svc.internal.", expected.clone());
    let started = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader();
    cluster.kill(leader);
    eprintln!("killed leader m{leader}");
    thread::sleep(Duration::from_secs(3));
    let follower = (0..3).find(|i| *i != leader).unwrap();
    cluster.kill(follower);
    eprintln!("killed follower m{follower}: quorum lost");
    thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);
    cluster.restart(follower);
    cluster.wait_healthy();
    eprintln!("cluster recovered after {:?}", started.elapsed());
    thread::sleep(Duration::from_secs(2));
    // At least 10,000 queries spread over the scenario (the loop paces itself).
    let result = load.finish(10_000);
    eprintln!("load during failover: {result:?}");
    assert_eq!(
        (result.servfail, result.timeouts, result.wrong),
        (0, 0, 0),
        "{result:?}"
    );

    // A change after recovery shows promptly (the figure is printed; the bound is loose, as
    // the write itself goes through three etcd members on one disk).
    eventually(Duration::from_secs(20), "ruddr connected again", || {
        (r.metric("ruddr_registry_connected") == 1.0).then_some(())
    });
    let t = Instant::now();
    cluster.put(
        "/ruddr/services/web/w4",
        r#"{"address":"10.20.0.4","port":80}"#,
    );
    eventually(Duration::from_secs(10), "the change after recovery", || {
        (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)).len() == 4)
            .then_some(())
    });
    eprintln!("change after recovery visible after {:?}", t.elapsed());
    assert_eq!(
        r.log_text().matches("registry listed").count(),
        1,
        "failover resumed the watch, no re-list"
    );
}

#[test]
fn leases_that_expired_during_the_outage_vanish_afterwards() {
    let mut cluster = Cluster::start(3);
    let dying = cluster.grant(5);
    let living = cluster.grant(5);
    cluster.put_with_lease(
        "/ruddr/services/web/dying",
        r#"{"address":"10.21.0.1"}"#,
        dying,
    );
    cluster.put_with_lease(
        "/ruddr/services/web/living",
        r#"{"address":"10.21.0.2"}"#,
        living,
    );
    cluster.put("/ruddr/services/web/static", r#"{"address":"10.21.0.3"}"#);
    let r = Ruddr::start(&cluster.endpoints(), &[]);
    r.wait_watching();
    let all = ["10.21.0.1", "10.21.0.2", "10.21.0.3"];
    assert_eq!(
        answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        all
    );

    // The registrant of "living" keeps its lease alive, retrying through the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let stop = stop.clone();
        let endpoints = cluster.endpoint_list();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                keep_alive_once(&endpoints, living);
                thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Every member down for longer than the lease TTL.
    cluster.stop_all();
    let down = Instant::now();
    r.wait_log("etcd unreachable");
    while down.elapsed() < Duration::from_secs(8) {
        let m = query(r.addr(), "web.svc.internal.", RecordType::A);
        assert_eq!(
            answer_strings(&m),
            all,
            "answers unchanged during the outage"
        );
        assert!(
            m.answers.iter().all(|a| a.ttl == 30),
            "stale answers carry the stale TTL"
        );
        thread::sleep(Duration::from_millis(250));
    }
    cluster.start_all();
    eventually(
        Duration::from_secs(30),
        "the expired instance to vanish",
        || {
            (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A))
                == ["10.21.0.2", "10.21.0.3"])
            .then_some(())
        },
    );
    // The kept-alive one stays, past another full TTL.
    thread::sleep(Duration::from_secs(6));
    let m = query(r.addr(), "web.svc.internal.", RecordType::A);
    assert_eq!(answer_strings(&m), ["10.21.0.2", "10.21.0.3"]);
    assert!(
        m.answers.iter().all(|a| a.ttl == 5),
        "fresh TTL once etcd is back"
    );
    stop.store(true, Ordering::Relaxed);
    keeper.join().unwrap();
}

#[test]
fn restart_while_etcd_is_down_serves_the_snapshot() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.22.0.1","port":80}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.22.0.2","port":80}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("mirror.snapshot");
    let snap_arg = snap.to_str().unwrap().to_string();
    let args = ["--snapshot-file", snap_arg.as_str()];

    let mut r = Ruddr::start(&etcd.endpoint(), &args);
    r.wait_watching();
    eventually(Duration::from_secs(20), "snapshot written", || {
        let p = ruddr::persist::load(&snap, u64::MAX).ok()??;
        p.instances
            .iter()
            .any(|(_, i)| i.address.to_string() == "10.22.0.2")
            .then_some(())
    });
    r.signal("TERM");
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(0));

    etcd.kill();
    let r = Ruddr::start(&etcd.endpoint(), &args);
    // Served at once: the first query after the port is known already has the data.
    let m = query(r.addr(), "web.svc.internal.", RecordType::A);
    assert_eq!(answer_strings(&m), ["10.22.0.1", "10.22.0.2"]);
    assert!(r.log_text().contains("serving from the snapshot file"));
    let (code, body) = r.http_get("/ready");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"from_snapshot\":true"), "{body}");
    drop(r);

    // A corrupt snapshot is reported and ignored.
    let mut bytes = std::fs::read(&snap).unwrap();
    let len = bytes.len();
    bytes.truncate(len - 7);
    std::fs::write(&snap, &bytes).unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &args);
    r.wait_log("ignoring the snapshot file");
    assert!(r.log_text().contains("truncated"), "{}", r.log_text());
    // No data at all: SERVFAIL, not a cacheable NXDOMAIN.
    assert_eq!(
        rcode(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        ResponseCode::ServFail
    );
    assert_eq!(r.http_get("/ready").0, 503);

    // etcd back: it catches up, and writes a good snapshot again.
    etcd.restart();
    eventually(Duration::from_secs(20), "caught up from etcd", || {
        (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)).len() == 2)
            .then_some(())
    });
    eventually(Duration::from_secs(20), "a valid snapshot again", || {
        let text = std::fs::read(&snap).ok()?;
        ruddr::persist::Persisted::decode(&text).ok().map(|_| ())
    });
    drop(r);

    // With etcd reachable, etcd wins over the snapshot.
    etcd.delete("/ruddr/services/web/w1");
    let r = Ruddr::start(&etcd.endpoint(), &args);
    // It resumes the watch after the snapshot's revision: the delete arrives as an event.
    r.wait_log("registry current");
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.22.0.2"],
        Duration::from_secs(10),
    );
    assert!(r.log_text().contains("how=\"watch\""), "{}", r.log_text());
}

#[test]
fn max_stale_turns_registry_names_into_servfail_until_etcd_returns() {
    let mut etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.23.0.1"}"#);
    let r = Ruddr::start(&etcd.endpoint(), &["--max-stale", "3s"]);
    r.wait_watching();
    etcd.kill();
    let down = Instant::now();
    r.wait_log("etcd unreachable");
    // An answer that arrives less than max_stale after etcd went away must be the data (ruddr's
    // clock starts when it notices, which is later still).
    let m = query(r.addr(), "web.svc.internal.", RecordType::A);
    if down.elapsed() < Duration::from_secs(3) {
        assert_eq!(answer_strings(&m), ["10.23.0.1"]);
    }
    eventually(Duration::from_secs(20), "SERVFAIL past max_stale", || {
        (rcode(&query(r.addr(), "web.svc.internal.", RecordType::A)) == ResponseCode::ServFail)
            .then_some(())
    });
    assert!(down.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        rcode(&query(r.addr(), "nope.svc.internal.", RecordType::A)),
        ResponseCode::ServFail
    );
    // The zone itself still answers.
    let soa = query(r.addr(), "svc.internal.", RecordType::SOA);
    assert_eq!(rcode(&soa), ResponseCode::NoError);
    assert_eq!(r.http_get("/ready").0, 503);
    r.wait_log("data older than max_stale");

    etcd.restart();
    eventually(Duration::from_secs(20), "answers again", || {
        (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)) == ["10.23.0.1"])
            .then_some(())
    });
    assert_eq!(r.http_get("/ready").0, 200);
}

#[test]
fn panic_threshold_answers_with_every_instance() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.24.0.1"}"#);
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.24.0.2","health":"critical"}"#,
    );
    etcd.put(
        "/ruddr/services/web/w3",
        r#"{"address":"10.24.0.3","health":"critical"}"#,
    );
    let r = Ruddr::start(&etcd.endpoint(), &["--panic-threshold", "0.5"]);
    r.wait_watching();
    assert_eq!(
        answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        ["10.24.0.1", "10.24.0.2", "10.24.0.3"]
    );
    r.wait_log("too few healthy instances");
    etcd.put("/ruddr/services/web/w2", r#"{"address":"10.24.0.2"}"#);
    eventually(
        Duration::from_secs(10),
        "normal mode with 2 of 3 healthy",
        || {
            (answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A))
                == ["10.24.0.1", "10.24.0.2"])
            .then_some(())
        },
    );
}

/// While etcd is away, one rule for every answer from registry data: the stale TTL, for
/// service, SRV, PTR and SkyDNS answers alike; and the registry and SkyDNS apexes answer
/// alike (ANY: the SOA alone, RFC 8482).
#[test]
fn every_registry_answer_gets_the_stale_ttl_and_apexes_answer_alike() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.22.0.1","port":8080}"#,
    );
    etcd.put(
        "/skydns/local/skydns/east/a",
        r#"{"host":"10.22.1.1","port":80,"ttl":60}"#,
    );
    let r = Ruddr::start_with_config(
        &etcd.endpoint(),
        "[dns]\nttl = 5\nstale_ttl = 17\n\n[[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\nzones = [\"skydns.local.\"]\n",
    );
    r.wait_watching();
    let asked = [
        ("web.svc.internal.", RecordType::A),
        ("_web._tcp.svc.internal.", RecordType::SRV),
        ("1.0.22.10.in-addr.arpa.", RecordType::PTR),
        ("east.skydns.local.", RecordType::A),
    ];
    let ttls = |name: &str, qtype: RecordType| -> Vec<u32> {
        let m = query(r.addr(), name, qtype);
        assert_eq!(rcode(&m), ResponseCode::NoError, "{name} {qtype}");
        assert!(!m.answers.is_empty(), "{name} {qtype}");
        m.answers.iter().map(|a| a.ttl).collect()
    };
    eventually(Duration::from_secs(10), "the SkyDNS entry", || {
        (!query(r.addr(), "east.skydns.local.", RecordType::A)
            .answers
            .is_empty())
        .then_some(())
    });
    assert_eq!(ttls(asked[0].0, asked[0].1), [5]);
    assert_eq!(ttls(asked[2].0, asked[2].1), [5], "PTR: the zone's TTL");
    assert_eq!(
        ttls(asked[3].0, asked[3].1),
        [60],
        "SkyDNS: the entry's TTL"
    );
    for apex in ["svc.internal.", "skydns.local."] {
        let m = query(r.addr(), apex, RecordType::ANY);
        assert_eq!(m.answers.len(), 1, "{apex}: {m:?}");
        assert!(matches!(m.answers[0].data, RData::SOA(_)), "{apex}: {m:?}");
        assert!(m.metadata.authoritative);
        let m = query(r.addr(), apex, RecordType::NS);
        assert_eq!(m.answers.len(), 1, "{apex}: {m:?}");
        let m = query(r.addr(), apex, RecordType::TXT);
        assert!(
            m.answers.is_empty() && m.authorities.len() == 1,
            "{apex}: {m:?}"
        );
    }

    etcd.kill();
    r.wait_log("etcd unreachable");
    for (name, qtype) in asked {
        let got = ttls(name, qtype);
        assert!(got.iter().all(|&t| t == 17), "{name} {qtype}: {got:?}");
    }
}
