//! The xDS server with real gRPC programs: Python grpcio backends registered in etcd, and a
//! grpcio client on `xds:///<service>` whose bootstrap points at ruddr.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const P: &str = "/ruddr/services/";

fn script(name: &str) -> String {
    format!(
        "{}/tests/integration/xds/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn require_grpcio() {
    let ok = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 grpcio is missing: python3 -m pip install grpcio (scripts/deps.sh does)"
    );
}

const INSECURE: &str = r#"{"type":"insecure"}"#;

/// gRPC backends on `ports`, each answering with its name `b<port>`.
struct Backends(Child);

impl Backends {
    fn start(ports: &[u16]) -> Self {
        let mut child = Command::new("python3")
            .arg(script("backends.py"))
            .args(ports.iter().map(u16::to_string))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 backends.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the backends did not start");
        Backends(child)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A grpcio client on `xds:///<target>`: one RPC every 20 ms, each reply recorded with the
/// time it came.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Client {
    fn start(xds_port: u16, target: &str, zone: Option<&str>) -> Self {
        Self::start_in("python3", "client.py", xds_port, target, zone, INSECURE)
    }

    /// The same client in Node (@grpc/grpc-js-xds, installed by scripts/deps.sh).
    fn node(xds_port: u16, target: &str) -> Self {
        Self::start_in("node", "client.js", xds_port, target, None, INSECURE)
    }

    /// The Python client reaching ruddr with the bootstrap channel credentials `creds`.
    fn with_creds(xds_port: u16, target: &str, creds: &str) -> Self {
        Self::start_in("python3", "client.py", xds_port, target, None, creds)
    }

    fn start_in(
        program: &str,
        client: &str,
        xds_port: u16,
        target: &str,
        zone: Option<&str>,
        creds: &str,
    ) -> Self {
        // grpc-js-xds rejects a bootstrap whose node has no locality (empty is fine).
        let locality = format!(r#","locality":{{"zone":"{}"}}"#, zone.unwrap_or(""));
        let bootstrap = format!(
            r#"{{"xds_servers":[{{"server_uri":"127.0.0.1:{xds_port}","channel_creds":[{creds}],"server_features":["xds_v3"]}}],"node":{{"id":"test-client"{locality}}}}}"#
        );
        let mut child = Command::new(program)
            .arg(script(client))
            .arg(target)
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} {client}: {e}"));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = replies.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((_, reply)) = line.split_once(' ') {
                    sink.lock()
                        .unwrap()
                        .push((Instant::now(), reply.to_string()));
                }
            }
        });
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            replies,
        }
    }

    /// The replies received after `since`.
    fn after(&self, since: Instant) -> Vec<String> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > since)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits until the replies after `since` satisfy `ok` (at least `n` of them).
    fn wait(&self, since: Instant, n: usize, what: &str, ok: impl Fn(&[String]) -> bool) {
        eventually(Duration::from_secs(30), what, || {
            let r = self.after(since);
            (r.len() >= n && ok(&r)).then_some(())
        });
    }

    /// The time it took, from `from`, until every reply after it for a full `window` has
    /// satisfied `ok` (polling; `None` if not within `limit`).
    fn settles(
        &self,
        from: Instant,
        window: Duration,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Option<Duration> {
        loop {
            let replies = self.replies.lock().unwrap().clone();
            // The first reply after `from` from which on all satisfy `ok`.
            let after: Vec<&(Instant, String)> =
                replies.iter().filter(|(t, _)| *t > from).collect();
            let start = after.iter().rposition(|(_, r)| !ok(r)).map_or(0, |i| i + 1);
            if let Some((t0, _)) = after.get(start) {
                let last = after.last().unwrap().0;
                if last.duration_since(*t0) >= window {
                    return Some(t0.duration_since(from));
                }
            }
            if from.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(port: u16, extra: &str) -> String {
    format!(r#"{{"address":"127.0.0.1","port":{port}{extra}}}"#)
}

#[test]
fn a_grpc_client_follows_the_registry_over_xds() {
    require_grpcio();
    let etcd = Etcd::start();
    let xds_port = free_port();
    let xds = xds_port.to_string();
    let ruddr = Ruddr::start(
        &etcd.endpoint(),
        &["--xds-listen", &format!("127.0.0.1:{xds}")],
    );
    ruddr.wait_log("xds listening");
    ruddr.wait_watching();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _backends = Backends::start(&ports);
    let name = |p: u16| format!("b{p}");
    for (i, p) in ports[..3].iter().enumerate() {
        etcd.put(&format!("{P}echo/e{i}"), &value(*p, ""));
    }

    let client = Client::start(xds_port, "echo", None);
    let t0 = Instant::now();
    client.wait(t0, 30, "RPCs reaching all three backends", |r| {
        ports[..3].iter().all(|p| r.contains(&name(*p)))
    });
    assert_eq!(ruddr.metric("ruddr_xds_streams"), 1.0);
    // Listener, cluster and assignment of `echo` (the route is inline).
    assert_eq!(ruddr.metric("ruddr_xds_subscribed_resources"), 3.0);
    assert!(ruddr.metric(r#"ruddr_xds_pushes_total{type="endpoints"}"#) >= 1.0);

    // A deregistered backend stops getting RPCs.
    let t = Instant::now();
    etcd.delete(&format!("{P}echo/e0"));
    let took = client
        .settles(
            t,
            Duration::from_millis(500),
            Duration::from_secs(10),
            |r| r != name(ports[0]) && !r.starts_with("ERR"),
        )
        .expect("RPCs to move off the deleted backend");
    // Timing is a benchmark's business; the figure is printed, the bound only catches a push
    // that never came promptly (the next registry change, or a poll).
    eprintln!("RPCs off the deleted backend after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // A new one gets RPCs.
    let t = Instant::now();
    etcd.put(&format!("{P}echo/e3"), &value(ports[3], ""));
    client.wait(t, 1, "RPCs reaching the new backend", |r| {
        r.contains(&name(ports[3]))
    });
    let first = client
        .replies
        .lock()
        .unwrap()
        .iter()
        .find(|(at, r)| *at > t && *r == name(ports[3]))
        .map(|(at, _)| at.duration_since(t))
        .unwrap();
    eprintln!("first RPC on the new backend after {first:?}");
    assert!(first < Duration::from_secs(5), "took {first:?}");

    // A backend turned critical stops getting RPCs.
    let t = Instant::now();
    etcd.put(
        &format!("{P}echo/e1"),
        &value(ports[1], r#","health":"critical""#),
    );
    client
        .settles(
            t,
            Duration::from_millis(500),
            Duration::from_secs(10),
            |r| r != name(ports[1]) && !r.starts_with("ERR"),
        )
        .expect("RPCs to move off the critical backend");

    // etcd stopped: RPCs keep reaching the last known backends; back, changes flow again.
    etcd.signal("STOP");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    client.wait(t, 50, "RPCs while etcd is stopped", |r| {
        r.iter()
            .all(|x| *x == name(ports[2]) || *x == name(ports[3]))
    });
    etcd.signal("CONT");
    let t = Instant::now();
    etcd.put(&format!("{P}echo/e1"), &value(ports[1], ""));
    client.wait(t, 1, "the healthy backend back after etcd returns", |r| {
        r.contains(&name(ports[1]))
    });
    drop(ruddr);
}

#[test]
fn a_named_port_target_reaches_that_port_and_locality_prefer_keeps_to_the_zone() {
    require_grpcio();
    let etcd = Etcd::start();
    let xds_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        format!("[xds]\nlisten = \"127.0.0.1:{xds_port}\"\n[locality]\nmode = \"prefer\"\n"),
    )
    .unwrap();
    let ruddr = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    ruddr.wait_watching();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _backends = Backends::start(&ports);
    let name = |p: u16| format!("b{p}");
    // a0 in zone a (main port ports[0], named port "alt" = ports[2]); b0 in zone b.
    etcd.put(
        &format!("{P}pick/a0"),
        &value(
            ports[0],
            &format!(r#","locality":"a","ports":{{"alt":{}}}"#, ports[2]),
        ),
    );
    etcd.put(
        &format!("{P}pick/b0"),
        &value(ports[1], r#","locality":"b""#),
    );

    let alt = Client::start(xds_port, "pick:alt", None);
    let t0 = Instant::now();
    alt.wait(t0, 20, "RPCs on the named port", |r| {
        r.iter().all(|x| *x == name(ports[2]))
    });

    let local = Client::start(xds_port, "pick.svc.internal", Some("a"));
    let t0 = Instant::now();
    local.wait(t0, 30, "RPCs kept to zone a", |r| {
        r.iter().all(|x| *x == name(ports[0]))
    });
    // Zone a's only backend turns critical: RPCs spill over to zone b.
    etcd.put(
        &format!("{P}pick/a0"),
        &value(ports[0], r#","locality":"a","health":"critical""#),
    );
    let t = Instant::now();
    local
        .settles(
            t,
            Duration::from_millis(500),
            Duration::from_secs(10),
            |r| r == name(ports[1]),
        )
        .expect("RPCs to spill over to zone b");
    drop(ruddr);
}

#[test]
fn a_node_grpc_js_xds_client_follows_the_registry_too() {
    require_grpcio();
    let modules = script("node_modules/@grpc/grpc-js-xds");
    assert!(
        std::path::Path::new(&modules).exists(),
        "@grpc/grpc-js-xds is missing: npm install --prefix tests/integration/xds (scripts/deps.sh does)"
    );
    let etcd = Etcd::start();
    let xds_port = free_port();
    let ruddr = Ruddr::start(
        &etcd.endpoint(),
        &["--xds-listen", &format!("127.0.0.1:{xds_port}")],
    );
    ruddr.wait_watching();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _backends = Backends::start(&ports);
    let name = |p: u16| format!("b{p}");
    for (i, p) in ports[..2].iter().enumerate() {
        etcd.put(&format!("{P}node/n{i}"), &value(*p, ""));
    }
    let client = Client::node(xds_port, "node");
    let t0 = Instant::now();
    client.wait(t0, 20, "Node RPCs reaching both backends", |r| {
        ports[..2].iter().all(|p| r.contains(&name(*p)))
    });
    let t = Instant::now();
    etcd.delete(&format!("{P}node/n0"));
    etcd.put(&format!("{P}node/n2"), &value(ports[2], ""));
    client
        .settles(
            t,
            Duration::from_millis(500),
            Duration::from_secs(10),
            |r| r == name(ports[1]) || r == name(ports[2]),
        )
        .expect("Node RPCs to follow the change");
    client.wait(t, 1, "Node RPCs reaching the new backend", |r| {
        r.contains(&name(ports[2]))
    });
    drop(ruddr);
}

#[test]
fn xds_over_tls_with_client_certificates() {
    require_grpcio();
    let pki = Pki::new();
    let etcd = Etcd::start();
    let xds_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[xds]\nlisten = \"127.0.0.1:{xds_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem")
        ),
    )
    .unwrap();
    let ruddr = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    ruddr.wait_log("tls=true");
    ruddr.wait_watching();
    let port = free_port();
    let _backends = Backends::start(&[port]);
    etcd.put(&format!("{P}secure/s0"), &value(port, ""));

    let tls = format!(
        r#"{{"type":"tls","config":{{"ca_certificate_file":"{}","certificate_file":"{}","private_key_file":"{}"}}}}"#,
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let client = Client::with_creds(xds_port, "secure", &tls);
    let t0 = Instant::now();
    client.wait(t0, 10, "RPCs over an xDS config fetched with TLS", |r| {
        r.iter().any(|x| *x == format!("b{port}"))
    });
    // Without a client certificate (or without TLS), no configuration: RPCs fail.
    let plain = Client::start(xds_port, "secure", None);
    let t = Instant::now();
    plain.wait(t, 20, "RPCs of a client without TLS", |r| {
        r.iter().all(|x| x.starts_with("ERR"))
    });
    let no_cert = format!(
        r#"{{"type":"tls","config":{{"ca_certificate_file":"{}"}}}}"#,
        pki.path("ca.pem")
    );
    let anonymous = Client::with_creds(xds_port, "secure", &no_cert);
    anonymous.wait(t, 20, "RPCs of a TLS client without a certificate", |r| {
        r.iter().all(|x| x.starts_with("ERR"))
    });
    drop(ruddr);
}
