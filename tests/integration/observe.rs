//! Seeing what ruddr does: dnstap to `fstrm_capture` read back with `dnstap-read`, the query
//! log, the status page (its JSON API, and the page itself in headless Chromium), and the
//! dashboard and alert rules against what ruddr exports.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// `fstrm_capture` listening on `sock`, writing `out` when it stops.
fn capture(sock: &std::path::Path, out: &std::path::Path) -> Child {
    let _ = std::fs::remove_file(sock);
    let child = Command::new("fstrm_capture")
        .args(["-t", "protobuf:dnstap.Dnstap", "-u"])
        .arg(sock)
        .arg("-w")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fstrm_capture runs");
    eventually(Duration::from_secs(10), "fstrm_capture's socket", || {
        sock.exists().then_some(())
    });
    child
}

/// Stops `fstrm_capture` so that it writes its file, and reads the file with `dnstap-read`
/// (YAML, one document per message).
fn stop_and_read(mut child: Child, out: &std::path::Path) -> String {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let read = Command::new("dnstap-read")
        .arg("-y")
        .arg(out)
        .output()
        .expect("dnstap-read runs");
    assert!(
        read.status.success(),
        "dnstap-read: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    String::from_utf8_lossy(&read.stdout).into_owned()
}

/// The message types (`AUTH_QUERY`, ...) of the YAML documents that mention `name`.
fn types_for(yaml: &str, name: &str) -> Vec<String> {
    yaml.split("\n---")
        .filter(|doc| doc.contains(name))
        .filter_map(|doc| {
            doc.lines()
                .map(str::trim)
                .filter_map(|l| l.strip_prefix("type: "))
                .find(|t| t.contains('_'))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn dnstap_reaches_fstrm_capture_and_survives_the_collector() {
    require("fstrm_capture", "fstrm-bin");
    require("dnstap-read", "bind9-dnsutils");
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.60.0.1","port":8080}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&dir);
    let zones = dir.path().join("own-zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("static.test.zone"),
        "$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\nhost IN A 192.0.2.77\n",
    )
    .unwrap();
    let sock = dir.path().join("tap.sock");
    let first = dir.path().join("first.fstrm");
    let collector = capture(&sock, &first);
    let mut r = Ruddr::start_with_config(
        &etcd.endpoint(),
        &format!(
            "zones_dir = {zones:?}\n[forward]\nupstreams = [\"127.0.0.1:{}\"]\n[dnstap]\nsocket = {sock:?}\nidentity = \"tap-test\"\n",
            up.port
        ),
    );
    r.wait_metric("ruddr_dnstap_connected", |v| v == 1.0);
    assert_eq!(dig_short(r.port, "web.svc.internal", "A"), ["10.60.0.1"]);
    assert_eq!(dig_short(r.port, "host.static.test", "A"), ["192.0.2.77"]);
    assert_eq!(dig_short(r.port, "www.upstream.test", "A"), ["192.0.2.10"]);
    // A cache hit for the forwarded name, and a registry name over TCP.
    assert_eq!(dig_short(r.port, "www.upstream.test", "A"), ["192.0.2.10"]);
    let tcp = dig(r.port, &["web.svc.internal", "SRV", "+tcp", "+short"]);
    assert!(tcp.contains("8080"), "{tcp}");
    // Six exchanges of two messages, and the forwarder's own two.
    r.wait_metric("ruddr_dnstap_sent_total", |v| v >= 12.0);
    let yaml = stop_and_read(collector, &first);
    let web = types_for(&yaml, "web.svc.internal");
    assert_eq!(
        web.iter().filter(|t| *t == "AUTH_QUERY").count(),
        2,
        "{web:?}\n{yaml}"
    );
    assert_eq!(web.iter().filter(|t| *t == "AUTH_RESPONSE").count(), 2);
    assert!(yaml.contains("socket_protocol: TCP"), "{yaml}");
    assert_eq!(
        types_for(&yaml, "host.static.test"),
        ["AUTH_QUERY", "AUTH_RESPONSE"]
    );
    let fwd = types_for(&yaml, "www.upstream.test");
    for (kind, n) in [
        ("CLIENT_QUERY", 2),
        ("CLIENT_RESPONSE", 2),
        ("FORWARDER_QUERY", 1),
        ("FORWARDER_RESPONSE", 1),
    ] {
        assert_eq!(
            fwd.iter().filter(|t| *t == kind).count(),
            n,
            "{kind}: {fwd:?}\n{yaml}"
        );
    }
    assert!(yaml.contains("identity: tap-test"), "{yaml}");
    assert!(
        yaml.contains("192.0.2.77"),
        "the response message is in: {yaml}"
    );

    // The collector gone: answers go on, messages are dropped and counted.
    for i in 0..20 {
        assert_eq!(
            dig_short(r.port, "web.svc.internal", "A"),
            ["10.60.0.1"],
            "query {i} with the collector away"
        );
    }
    r.wait_metric(
        r#"ruddr_dnstap_dropped_total{reason="disconnected"}"#,
        |v| v >= 2.0,
    );
    assert_eq!(r.metric("ruddr_dnstap_connected"), 0.0);
    // Back: sending resumes by itself.
    let second = dir.path().join("second.fstrm");
    let collector = capture(&sock, &second);
    r.wait_metric("ruddr_dnstap_connected", |v| v == 1.0);
    assert_eq!(dig_short(r.port, "host.static.test", "A"), ["192.0.2.77"]);
    let sent = r.metric("ruddr_dnstap_sent_total");
    assert_eq!(dig_short(r.port, "web.svc.internal", "A"), ["10.60.0.1"]);
    r.wait_metric("ruddr_dnstap_sent_total", |v| v >= sent + 2.0);
    let yaml = stop_and_read(collector, &second);
    assert!(
        types_for(&yaml, "host.static.test").contains(&"AUTH_RESPONSE".to_string()),
        "{yaml}"
    );
    assert!(r.is_alive());
}

#[test]
fn dnstap_to_a_file() {
    require("dnstap-read", "bind9-dnsutils");
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/api/a1", r#"{"address":"10.61.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.dnstap");
    let mut r = Ruddr::start_with_config(
        &etcd.endpoint(),
        &format!("[dnstap]\nfile = {file:?}\nlog_queries = false\n"),
    );
    assert_eq!(dig_short(r.port, "api.svc.internal", "A"), ["10.61.0.1"]);
    r.wait_metric("ruddr_dnstap_sent_total", |v| v >= 1.0);
    r.signal("TERM");
    assert_eq!(r.wait_exit(Duration::from_secs(15)), Some(0));
    let read = Command::new("dnstap-read")
        .arg("-y")
        .arg(&file)
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "{yaml}");
    assert_eq!(
        types_for(&yaml, "api.svc.internal"),
        ["AUTH_RESPONSE"],
        "{yaml}"
    );
}

/// `ruddr serve` with JSON logs on fixed free ports (the harness reads ports from text logs),
/// with `toml` as its config; the process and its DNS port.
fn start_json(etcd: &Etcd, toml: &str, dir: &tempfile::TempDir) -> (Proc, u16) {
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(&cfg, toml).unwrap();
    let port = free_port();
    let admin = free_port();
    let (listen, admin_listen) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let endpoint = etcd.endpoint();
    let p = Proc::ruddr(
        "ruddr-json",
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
            "--etcd-endpoints",
            &endpoint,
            "--log-format",
            "json",
        ],
        &[],
    );
    eventually(Duration::from_secs(20), "the first sync", || {
        p.log_text().contains("registry listed").then_some(())
    });
    (p, port)
}

/// JSON log lines of target `ruddr::query`.
fn query_lines(r: &Proc) -> Vec<serde_json::Value> {
    r.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ruddr::query")
        .collect()
}

#[test]
fn the_query_log_has_one_line_per_query_with_its_fields() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.62.0.1","port":80}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (r, port) = start_json(&etcd, "[dns]\nquery_log = \"all\"\n", &dir);
    assert_eq!(dig_short(port, "web.svc.internal", "A"), ["10.62.0.1"]);
    let _ = dig(port, &["nope.svc.internal", "A", "+tcp"]);
    let lines = eventually(Duration::from_secs(5), "two query lines", || {
        let l = query_lines(&r);
        (l.len() >= 2).then_some(l)
    });
    let web = lines
        .iter()
        .find(|l| l["fields"]["name"] == "web.svc.internal.")
        .expect("a line for web");
    let f = &web["fields"];
    assert_eq!(f["qtype"], "A");
    assert_eq!(f["rcode"], "NOERROR");
    assert_eq!(f["answers"], 1);
    assert_eq!(f["transport"], "udp");
    assert_eq!(f["path"], "fast");
    assert_eq!(f["zone"], "registry");
    assert_eq!(f["stale"], false);
    assert_eq!(f["client"], "127.0.0.1");
    assert!(f["micros"].as_u64().is_some(), "{web}");
    let nx = lines
        .iter()
        .find(|l| l["fields"]["name"] == "nope.svc.internal.")
        .expect("a line for nope");
    assert_eq!(nx["fields"]["transport"], "tcp");
    assert_eq!(nx["fields"]["path"], "general");
    assert_eq!(nx["fields"]["answers"], 0);
    assert_eq!(nx["fields"]["rcode"], "NXDOMAIN");
}

