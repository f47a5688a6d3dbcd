//! `ruddr register` and `ruddr services` against a real etcd and a real `ruddr serve`, with a
//! real HTTP health endpoint served by the test.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::harness::*;

/// A tiny HTTP server: `/health` answers 200 `{"status":"ok"}` while healthy, else 503.
struct HealthServer {
    port: u16,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl HealthServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (healthy.clone(), stop.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let (code, body) = if h.load(Ordering::Relaxed) {
                            ("200 OK", r#"{"status":"ok"}"#)
                        } else {
                            ("503 Service Unavailable", r#"{"status":"db down"}"#)
                        };
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HealthServer {
            port,
            healthy,
            stop,
            handle: Some(handle),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn wait_a(r: &Ruddr, name: &str, want: &[&str], timeout: Duration) {
    wait_answers(r, name, RecordType::A, want, timeout);
}

#[test]
fn health_check_moves_the_instance_out_of_dns_and_back() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let health = HealthServer::start();
    let url = health.url();
    let _sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "10.30.0.1",
            "--port",
            "8080",
            "--check-http",
            &url,
            "--interval",
            "200ms",
            "--fail-after",
            "3",
            "--pass-after",
            "2",
            "--ttl",
            "5s",
            "--drain",
            "0s",
        ],
    );
    wait_a(
        &r,
        "web.svc.internal.",
        &["10.30.0.1"],
        Duration::from_secs(10),
    );
    let value = etcd.value("/ruddr/services/web/web-1").unwrap();
    assert!(
        value.contains(r#""check":"ok""#),
        "HTTP body status kept in meta: {value}"
    );

    health.healthy.store(false, Ordering::Relaxed);
    let t = Instant::now();
    wait_a(&r, "web.svc.internal.", &[], Duration::from_secs(10));
    let out = t.elapsed();
    assert!(
        out >= Duration::from_millis(400),
        "critical only after 3 failures, not at the first ({out:?})"
    );
    eprintln!("unhealthy -> out of DNS after {out:?} (3 x 200ms checks)");
    let value = etcd.value("/ruddr/services/web/web-1").unwrap();
    assert!(
        value.contains(r#""health":"critical""#) && value.contains("db down"),
        "{value}"
    );

    health.healthy.store(true, Ordering::Relaxed);
    let t = Instant::now();
    wait_a(
        &r,
        "web.svc.internal.",
        &["10.30.0.1"],
        Duration::from_secs(10),
    );
    eprintln!(
        "healthy -> back in DNS after {:?} (2 x 200ms checks)",
        t.elapsed()
    );
}

#[test]
fn sigterm_deregisters_before_exit_and_exits_within_drain() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let mut sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "api",
            "--id",
            "a1",
            "--address",
            "10.31.0.1",
            "--port",
            "80",
            "--drain",
            "4s",
        ],
    );
    wait_a(
        &r,
        "api.svc.internal.",
        &["10.31.0.1"],
        Duration::from_secs(10),
    );
    let t = Instant::now();
    sidecar.signal("TERM");
    wait_a(&r, "api.svc.internal.", &[], Duration::from_secs(5));
    assert!(
        sidecar.is_alive(),
        "gone from DNS while the sidecar still drains"
    );
    let code = sidecar.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "exit after drain: {took:?}"
    );
    assert!(
        etcd.keys("/ruddr/services/").is_empty(),
        "key and lease gone"
    );
}

#[test]
fn sigkill_leaves_the_instance_until_the_lease_expires() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "job",
            "--id",
            "j1",
            "--address",
            "10.32.0.1",
            "--ttl",
            "3s",
        ],
    );
    wait_a(
        &r,
        "job.svc.internal.",
        &["10.32.0.1"],
        Duration::from_secs(10),
    );
    sidecar.signal("KILL");
    let t = Instant::now();
    wait_a(&r, "job.svc.internal.", &[], Duration::from_secs(15));
    let gone = t.elapsed();
    assert!(
        gone >= Duration::from_secs(1),
        "it outlived the process by about the TTL: {gone:?}"
    );
    eprintln!("SIGKILL -> out of DNS after {gone:?} (lease TTL 3s)");
}

#[test]
fn lost_lease_is_granted_again_without_operator_action() {
    let mut etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "db",
            "--id",
            "d1",
            "--address",
            "10.33.0.1",
            "--ttl",
            "3s",
        ],
    );
    wait_a(
        &r,
        "db.svc.internal.",
        &["10.33.0.1"],
        Duration::from_secs(10),
    );
    // A rebuilt etcd knows neither the key nor the lease.
    etcd.wipe_and_restart();
    eventually(
        Duration::from_secs(30),
        "the sidecar to register again",
        || etcd.value("/ruddr/services/db/d1").map(|_| ()),
    );
    sidecar.wait_log("lease lost; registering again");
    r.wait_log("re-listing");
    // The answer below is the same before and after: wait for the re-list itself.
    eventually(RELIST_WAIT, "ruddr to re-list the rebuilt etcd", || {
        (r.metric("ruddr_registry_relists_total") >= 1.0).then_some(())
    });
    wait_a(
        &r,
        "db.svc.internal.",
        &["10.33.0.1"],
        Duration::from_secs(10),
    );
}

