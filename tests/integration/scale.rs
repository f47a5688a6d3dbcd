//! Registries larger than one gRPC message: paged lists at one revision, re-lists after a
//! compaction at that size without losing a name, and page boundaries with a tiny page size.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

/// `services` x `per` instances of about 150 bytes each: `svc<i>/i<j>` at 10.<i/250>.<i%250>.<j+1>.
fn registry(services: usize, per: usize) -> Vec<(String, String)> {
    let mut kvs = Vec::with_capacity(services * per);
    for i in 0..services {
        for j in 0..per {
            let value = format!(
                r#"{{"address":"10.{}.{}.{}","port":{},"meta":{{"pad":"{}"}}}}"#,
                i / 250,
                i % 250,
                j + 1,
                8080 + j,
                "x".repeat(90)
            );
            kvs.push((format!("/ruddr/services/svc{i}/i{j}"), value));
        }
    }
    kvs
}

fn ready(r: &Ruddr) -> serde_json::Value {
    let (_, body) = r.http_get("/ready");
    serde_json::from_str(&body).expect("/ready is JSON")
}

/// Waits until /ready says ready with exactly `instances` instances.
fn wait_instances(r: &Ruddr, instances: u64, timeout: Duration) {
    eventually(timeout, &format!("{instances} instances ready"), || {
        let v = ready(r);
        (v["status"] == "ready" && v["instances"] == instances).then_some(())
    });
}

fn addresses(services: usize, i: usize, per: usize) -> Vec<String> {
    assert!(i < services);
    let mut v: Vec<String> = (0..per)
        .map(|j| format!("10.{}.{}.{}", i / 250, i % 250, j + 1))
        .collect();
    v.sort();
    v
}