#[test]
fn the_query_log_keeps_errors_only_and_samples() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.63.0.1"}"#);
    let dir = tempfile::tempdir().unwrap();
    let (r, port) = start_json(
        &etcd,
        "[dns]\nquery_log = \"errors\"\nquery_log_sample = 3\n",
        &dir,
    );
    for _ in 0..10 {
        assert_eq!(dig_short(port, "web.svc.internal", "A"), ["10.63.0.1"]);
    }
    // Outside the zones with no upstreams: REFUSED, an error.
    for _ in 0..30 {
        let out = dig(port, &["example.org", "A"]);
        assert!(out.contains("REFUSED"), "{out}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = query_lines(&r);
    assert!(
        lines.iter().all(|l| l["fields"]["rcode"] == "REFUSED"),
        "only errors: {lines:?}"
    );
    // One in three per answering thread: 10 of 30 with one thread, a few more with several.
    assert!(
        (7..=14).contains(&lines.len()),
        "sampled: {} lines",
        lines.len()
    );
}

#[test]
fn the_status_api_lists_services_instances_and_changes() {
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.64.0.1","port":8080,"ports":{"grpc":9090},"tags":["v1"],"locality":"zone-a"}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.64.0.2","port":8080,"health":"critical"}"#,
    );
    for i in 0..120 {
        etcd.put(
            &format!("/ruddr/services/svc-{i:03}/x"),
            r#"{"address":"10.64.1.1"}"#,
        );
    }
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let get = |path: &str| -> serde_json::Value {
        let (code, body) = r.http_get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let status = get("/v1/status");
    assert_eq!(status["freshness"]["state"], "current", "{status}");
    assert_eq!(status["freshness"]["watch_connected"], true);
    assert_eq!(status["totals"]["services"], 121);
    assert_eq!(status["totals"]["instances"], 122);
    assert_eq!(status["totals"]["critical"], 1);
    assert_eq!(status["sources"][0]["prefix"], "/ruddr/services/");

    let page = get("/v1/services?offset=100&limit=50");
    assert_eq!(page["total"], 121);
    assert_eq!(page["services"].as_array().unwrap().len(), 21);
    let found = get("/v1/services?q=WE");
    assert_eq!(found["total"], 1);
    assert_eq!(found["services"][0]["name"], "web");
    assert_eq!(found["services"][0]["passing"], 1);
    assert_eq!(found["services"][0]["critical"], 1);

    let web = get("/v1/services/web");
    let w1 = &web["instances"][0];
    assert_eq!(w1["id"], "w1");
    assert_eq!(w1["address"], "10.64.0.1");
    assert_eq!(w1["ports"]["grpc"], 9090);
    assert_eq!(w1["locality"], "zone-a");
    assert_eq!(w1["key"], "/ruddr/services/web/w1");
    assert_eq!(w1["tags"][0], "v1");
    assert_eq!(web["instances"][1]["health"], "critical");
    let (code, _) = r.http_get("/v1/services/nope");
    assert_eq!(code, 404);

    etcd.put("/ruddr/services/web/w3", r#"{"address":"10.64.0.3"}"#);
    etcd.delete("/ruddr/services/web/w2");
    let changes = eventually(Duration::from_secs(5), "the change log", || {
        let c = get("/v1/changes");
        (c["changes"][0]["kind"] == "delete").then_some(c)
    });
    let c = &changes["changes"];
    assert_eq!(c[0]["service"], "web");
    assert_eq!(c[0]["instance"], "w2");
    assert_eq!(c[1]["kind"], "put");
    assert_eq!(c[1]["instance"], "w3");
    assert!(c[0]["revision"].as_i64().unwrap() > c[1]["revision"].as_i64().unwrap());
    assert!(
        c.as_array().unwrap().iter().any(|e| e["kind"] == "relist"),
        "the first list is one entry: {changes}"
    );

    // The page and its files, with the policy that keeps scripts to this origin.
    let head = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{}/", r.admin_port))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (code, js) = r.http_get("/ui.js");
    assert_eq!(code, 200);
    assert!(
        !js.contains("innerHTML"),
        "the page builds its DOM from text"
    );
}

#[test]
fn admin_ui_off_serves_neither_page_nor_api() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(&cfg, "admin_ui = false\n").unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    r.wait_watching();
    assert_eq!(r.http_get("/").0, 404);
    assert_eq!(r.http_get("/v1/services").0, 404);
    assert_eq!(r.http_get("/ready").0, 200);
}

