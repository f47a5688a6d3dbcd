//! Answers come in a fresh random order per response, weighted for A/AAAA.

use std::collections::HashMap;

use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

fn first_counts(r: &Ruddr, qtype: RecordType, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let m = query(r.addr(), "lb.svc.internal.", qtype);
        let first = match &m.answers[0].data {
            RData::SRV(s) => s.target.to_string(),
            other => rdata_string(other),
        };
        *counts.entry(first).or_insert(0) += 1;
    }
    counts
}

#[test]
fn every_instance_comes_first_and_weight_counts() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/lb/heavy",
        r#"{"address":"10.7.0.10","port":80,"weight":10}"#,
    );
    for i in 1..=3 {
        etcd.put(
            &format!("/ruddr/services/lb/light{i}"),
            &format!(r#"{{"address":"10.7.0.{i}","port":80,"weight":1}}"#),
        );
    }
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();

    let counts = first_counts(&r, RecordType::A, 200);
    for addr in ["10.7.0.10", "10.7.0.1", "10.7.0.2", "10.7.0.3"] {
        assert!(
            counts.get(addr).copied().unwrap_or(0) >= 1,
            "{addr} never first: {counts:?}"
        );
    }
    // Expected share for weight 10 against three of weight 1 is about 10/13 (154 of 200);
    // each light one about 15. Require heavy first more than twice as often as every light one.
    let heavy = counts["10.7.0.10"];
    for i in 1..=3 {
        let light = counts[&format!("10.7.0.{i}")];
        assert!(
            heavy > 2 * light,
            "weight 10 first {heavy} times vs weight 1 {light}: {counts:?}"
        );
    }
    eprintln!("A first-position counts over 200 queries: {counts:?}");

    // SRV order is also randomized (clients use the SRV weights themselves).
    let srv = first_counts(&r, RecordType::SRV, 200);
    assert_eq!(
        srv.len(),
        4,
        "every SRV target comes first at least once: {srv:?}"
    );

    // The answer set itself never changes, only its order.
    let m = query(r.addr(), "lb.svc.internal.", RecordType::A);
    assert_eq!(
        answer_strings(&m),
        ["10.7.0.1", "10.7.0.10", "10.7.0.2", "10.7.0.3"]
    );
}

#[test]
fn srv_priority_orders_before_weight() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/lb/primary",
        r#"{"address":"10.7.1.1","port":80,"priority":0,"weight":1}"#,
    );
    etcd.put(
        "/ruddr/services/lb/backup",
        r#"{"address":"10.7.1.2","port":80,"priority":10,"weight":100}"#,
    );
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let counts = first_counts(&r, RecordType::SRV, 50);
    assert_eq!(
        counts.get("primary.lb.svc.internal."),
        Some(&50),
        "{counts:?}"
    );
}
