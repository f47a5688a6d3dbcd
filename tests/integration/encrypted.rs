//! DNS over TLS and DNS over HTTPS with real clients: kdig (`+tls`, `+https`), curl
//! (`--doh-url`, and bad requests), dnspython (`dns.query.tls`, `dns.query.https`); wrong
//! names and untrusted CAs fail; idle and slow connections under a low open-file limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::*;

struct Encrypted {
    r: Ruddr,
    dot: u16,
    doh: u16,
    pki: Pki,
    _dir: tempfile::TempDir,
}

/// ruddr with DoT and DoH on free ports, the test CA's server certificate, and `extra` TOML
/// in `[dns]`.
fn start(etcd: &Etcd, extra: &str, nofile: Option<u64>) -> Encrypted {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dns]\ntls_listen = [\"127.0.0.1:0\"]\nhttps_listen = [\"127.0.0.1:0\"]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n{extra}",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    )
    .unwrap();
    let r = Ruddr::start_limited(
        &etcd.endpoint(),
        &["--config", cfg.to_str().unwrap()],
        &[],
        nofile,
    );
    r.wait_watching();
    let dot = logged_number(&r, "dns over tls listening", "addr=127.0.0.1:") as u16;
    let doh = logged_number(&r, "dns over https listening", "addr=127.0.0.1:") as u16;
    Encrypted {
        r,
        dot,
        doh,
        pki,
        _dir: dir,
    }
}