#[test]
fn the_status_page_in_headless_chromium() {
    require("chromium", "chromium");
    let has_playwright = Command::new("python3")
        .args(["-c", "import playwright"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_playwright,
        "Playwright for Python is missing (scripts/deps.sh installs it)"
    );
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/web-1",
        r#"{"address":"10.65.0.1","port":8080,"tags":["v1"]}"#,
    );
    etcd.put(
        "/ruddr/services/xss/x1",
        r#"{"address":"10.65.0.9","tags":["<script>window.__xss=1</script>","\"><img src=x onerror=window.__xss=1>"]}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        "[etcd]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\nconfirm_within = \"4s\"\n",
    )
    .unwrap();
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    r.wait_watching();
    let shots = std::env::var("RUDDR_UI_SCREENSHOTS")
        .unwrap_or_else(|_| dir.path().join("shots").display().to_string());
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/ui/check_page.py"
        ))
        .args(["--url", &format!("http://127.0.0.1:{}/", r.admin_port)])
        .args(["--etcdctl-endpoint", &etcd.endpoint()])
        .args(["--etcd-pid", &etcd.pid().to_string()])
        .args(["--service", "web", "--instance", "web-1"])
        .args([
            "--put-key",
            "/ruddr/services/web/web-2",
            "--put-value",
            r#"{"address":"10.65.0.2","port":8080}"#,
            "--new-instance",
            "web-2",
        ])
        .args(["--xss-service", "xss", "--screenshots", &shots])
        .args(["--stale-timeout", "40"])
        .output()
        .unwrap();
    // Whatever happened, etcd runs again (the script continues it in any case).
    etcd.signal("CONT");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "check_page.py failed:\n{text}");
    assert!(text.contains("ok:"), "{text}");
    etcd.kill();
}

#[test]
fn dashboard_and_alert_rules_name_only_exported_metrics() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.66.0.1"}"#);
    let r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let _ = dig_short(r.port, "web.svc.internal", "A");
    let dir = tempfile::tempdir().unwrap();
    let scrape = dir.path().join("metrics.txt");
    std::fs::write(&scrape, r.http_get("/metrics").1).unwrap();
    // Families with labels appear once a label set was used; those the test cannot make
    // happen here come from the registration list the metrics unit test checks.
    let families = dir.path().join("families.txt");
    let list = Command::new(ruddr_bin())
        .args(["metrics-families"])
        .output()
        .unwrap();
    assert!(list.status.success());
    std::fs::write(&families, &list.stdout).unwrap();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/check_dashboards.py"
        ))
        .arg(&scrape)
        .arg(&families)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
}

#[test]
fn alert_rules_pass_promtool() {
    require("promtool", "prometheus");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus");
    for args in [
        ["check", "rules", "ruddr-alerts.yml"],
        ["test", "rules", "ruddr-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
