//! Restarts: a restart with a snapshot resumes the etcd watch after the snapshot's revisions
//! instead of listing the registry again, and lists when etcd no longer has that history.

use std::collections::BTreeSet;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::harness::*;

const INSTANCES: usize = 10_000;

fn native(i: usize) -> (String, String) {
    (
        format!("/ruddr/services/svc{}/i{}", i % 1000, i),
        format!(
            r#"{{"address":"10.{}.{}.{}","port":8080,"tags":["v1"],"meta":{{"version":"1.2.3"}}}}"#,
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        ),
    )
}

fn micro(nodes: &[(&str, &str)]) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(id, addr)| format!(r#"{{"id":"{id}","address":"{addr}:9000"}}"#))
        .collect();
    format!(r#"{{"name":"orders","nodes":[{}]}}"#, nodes.join(","))
}

/// etcd's gRPC bytes sent to clients so far (its own metric).
fn etcd_sent_bytes(etcd: &Etcd) -> f64 {
    let url = format!("{}/metrics", etcd.endpoint());
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("etcd_network_client_grpc_sent_bytes_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The A records of `name`, sorted.
fn a_set(r: &Ruddr, name: &str) -> BTreeSet<String> {
    answers(r, name, RecordType::A).into_iter().collect()
}

#[test]
fn a_restart_resumes_the_watch_and_lists_only_past_a_compaction() {
    require("curl", "curl");
    let etcd = Etcd::start();
    let all: Vec<(String, String)> = (0..INSTANCES).map(native).collect();
    etcd.put_many(&all);
    let orders = "/micro/registry/orders/all";
    etcd.put(
        orders,
        &micro(&[
            ("n1", "10.200.0.1"),
            ("n2", "10.200.0.2"),
            ("n3", "10.200.0.3"),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("mirror.snapshot");
    let config = format!(
        "[snapshot]\nfile = {:?}\nmin_interval = \"100ms\"\n\n[[sources]]\nformat = \"go-micro\"\nprefix = \"/micro/registry/\"\n",
        snap.to_str().unwrap()
    );

    // A cold start lists everything: what a list costs etcd.
    let before = etcd_sent_bytes(&etcd);
    let mut r = Ruddr::start_with_config(&etcd.endpoint(), &config);
    r.wait_watching();
    let list_bytes = etcd_sent_bytes(&etcd) - before;
    assert_eq!(r.metric("ruddr_registry_resumes_total{how=\"list\"}"), 1.0);
    let revision = etcd.revision();
    eventually(Duration::from_secs(10), "a snapshot with positions", || {
        let p = ruddr::persist::load(&snap, u64::MAX).ok()??;
        (p.positions.len() == 2
            && p.positions.iter().all(|(_, rev)| *rev >= revision - 1)
            && p.owned.len() == 1)
            .then_some(())
    });
    r.signal("TERM");
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(0));

    // 100 changes while it is down: new instances, removed ones, changed addresses, and a
    // go-micro key that drops one of its nodes (the snapshot must say which nodes it gave).
    for i in 0..40 {
        etcd.put(
            &format!("/ruddr/services/svc{i}/new"),
            r#"{"address":"10.250.0.1","port":80}"#,
        );
    }
    for i in 0..30 {
        etcd.delete(&native(i).0);
    }
    for i in 30..59 {
        etcd.put(&native(i).0, r#"{"address":"10.251.0.9","port":80}"#);
    }
    etcd.put(
        orders,
        &micro(&[("n1", "10.200.0.1"), ("n3", "10.200.0.3")]),
    );

    let before = etcd_sent_bytes(&etcd);
    let r = Ruddr::start_with_config(&etcd.endpoint(), &config);
    r.wait_watching();
    r.wait_log("registry current");
    assert_eq!(r.metric("ruddr_registry_resumes_total{how=\"watch\"}"), 1.0);
    assert_eq!(r.metric("ruddr_registry_resumes_total{how=\"list\"}"), 0.0);
    assert!(
        !r.log_text().contains("registry listed"),
        "{}",
        r.log_text()
    );
    // Every change is in the answers, and nothing else changed.
    let expect = |svc: usize| -> BTreeSet<String> {
        let mut want = BTreeSet::new();
        for i in (svc..INSTANCES).step_by(1000) {
            if i < 30 {
                continue;
            }
            if i < 59 {
                want.insert("10.251.0.9".to_string());
            } else {
                let v = native(i).1;
                let addr = v.split('"').nth(3).unwrap().to_string();
                want.insert(addr);
            }
        }
        if svc < 40 {
            want.insert("10.250.0.1".to_string());
        }
        want
    };
    eventually(
        Duration::from_secs(10),
        "the changes in the answers",
        || (a_set(&r, "svc0.svc.internal.") == expect(0)).then_some(()),
    );
    for svc in (0..70).chain([500, 999]) {
        assert_eq!(
            a_set(&r, &format!("svc{svc}.svc.internal.")),
            expect(svc),
            "svc{svc}"
        );
    }
    assert_eq!(
        a_set(&r, "orders.svc.internal."),
        ["10.200.0.1", "10.200.0.3"].map(String::from).into()
    );
    let resume_bytes = etcd_sent_bytes(&etcd) - before;
    eprintln!("list: {list_bytes} bytes; resume: {resume_bytes} bytes");
    assert!(
        resume_bytes < list_bytes * 0.05,
        "resume took {resume_bytes} bytes out of etcd, a list {list_bytes}"
    );
    // And it goes on following the watch.
    etcd.put(orders, &micro(&[("n3", "10.200.0.3")]));
    wait_answers(
        &r,
        "orders.svc.internal.",
        RecordType::A,
        &["10.200.0.3"],
        Duration::from_secs(10),
    );
    eventually(
        Duration::from_secs(10),
        "a snapshot with the last change",
        || {
            let p = ruddr::persist::load(&snap, u64::MAX).ok()??;
            (p.owned.first()?.1.len() == 1).then_some(())
        },
    );
    drop(r);

    // Past a compaction the revision is gone: it lists, and is right again.
    etcd.put(orders, &micro(&[("n4", "10.200.0.4")]));
    etcd.delete("/ruddr/services/svc999/i9999");
    etcd.compact();
    let r = Ruddr::start_with_config(&etcd.endpoint(), &config);
    r.wait_watching();
    wait_answers(
        &r,
        "orders.svc.internal.",
        RecordType::A,
        &["10.200.0.4"],
        Duration::from_secs(10),
    );
    assert_eq!(r.metric("ruddr_registry_resumes_total{how=\"list\"}"), 1.0);
    assert!(
        r.log_text()
            .contains("etcd compacted the revision the data holds"),
        "{}",
        r.log_text()
    );
    let mut want = expect(999);
    want.remove("10.0.39.15"); // i9999
    assert_eq!(a_set(&r, "svc999.svc.internal."), want);
}