fn kdig(args: &[&str]) -> Output {
    require("kdig", "knot-dnsutils");
    Command::new("kdig")
        .args(["+time=3", "+retry=0"])
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn register(etcd: &Etcd) {
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.70.0.1","port":8080}"#,
    );
    etcd.put("/ruddr/services/api/a1", r#"{"address":"10.70.0.2"}"#);
}

#[test]
fn kdig_over_tls_answers_pipelines_and_pads() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "", None);
    let ca = format!("+tls-ca={}", e.pki.path("ca.pem"));
    let port = e.dot.to_string();
    let base = ["@127.0.0.1", "-p", &port, &ca, "+tls-hostname=localhost"];
    let a = kdig(&[&base[..], &["+short", "web.svc.internal", "A"]].concat());
    assert_eq!(text(&a).trim(), "10.70.0.1", "{}", text(&a));
    let srv = kdig(&[&base[..], &["+short", "web.svc.internal", "SRV"]].concat());
    assert!(text(&srv).contains("8080"), "{}", text(&srv));
    // Several queries on one kept-open connection.
    let many = kdig(
        &[
            &base[..],
            &[
                "+keepopen",
                "+short",
                "web.svc.internal",
                "A",
                "api.svc.internal",
                "A",
                "nope.svc.internal",
                "A",
            ],
        ]
        .concat(),
    );
    let out = text(&many);
    assert!(
        out.contains("10.70.0.1") && out.contains("10.70.0.2"),
        "{out}"
    );
    // A padded query gets a response padded to a multiple of 468 bytes.
    let padded = kdig(&[&base[..], &["+padding", "web.svc.internal", "A"]].concat());
    let out = text(&padded);
    let size: usize = out
        .lines()
        .find_map(|l| {
            let at = l.find("Received ")? + "Received ".len();
            l[at..].split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no size in {out}"));
    assert_eq!(size % 468, 0, "padded response of {size} bytes:\n{out}");
    assert!(out.contains("PADDING"), "{out}");
    let unpadded = text(&kdig(
        &[&base[..], &["+nopadding", "web.svc.internal", "A"]].concat(),
    ));
    assert!(!unpadded.contains("PADDING"), "{unpadded}");
    assert!(
        e.r.metric(
            r#"ruddr_dns_queries_total{qtype="A",rcode="NOERROR",proto="dot",path="registry"}"#
        ) >= 4.0
    );
}

#[test]
fn wrong_name_or_untrusted_ca_fails_the_clients() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "", None);
    let other = Pki::new();
    let port = e.dot.to_string();
    for (ca, host) in [
        (e.pki.path("ca.pem"), "wrong.example"),
        (other.path("ca.pem"), "localhost"),
    ] {
        let out = kdig(&[
            "@127.0.0.1",
            "-p",
            &port,
            &format!("+tls-ca={ca}"),
            &format!("+tls-hostname={host}"),
            "+short",
            "web.svc.internal",
            "A",
        ]);
        assert!(
            !text(&out).contains("10.70.0.1"),
            "kdig must not get an answer with {ca} / {host}: {}",
            text(&out)
        );
    }
    let url = format!("https://127.0.0.1:{}/dns-query", e.doh);
    let curl = Command::new("curl")
        .args(["-sS", "--cacert", &other.path("ca.pem"), &url])
        .output()
        .unwrap();
    assert!(
        !curl.status.success(),
        "curl with an untrusted CA: {}",
        text(&curl)
    );
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doh_answers_kdig_and_curl_and_rejects_bad_requests() {
    let etcd = Etcd::start();
    register(&etcd);
    // An HTTP server the DoH-resolved name leads to.
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hello over doh\n").unwrap();
    let http_port = free_port();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &http_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(site.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    etcd.put("/ruddr/services/site/s1", r#"{"address":"127.0.0.1"}"#);
    let e = start(&etcd, "", None);
    let ca = e.pki.path("ca.pem");
    let port = e.doh.to_string();
    let out = kdig(&[
        "@127.0.0.1",
        "-p",
        &port,
        &format!("+tls-ca={ca}"),
        "+tls-hostname=localhost",
        "+https",
        "+short",
        "web.svc.internal",
        "A",
    ]);
    assert_eq!(text(&out).trim(), "10.70.0.1", "{}", text(&out));
    let get = kdig(&[
        "@127.0.0.1",
        "-p",
        &port,
        &format!("+tls-ca={ca}"),
        "+tls-hostname=localhost",
        "+https",
        "+https-get",
        "+short",
        "web.svc.internal",
        "SRV",
    ]);
    assert!(text(&get).contains("8080"), "{}", text(&get));

    // curl resolves the site through DoH and fetches from it.
    let url = format!("https://127.0.0.1:{port}/dns-query");
    eventually(Duration::from_secs(10), "the HTTP server", || {
        TcpStream::connect(("127.0.0.1", http_port)).ok()
    });
    let fetched = Command::new("curl")
        .args(["-sS", "--cacert", &ca, "--doh-url", &url])
        .arg(format!("http://site.svc.internal:{http_port}/hello.txt"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "hello over doh\n",
        "{}",
        text(&fetched)
    );
    let _ = http.kill();
    let _ = http.wait();

    // A good GET (`web A`, id 0) with its Cache-Control, over HTTP/1.1 and HTTP/2.
    let q = "AAABAAABAAAAAAAAA3dlYgNzdmMIaW50ZXJuYWwAAAEAAQ";
    for v in ["--http1.1", "--http2"] {
        let (code, _, head) = curl(&["--cacert", &ca, v, &format!("{url}?dns={q}")]);
        assert_eq!(code, 200, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("content-type: application/dns-message"),
            "{head}"
        );
        assert!(head.contains("cache-control: max-age=5"), "{head}");
    }
    // NXDOMAIN: the SOA's negative TTL.
    let nx = "AAABAAABAAAAAAAABG5vcGUDc3ZjCGludGVybmFsAAABAAE";
    let (code, _, head) = curl(&["--cacert", &ca, &format!("{url}?dns={nx}")]);
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: max-age=5"),
        "{head}"
    );
    // Bad requests.
    let (code, _, _) = curl(&["--cacert", &ca, &format!("{url}?dns=!!not-base64!!")]);
    assert_eq!(code, 400);
    let (code, _, _) = curl(&["--cacert", &ca, &url]);
    assert_eq!(code, 400, "GET without dns");
    let (code, _, _) = curl(&[
        "--cacert",
        &ca,
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "hello",
        &url,
    ]);
    assert_eq!(code, 415);
    let big = e._dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 70_000]).unwrap();
    let (code, _, _) = curl(&[
        "--cacert",
        &ca,
        "-H",
        "content-type: application/dns-message",
        "--data-binary",
        &format!("@{}", big.display()),
        &url,
    ]);
    assert_eq!(code, 413);
    let (code, _, _) = curl(&[
        "--cacert",
        &ca,
        &format!("https://127.0.0.1:{port}/other?dns={q}"),
    ]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&["--cacert", &ca, "-X", "PUT", &url]);
    assert_eq!(code, 405);
    assert!(
        e.r.metric(
            r#"ruddr_dns_queries_total{qtype="A",rcode="NOERROR",proto="doh",path="registry"}"#
        ) >= 3.0
    );
}

#[test]
fn dnspython_over_tls_and_https() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "", None);
    let script = format!(
        r#"
import dns.message, dns.query, dns.rdatatype
ca = {ca:?}
q = dns.message.make_query("web.svc.internal", "A")
r = dns.query.tls(q, "127.0.0.1", port={dot}, server_hostname="localhost", verify=ca, timeout=5)
print("tls", sorted(a.address for a in r.answer[0]))
q = dns.message.make_query("api.svc.internal", "A")
r = dns.query.https(q, "https://127.0.0.1:{doh}/dns-query", verify=ca, timeout=5)
print("https", sorted(a.address for a in r.answer[0]))
r = dns.query.https(q, "https://127.0.0.1:{doh}/dns-query", verify=ca, timeout=5, post=False)
print("https-get", sorted(a.address for a in r.answer[0]))
q = dns.message.make_query("web.svc.internal", "A")
try:
    dns.query.tls(q, "127.0.0.1", port={dot}, server_hostname="other.example", verify=ca, timeout=5)
    print("wrong-name answered")
except Exception as e:
    print("wrong-name failed", type(e).__name__)
"#,
        ca = e.pki.path("ca.pem"),
        dot = e.dot,
        doh = e.doh
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("tls ['10.70.0.1']"), "{t}");
    assert!(t.contains("https ['10.70.0.2']"), "{t}");
    assert!(t.contains("https-get ['10.70.0.2']"), "{t}");
    assert!(t.contains("wrong-name failed"), "{t}");
}

