//! The admin listener: /metrics moves with queries, outages and bad values; /ready follows the
//! first sync; /health is up; every shipped config passes check-config.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::harness::*;

const A_OK_UDP: &str =
    r#"ruddr_dns_queries_total{qtype="A",rcode="NOERROR",proto="udp",path="registry"}"#;
const A_NX_UDP: &str =
    r#"ruddr_dns_queries_total{qtype="A",rcode="NXDOMAIN",proto="udp",path="registry"}"#;
const SRV_OK_TCP: &str =
    r#"ruddr_dns_queries_total{qtype="SRV",rcode="NOERROR",proto="tcp",path="registry"}"#;

#[test]
fn ready_is_503_until_the_first_sync_then_200() {
    let mut etcd = Etcd::unstarted();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let (code, body) = r.http_get("/ready");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not ready");
    assert!(
        v["reason"].as_str().unwrap().contains("first sync"),
        "{body}"
    );
    let (code, body) = r.http_get("/health");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");

    etcd.start_now();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.10.0.1"}"#);
    let body = eventually(Duration::from_secs(20), "/ready 200", || {
        let (code, body) = r.http_get("/ready");
        (code == 200).then_some(body)
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connected"], true);
    assert_eq!(v["stale_since"], serde_json::Value::Null);

    // Stale is still ready (documented), and the body says since when.
    etcd.kill();
    let body = eventually(Duration::from_secs(20), "stale readiness body", || {
        let (code, body) = r.http_get("/ready");
        assert_eq!(code, 200, "stale counts as ready: {body}");
        body.contains("\"connected\":false").then_some(body)
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["stale_since"].is_string(), "{body}");
    assert!(v["reason"].as_str().unwrap().contains("last known state"));
}

#[test]
fn metrics_move_with_queries_outages_and_bad_values() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.10.1.1","port":80}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.10.1.2","port":80,"health":"critical"}"#,
    );
    etcd.put(
        "/ruddr/services/db/d1",
        r#"{"address":"10.10.2.1","port":5432}"#,
    );
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();

    assert_eq!(r.metric("ruddr_registry_connected"), 1.0);
    assert_eq!(r.metric(r#"ruddr_services{health="all"}"#), 2.0);
    assert_eq!(r.metric(r#"ruddr_instances{health="all"}"#), 3.0);
    assert_eq!(r.metric(r#"ruddr_instances{health="healthy"}"#), 2.0);
    let rev = etcd.put("/ruddr/services/db/d2", r#"{"address":"10.10.2.2"}"#);
    eventually(Duration::from_secs(10), "revision gauge", || {
        (r.metric("ruddr_registry_revision") == rev as f64).then_some(())
    });
    assert!(r.metric("ruddr_registry_confirmed_age_seconds") >= 0.0);

    // Queries by type, code and transport; latency histogram counts every one.
    let ok0 = r.metric(A_OK_UDP);
    let nx0 = r.metric(A_NX_UDP);
    let lat0 = r.metric("ruddr_dns_response_duration_seconds_count");
    for _ in 0..5 {
        query(r.addr(), "web.svc.internal.", RecordType::A);
    }
    for _ in 0..3 {
        query(r.addr(), "nope.svc.internal.", RecordType::A);
    }
    exchange(
        r.addr(),
        &query_message("web.svc.internal.", RecordType::SRV, None),
        Transport::Tcp,
    );
    r.wait_metric(A_OK_UDP, |v| v - ok0 == 5.0);
    r.wait_metric(A_NX_UDP, |v| v - nx0 == 3.0);
    r.wait_metric(SRV_OK_TCP, |v| v == 1.0);
    r.wait_metric("ruddr_dns_response_duration_seconds_count", |v| {
        v - lat0 == 9.0
    });

    // Truncation: 60 A records do not fit in 512 bytes.
    let kvs: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("/ruddr/services/big/b{i}"),
                format!(r#"{{"address":"10.10.3.{}"}}"#, i + 1),
            )
        })
        .collect();
    etcd.put_many(&kvs);
    eventually(Duration::from_secs(10), "big service", || {
        (r.metric(r#"ruddr_services{health="all"}"#) == 3.0).then_some(())
    });
    let tc0 = r.metric("ruddr_dns_udp_truncated_total");
    let m = exchange(
        r.addr(),
        &query_message("big.svc.internal.", RecordType::A, None),
        Transport::Udp,
    );
    assert!(m.metadata.truncation);
    r.wait_metric("ruddr_dns_udp_truncated_total", |v| v - tc0 == 1.0);

    // A bad value is counted.
    let bad0 = r.metric("ruddr_registry_invalid_values_total");
    etcd.put("/ruddr/services/web/broken", "nope");
    eventually(Duration::from_secs(10), "invalid value counted", || {
        (r.metric("ruddr_registry_invalid_values_total") - bad0 == 1.0).then_some(())
    });

    // Outage: disconnected, stale answers counted, staleness grows; then back.
    etcd.kill();
    eventually(Duration::from_secs(20), "registry_connected 0", || {
        (r.metric("ruddr_registry_connected") == 0.0).then_some(())
    });
    let stale0 = r.metric("ruddr_dns_stale_answers_total");
    for _ in 0..4 {
        query(r.addr(), "web.svc.internal.", RecordType::A);
    }
    r.wait_metric("ruddr_dns_stale_answers_total", |v| v - stale0 == 4.0);
    assert!(r.metric("ruddr_registry_stale_seconds") > 0.0);
    etcd.restart();
    eventually(Duration::from_secs(20), "registry_connected 1", || {
        (r.metric("ruddr_registry_connected") == 1.0).then_some(())
    });
    assert_eq!(r.metric("ruddr_registry_stale_seconds"), 0.0);
    let (_, text) = r.http_get("/metrics");
    for name in [
        "# HELP ruddr_dns_queries",
        "# TYPE ruddr_dns_response_duration_seconds histogram",
        "ruddr_registry_relists_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

/// `ruddr check-config --config <path>` must pass; what it prints (the effective config).
fn check_config(path: &std::path::Path) -> String {
    let out = std::process::Command::new(ruddr_bin())
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_shipped_config_passes_check_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check_config(&path);
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn kubernetes_manifests_validate_and_their_config_passes_check_config() {
    require("kubernetes-validate", "kubernetes-validate (pip)");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/kubernetes");
    let manifests: Vec<String> = ["configmap", "deployment", "service", "pdb"]
        .iter()
        .map(|m| format!("{dir}/{m}.yaml"))
        .collect();
    // Strict: against the Kubernetes schemas, unknown fields refused.
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), 4, "{text}");
    // The ConfigMap's ruddr.toml is a valid configuration.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; sys.stdout.write(yaml.safe_load(open(sys.argv[1]))['data']['ruddr.toml'])",
            &manifests[0],
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ruddr.toml");
    std::fs::write(&cfg, &out.stdout).unwrap();
    let effective = check_config(&cfg);
    assert!(effective.contains("0.0.0.0:5353"), "{effective}");
}

#[test]
fn slow_admin_connections_are_closed_after_the_header_timeout_and_health_keeps_answering() {
    use std::io::{Read, Write};
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        "admin_header_timeout = \"2s\"\nadmin_max_connections = 250\n",
    )
    .unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    // 200 clients that start a request and never finish its head.
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", r.admin_port)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // /health answers meanwhile.
    let (code, _) = r.http_get("/health");
    assert_eq!(code, 200);
    // Each slow connection is closed by the server after the header timeout.
    let start = std::time::Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        // EOF (or a 408 and then EOF): closed, not left hanging.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a slow connection is still open: {e}"),
            }
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    let (code, _) = r.http_get("/health");
    assert_eq!(code, 200);

    // Past admin_max_connections, a new connection is closed at once (well before the
    // header timeout would close it).
    let held: Vec<std::net::TcpStream> = (0..250)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", r.admin_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", r.admin_port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed_at = std::time::Instant::now();
    assert!(matches!(extra.read(&mut buf), Ok(0)), "closed at the limit");
    assert!(closed_at.elapsed() < Duration::from_secs(1));
    r.wait_log("admin connection limit reached");
    drop(held);
}