#[test]
fn child_gets_sigterm_only_after_deregistration() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("got-term");
    let script = term_trapping_script(&marker);
    let mut sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "wk",
            "--id",
            "w1",
            "--address",
            "10.34.0.1",
            "--drain",
            "4s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_a(
        &r,
        "wk.svc.internal.",
        &["10.34.0.1"],
        Duration::from_secs(10),
    );
    sidecar.signal("TERM");
    wait_a(&r, "wk.svc.internal.", &[], Duration::from_secs(5));
    assert!(
        !marker.exists(),
        "the child must not be signalled before deregistration and drain"
    );
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(10)),
        Some(7),
        "the child's exit status"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");

    // A child that dies takes the instance out at once (no drain), with its status.
    let mut sidecar = register(
        &etcd.endpoint(),
        &[
            "--service",
            "wk",
            "--id",
            "w2",
            "--address",
            "10.34.0.2",
            "--drain",
            "30s",
            "--",
            "sh",
            "-c",
            "sleep 1.5; exit 3",
        ],
    );
    wait_a(
        &r,
        "wk.svc.internal.",
        &["10.34.0.2"],
        Duration::from_secs(10),
    );
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)), Some(3));
    wait_a(&r, "wk.svc.internal.", &[], Duration::from_secs(5));
}

#[test]
fn config_file_registers_several_and_bad_usage_writes_nothing() {
    let etcd = Etcd::start();
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("register.toml");
    std::fs::write(
        &cfg,
        format!(
            "[etcd]\nendpoints = [\"{}\"]\n\n[[instance]]\nservice = \"multi\"\nid = \"m1\"\naddress = \"10.35.0.1\"\nport = 80\ndrain = \"0s\"\n\n[[instance]]\nservice = \"multi\"\nid = \"m2\"\naddress = \"10.35.0.2\"\nport = 81\ncheck_cmd = \"true\"\ninterval = \"100ms\"\ndrain = \"0s\"\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let mut sidecar = Proc::ruddr(
        "register",
        &["register", "--config", cfg.to_str().unwrap()],
        &[],
    );
    wait_a(
        &r,
        "multi.svc.internal.",
        &["10.35.0.1", "10.35.0.2"],
        Duration::from_secs(10),
    );

    // `ruddr services`, text and JSON.
    let out = std::process::Command::new(ruddr_bin())
        .args(["services", "--etcd-endpoints", &etcd.endpoint()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("multi")
            && l.split_whitespace().collect::<Vec<_>>()[1..] == ["2", "2"]),
        "{text}"
    );
    let out = std::process::Command::new(ruddr_bin())
        .args([
            "services",
            "multi",
            "--output",
            "json",
            "--etcd-endpoints",
            &etcd.endpoint(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let insts = v["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 2);
    assert_eq!(insts[0]["health"], "passing");
    let ttl = insts[0]["lease_ttl_seconds"].as_i64().unwrap();
    assert!((1..=10).contains(&ttl), "lease TTL left: {ttl}");

    sidecar.signal("INT");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(etcd.keys("/ruddr/services/").is_empty());

    // Bad flags and configs: exit 64, an error naming the option, nothing written.
    let bad: Vec<Vec<&str>> = vec![
        vec!["--service", "we_b", "--id", "x", "--address", "10.0.0.1"],
        vec!["--service", "web", "--id", "x", "--address", "not-an-ip"],
        vec![
            "--service",
            "web",
            "--id",
            "x",
            "--address",
            "10.0.0.1",
            "--ttl",
            "soon",
        ],
        vec![
            "--service",
            "web",
            "--id",
            "x",
            "--address",
            "10.0.0.1",
            "--port-name",
            "http",
        ],
        vec![
            "--service",
            "web",
            "--id",
            "x",
            "--address",
            "10.0.0.1",
            "--check-http",
            "ftp://x",
        ],
        vec!["--service", "web", "--address", "10.0.0.1"],
    ];
    for args in bad {
        let mut full = vec!["register", "--etcd-endpoints", etcd.endpoint().leak()];
        full.extend_from_slice(&args);
        let out = std::process::Command::new(ruddr_bin())
            .args(&full)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(
        &cfg,
        "[[instance]]\nservice = \"a\"\nid = \"b\"\naddress = \"10.0.0.1\"\nchek_cmd = \"true\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(ruddr_bin())
        .args([
            "register",
            "--config",
            cfg.to_str().unwrap(),
            "--etcd-endpoints",
            &etcd.endpoint(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chek_cmd"));
    assert!(
        etcd.keys("/").is_empty(),
        "nothing written by bad invocations"
    );
}

#[test]
fn unreachable_etcd_is_retried_not_fatal() {
    let mut etcd = Etcd::unstarted();
    let endpoint = etcd.endpoint();
    let mut sidecar = register(
        &endpoint,
        &[
            "--service",
            "late",
            "--id",
            "l1",
            "--address",
            "10.36.0.1",
            "--drain",
            "0s",
        ],
    );
    sidecar.wait_log("cannot update etcd; retrying");
    thread::sleep(Duration::from_secs(3));
    assert!(
        sidecar.is_alive(),
        "etcd being away is not a reason to exit"
    );
    etcd.start_now();
    eventually(
        Duration::from_secs(20),
        "registration once etcd is up",
        || etcd.value("/ruddr/services/late/l1").map(|_| ()),
    );
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(etcd.value("/ruddr/services/late/l1").is_none());
}