/// A TLS client that completes the handshake and then stays silent.
fn idle_tls(port: u16, count: usize, ca: &str) -> std::process::Child {
    let script = format!(
        r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
held = []
for i in range({count}):
    s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
    try:
        held.append(ctx.wrap_socket(s, server_hostname="localhost"))
    except Exception as e:
        s.close()
print("opened", len(held), flush=True)
time.sleep(120)
"#
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn idle_and_slow_tls_connections_under_a_low_file_limit() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "tls_handshake_timeout = \"1s\"\n", Some(1024));
    let mut idle = idle_tls(e.dot, 1500, &e.pki.path("ca.pem"));
    let mut line = String::new();
    {
        let stdout = idle.stdout.as_mut().unwrap();
        let mut buf = [0u8; 64];
        let started = Instant::now();
        while !line.contains('\n') && started.elapsed() < Duration::from_secs(120) {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            line.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(line.starts_with("opened"), "{line}");
    // A new client is served: the longest-idle connections made room.
    let port = e.dot.to_string();
    let out = kdig(&[
        "@127.0.0.1",
        "-p",
        &port,
        &format!("+tls-ca={}", e.pki.path("ca.pem")),
        "+tls-hostname=localhost",
        "+short",
        "web.svc.internal",
        "A",
    ]);
    assert_eq!(text(&out).trim(), "10.70.0.1", "{}", text(&out));
    assert!(e.r.metric("ruddr_dns_tcp_evicted_total") >= 500.0);
    let _ = idle.kill();
    let _ = idle.wait();

    // A client that never sends its ClientHello is cut at the handshake timeout.
    // Timed from before the connect: the server's clock starts at its accept.
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", e.dot)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    // And one that stops halfway through its ClientHello too.
    let mut half = TcpStream::connect(("127.0.0.1", e.dot)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let _ = half.read(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.r.metric("ruddr_dns_tls_handshake_failures_total") >= 2.0);
}

#[test]
fn certificates_reload_on_sighup_and_bad_files_are_config_errors() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "", None);
    // A bad pair on reload keeps the old one.
    std::fs::write(e.pki.path("server.pem"), "not a certificate").unwrap();
    e.r.signal("HUP");
    e.r.wait_log("TLS certificate reload failed");
    let port = e.dot.to_string();
    let ca = format!("+tls-ca={}", e.pki.path("ca.pem"));
    let out = kdig(&[
        "@127.0.0.1",
        "-p",
        &port,
        &ca,
        "+tls-hostname=localhost",
        "+short",
        "web.svc.internal",
        "A",
    ]);
    assert_eq!(text(&out).trim(), "10.70.0.1", "{}", text(&out));
    // A new pair from another CA: new connections get it.
    let other = Pki::new();
    std::fs::copy(other.path("server.pem"), e.pki.path("server.pem")).unwrap();
    std::fs::copy(other.path("server.key"), e.pki.path("server.key")).unwrap();
    e.r.signal("HUP");
    e.r.wait_log("TLS certificate reloaded");
    let out = kdig(&[
        "@127.0.0.1",
        "-p",
        &port,
        &format!("+tls-ca={}", other.path("ca.pem")),
        "+tls-hostname=localhost",
        "+short",
        "web.svc.internal",
        "A",
    ]);
    assert_eq!(text(&out).trim(), "10.70.0.1", "{}", text(&out));

    // check-config names a missing file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[dns]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let out = Command::new(ruddr_bin())
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).contains("/nonexistent/cert.pem"),
        "{}",
        text(&out)
    );
}

#[test]
fn tls_sessions_resume_over_1_2_and_1_3() {
    let etcd = Etcd::start();
    register(&etcd);
    let e = start(&etcd, "", None);
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        let script = format!(
            "(sleep 1) | openssl s_client {version} -connect 127.0.0.1:{port} -servername localhost -alpn dot -CAfile {ca} -sess_out {s} >/dev/null 2>&1; \
             (sleep 1) | openssl s_client {version} -connect 127.0.0.1:{port} -servername localhost -alpn dot -CAfile {ca} -sess_in {s} 2>/dev/null",
            port = e.dot,
            ca = e.pki.path("ca.pem"),
            s = sess.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let t = text(&out);
        assert!(t.contains("Reused, TLSv1."), "{version}: {t}");
        assert!(t.contains("ALPN protocol: dot"), "{version}: {t}");
    }
}