#[test]
fn registry_above_the_message_limit_syncs_follows_and_relists_without_losing_a_name() {
    const SERVICES: usize = 8_000;
    const PER: usize = 5;
    let mut etcd = Etcd::start();
    let kvs = registry(SERVICES, PER);
    let bytes: usize = kvs.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(
        bytes > 5 << 20,
        "the registry ({bytes} bytes) must not fit in one default 4 MiB gRPC message"
    );
    etcd.put_many(&kvs);

    let r = Ruddr::start(&etcd.endpoint(), &[]);
    wait_instances(&r, (SERVICES * PER) as u64, Duration::from_secs(60));
    for i in [0, 1, SERVICES / 2, SERVICES - 1] {
        let name = format!("svc{i}.svc.internal.");
        let want = addresses(SERVICES, i, PER);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        wait_answers(&r, &name, RecordType::A, &want, Duration::from_secs(5));
    }

    // Changes flow through the watch.
    etcd.put(
        "/ruddr/services/fresh/f1",
        r#"{"address":"10.99.0.1","port":80}"#,
    );
    wait_answers(
        &r,
        "fresh.svc.internal.",
        RecordType::A,
        &["10.99.0.1"],
        Duration::from_secs(5),
    );

    // Names that never change are queried all through a re-list: none may go missing.
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let checker = {
        let (stop, asked, wrong) = (stop.clone(), asked.clone(), wrong.clone());
        let addr = r.addr();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let i = 1 + (n * 7919) % (SERVICES - 1);
                let name = format!("svc{i}.svc.internal.");
                let msg = query_message(&name, RecordType::A, Some(1232));
                let Some(bytes) = exchange_raw(addr, &msg.to_vec().unwrap(), Transport::Udp) else {
                    continue; // ruddr is stopped for a moment: no answer is not a wrong answer
                };
                let m = hickory_proto::op::Message::from_vec(&bytes).unwrap();
                asked.fetch_add(1, Ordering::Relaxed);
                let mut got = answer_strings(&m);
                got.sort();
                if m.metadata.response_code != ResponseCode::NoError
                    || got != addresses(SERVICES, i, PER)
                {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // Freeze ruddr, change etcd and compact past its revision: it must re-list everything.
    r.signal("STOP");
    etcd.restart();
    etcd.delete("/ruddr/services/svc0/i0");
    etcd.put(
        "/ruddr/services/later/l1",
        r#"{"address":"10.99.1.1","port":80}"#,
    );
    etcd.compact();
    r.signal("CONT");
    r.wait_log("watch lost its revision");
    // The re-list comes after a random wait (etcd.relist_jitter); `later` appears with it.
    wait_answers(
        &r,
        "later.svc.internal.",
        RecordType::A,
        &["10.99.1.1"],
        RELIST_WAIT,
    );
    // svc0 lost one, fresh and later added one each.
    wait_instances(&r, (SERVICES * PER + 1) as u64, Duration::from_secs(5));
    let mut svc0 = addresses(SERVICES, 0, PER);
    svc0.retain(|a| a != "10.0.0.1");
    let svc0: Vec<&str> = svc0.iter().map(String::as_str).collect();
    wait_answers(
        &r,
        "svc0.svc.internal.",
        RecordType::A,
        &svc0,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    let (asked, wrong) = (asked.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
    assert!(
        asked > 100,
        "only {asked} answers checked during the re-list"
    );
    assert_eq!(
        wrong, 0,
        "{wrong} of {asked} answers were wrong during the re-list"
    );
    assert!(r.metric("ruddr_registry_relists_total") >= 1.0);
}

#[test]
fn tiny_pages_serve_every_page_boundary_and_services_lists_them() {
    const SERVICES: usize = 41;
    const PER: usize = 3;
    let etcd = Etcd::start();
    etcd.put_many(&registry(SERVICES, PER));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    // 123 keys in pages of 7: boundaries fall inside services and between them.
    std::fs::write(&cfg, "[etcd]\nlist_page_size = 7\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg]);
    wait_instances(&r, (SERVICES * PER) as u64, Duration::from_secs(20));
    assert!(r.log_text().contains("pages=18"), "123 keys in pages of 7");
    for i in 0..SERVICES {
        let want = addresses(SERVICES, i, PER);
        let mut got = answers(&r, &format!("svc{i}.svc.internal."), RecordType::A);
        got.sort();
        assert_eq!(got, want, "svc{i}");
    }

    // `ruddr services` pages the same way.
    let out = std::process::Command::new(ruddr_bin())
        .args([
            "services",
            "--config",
            cfg,
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["services"].as_array().unwrap();
    assert_eq!(list.len(), SERVICES);
    assert!(list.iter().all(|s| s["total"] == PER as u64), "{v}");
}

fn big_values(from: usize, to: usize) -> Vec<(String, String)> {
    (from..to)
        .map(|i| {
            (
                format!("/ruddr/services/big{i}/a"),
                format!(
                    r#"{{"address":"10.8.{}.{}","meta":{{"pad":"{}"}}}}"#,
                    i / 250,
                    i % 250 + 1,
                    "y".repeat(1000)
                ),
            )
        })
        .collect()
}

#[test]
fn a_message_limit_below_a_page_or_a_catch_up_is_worked_around() {
    // 3,000 values of ~1 KiB in pages of 50,000 keys: ~3.3 MiB, above the 2 MiB limit set here
    // (etcd's own fragments are at most its --max-request-bytes, 1.5 MiB by default).
    let mut etcd = Etcd::start();
    etcd.put_many(&big_values(0, 3_000));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(&cfg, "[etcd]\nmax_message_bytes = 2097152\n").unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    wait_instances(&r, 3_000, Duration::from_secs(30));
    assert!(r.log_text().contains("reading smaller pages"));
    assert_eq!(
        answers(&r, "big1999.svc.internal.", RecordType::A),
        ["10.8.7.250"]
    );

    // A catch-up of ~2.7 MiB in one watch reply (ruddr frozen, its connection cut, 25 large
    // transactions meanwhile) arrives in fragments within the limit.
    r.signal("STOP");
    etcd.restart();
    etcd.put_many(&big_values(3_000, 5_500));
    r.signal("CONT");
    wait_instances(&r, 5_500, Duration::from_secs(30));
    assert_eq!(
        answers(&r, "big5499.svc.internal.", RecordType::A),
        ["10.8.21.250"]
    );
    assert!(
        !r.log_text().contains("re-listing"),
        "caught up through the watch, not a re-list"
    );
}

#[test]
fn a_list_whose_revision_is_compacted_while_paging_starts_over() {
    let etcd = Etcd::start();
    etcd.put_many(&registry(100, 3));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    // One key per page: the list takes hundreds of round trips.
    std::fs::write(&cfg, "[etcd]\nlist_page_size = 1\n").unwrap();
    // Meanwhile, history keeps moving and is compacted right behind it.
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (stop, endpoint) = (stop.clone(), etcd.endpoint());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = c
                        .put(format!("/other/tick{}", n % 10), "x", None)
                        .await
                        .unwrap();
                    let rev = r.header().unwrap().revision();
                    let _ = c.compact(rev, None).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
    };
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    r.wait_log("list revision compacted while paging; starting over");
    stop.store(true, Ordering::Relaxed);
    compactor.join().unwrap();
    // Once history stands still, a list completes, whole.
    wait_instances(&r, 300, Duration::from_secs(60));
    for i in [0, 50, 99] {
        let mut got = answers(&r, &format!("svc{i}.svc.internal."), RecordType::A);
        got.sort();
        assert_eq!(got, addresses(100, i, 3));
    }
}
