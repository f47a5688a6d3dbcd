//! Live reload: each setting that SIGHUP can change, changed one at a time while dnsperf runs,
//! takes effect with no failed answer; a broken file keeps the running configuration and
//! says why; a setting that needs a restart is named.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

/// The config file the test rewrites: the base plus `extra` sections.
fn write_config(path: &std::path::Path, zones: &std::path::Path, upstream: u16, extra: &str) {
    write_config_forward(path, zones, upstream, extra, "");
}

/// [`write_config`] with more `[forward]` settings.
fn write_config_forward(
    path: &std::path::Path,
    zones: &std::path::Path,
    upstream: u16,
    extra: &str,
    forward: &str,
) {
    std::fs::write(
        path,
        format!(
            "zones_dir = {:?}\n{extra}\n[forward]\nupstreams = [\"127.0.0.1:{upstream}\"]\nallow_recursion = [\"127.0.0.0/8\"]\n{forward}",
            zones.to_str().unwrap()
        ),
    )
    .unwrap();
}

/// SIGHUP, then wait until ruddr counts one more reload with `result`.
fn reload(r: &Ruddr, result: &str) {
    let sample = format!("ruddr_config_reloads_total{{result=\"{result}\"}}");
    let before = r.metric(&sample);
    r.signal("HUP");
    r.wait_metric(&sample, |v| v > before);
}

fn ttl_of(r: &Ruddr, name: &str) -> u32 {
    let m = query(r.addr(), name, RecordType::A);
    m.answers.first().expect("an answer").ttl
}

#[test]
fn sighup_changes_each_live_setting_under_load() {
    require("dnsperf", "dnsperf");
    let etcd = Etcd::start();
    for i in 0..20 {
        etcd.put(
            &format!("/ruddr/services/svc{}/i{i}", i % 10),
            &format!(r#"{{"address":"10.9.0.{i}","port":80}}"#),
        );
    }
    etcd.put(
        "/ruddr/services/loc/a",
        r#"{"address":"10.7.0.1","locality":"eu-1a"}"#,
    );
    etcd.put(
        "/ruddr/services/loc/b",
        r#"{"address":"10.7.0.2","locality":"eu-1b"}"#,
    );
    etcd.put(
        "/microservices/helloworld/k1",
        r#"{"id":"k1","name":"helloworld","version":"v1","metadata":null,"endpoints":["grpc://10.6.0.1:9000"]}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (up1_dir, up2_dir) = (dir.path().join("up1"), dir.path().join("up2"));
    let up1 = upstream_at(&up1_dir, "192.0.2.10");
    let up2 = upstream_at(&up2_dir, "192.0.2.99");
    let forwarded = |r: &Ruddr| {
        answer_strings(&udp_query_from(
            "127.0.0.1:0",
            r.addr(),
            "www.upstream.test.",
            RecordType::A,
        ))
    };
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let cfg = dir.path().join("ruddr.toml");
    let mut extra = String::from("[dns]\nttl = 5\n");
    write_config(&cfg, &zones, up1.port, &extra);
    let r = Ruddr::start(&etcd.endpoint(), &["--config", cfg.to_str().unwrap()]);
    r.wait_watching();
    assert_eq!(ttl_of(&r, "svc1.svc.internal."), 5);
    assert_eq!(forwarded(&r), ["192.0.2.10"]);

    // Load on registry names for the whole test: nothing may fail across the reloads.
    let queries = dir.path().join("queries");
    let names: String = (0..10)
        .map(|i| format!("svc{i}.svc.internal A\nsvc{i}.svc.internal SRV\n"))
        .collect();
    std::fs::write(&queries, names).unwrap();
    let port = r.port;
    let perf = std::thread::spawn(move || {
        let out = std::process::Command::new("dnsperf")
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
            .arg(&queries)
            .args(["-Q", "2000", "-l", "25", "-t", "5"])
            .output()
            .expect("dnsperf");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });

    // TTLs.
    extra = String::from("[dns]\nttl = 42\n");
    write_config(&cfg, &zones, up1.port, &extra);
    reload(&r, "ok");
    assert_eq!(ttl_of(&r, "svc1.svc.internal."), 42);

    // Forward upstreams (a new forwarder: its cache does not hold the old upstream's answer).
    write_config(&cfg, &zones, up2.port, &extra);
    reload(&r, "ok");
    assert_eq!(forwarded(&r), ["192.0.2.99"]);

    // Forward limits: an upstream that never answers and one query in flight at most; of six
    // at once, five get SERVFAIL at once.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    write_config_forward(
        &cfg,
        &zones,
        silent_port,
        &extra,
        "max_in_flight = 1\ntimeout = \"5s\"\n",
    );
    reload(&r, "ok");
    let limited = r.metric("ruddr_dns_forward_limited_total");
    let addr = r.addr();
    let asks: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                try_udp_query_from(
                    "127.0.0.1:0",
                    addr,
                    &format!("n{i}.upstream.test."),
                    RecordType::A,
                    // Well before the 5 s forward timeout: a refusal, not a timeout.
                    Duration::from_secs(3),
                )
                .map(|m| rcode(&m))
            })
        })
        .collect();
    let fast_servfails = asks
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .filter(|c| *c == ResponseCode::ServFail)
        .count();
    assert!(fast_servfails >= 5, "{fast_servfails} of 6 refused at once");
    assert!(r.metric("ruddr_dns_forward_limited_total") >= limited + 5.0);
    drop(silent);

    // The query log.
    extra.push_str("query_log = \"all\"\n");
    write_config(&cfg, &zones, up2.port, &extra);
    reload(&r, "ok");
    query(r.addr(), "svc2.svc.internal.", RecordType::TXT);
    eventually(Duration::from_secs(5), "a query log line", || {
        r.log_text()
            .lines()
            .any(|l| l.contains("ruddr::query") && l.contains("qtype=TXT"))
            .then_some(())
    });

    // Response rate limiting (dnsperf's 127.0.0.1 exempt): 127.0.0.2 is held to 1/s.
    extra.push_str(
        "[rate_limit]\nresponses_per_second = 1\nslip = 0\nipv4_prefix = 32\nexempt = [\"127.0.0.1/32\"]\n",
    );
    write_config(&cfg, &zones, up2.port, &extra);
    reload(&r, "ok");
    let answered = (0..20)
        .filter(|_| {
            try_udp_query_from(
                "127.0.0.2:0",
                r.addr(),
                "svc3.svc.internal.",
                RecordType::A,
                Duration::from_millis(300),
            )
            .is_some()
        })
        .count();
    // Bursts of twice the rate, then one a second (the dropped ones wait 300 ms each).
    assert!(answered <= 10, "{answered} of 20 answered at 1/s");
    assert!(r.metric("ruddr_dns_rate_limited_total{action=\"drop\"}") >= 10.0);

    // Locality: 127.0.0.3 in eu-1b gets only its own instance.
    let both = answers(&r, "loc.svc.internal.", RecordType::A);
    assert_eq!(both.len(), 2);
    extra.push_str(
        "[locality]\nmode = \"only\"\n[[locality.clients]]\nnetworks = [\"127.0.0.3/32\"]\nlocality = \"eu-1b\"\n",
    );
    write_config(&cfg, &zones, up2.port, &extra);
    reload(&r, "ok");
    assert_eq!(
        answer_strings(&udp_query_from(
            "127.0.0.3:0",
            r.addr(),
            "loc.svc.internal.",
            RecordType::A
        )),
        ["10.7.0.2"]
    );

    // Static zones: a new zone file.
    std::fs::write(
        zones.join("fresh.test.zone"),
        "$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\nwww IN A 192.0.2.77\n",
    )
    .unwrap();
    reload(&r, "ok");
    assert_eq!(
        answers(&r, "www.fresh.test.", RecordType::A),
        ["192.0.2.77"]
    );

    // Sources: Kratos added (listed), then taken out again (its names go).
    let kratos = "[[sources]]\nformat = \"kratos\"\nprefix = \"/microservices\"\n";
    let with_kratos = format!("{kratos}{extra}");
    write_config(&cfg, &zones, up2.port, &with_kratos);
    reload(&r, "ok");
    wait_answers(
        &r,
        "helloworld.svc.internal.",
        RecordType::A,
        &["10.6.0.1"],
        Duration::from_secs(10),
    );
    write_config(&cfg, &zones, up2.port, &extra);
    reload(&r, "ok");
    eventually(Duration::from_secs(10), "the source's names gone", || {
        (rcode(&query(r.addr(), "helloworld.svc.internal.", RecordType::A))
            == ResponseCode::NXDomain)
            .then_some(())
    });
    // The native source's data stayed (resumed, not listed again) and still follows etcd.
    assert_eq!(answers(&r, "svc1.svc.internal.", RecordType::A).len(), 2);
    etcd.put(
        "/ruddr/services/svc1/new",
        r#"{"address":"10.9.1.1","port":80}"#,
    );
    eventually(
        Duration::from_secs(10),
        "a put after the source change",
        || (answers(&r, "svc1.svc.internal.", RecordType::A).len() == 3).then_some(()),
    );

    // A broken file: the running configuration stays, and the log says why.
    std::fs::write(&cfg, "[dns]\nttl = \"soon\"\n").unwrap();
    reload(&r, "error");
    assert!(
        r.log_text().contains("configuration reload failed"),
        "{}",
        r.log_text()
    );
    assert_eq!(ttl_of(&r, "svc1.svc.internal."), 42);
    assert_eq!(
        answers(&r, "www.fresh.test.", RecordType::A),
        ["192.0.2.77"]
    );

    // A setting only a restart changes: named, and the rest applies.
    let restart_only = extra.replace("ttl = 42\n", "ttl = 43\nudp_sockets = 3\n");
    write_config(&cfg, &zones, up2.port, &restart_only);
    reload(&r, "ok");
    assert!(
        r.log_text()
            .lines()
            .any(|l| l.contains("only at a restart") && l.contains("dns.udp_sockets")),
        "{}",
        r.log_text()
    );
    assert_eq!(ttl_of(&r, "svc1.svc.internal."), 43);

    let report = perf.join().unwrap();
    eprintln!("{report}");
    let line = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::to_string))
            .unwrap_or_else(|| panic!("no {label} in {report}"))
    };
    assert!(
        line("Queries lost:").trim_start().starts_with("0 "),
        "{report}"
    );
    let codes = line("Response codes:");
    assert!(
        codes.contains("NOERROR") && codes.matches('%').count() == 1,
        "{report}"
    );
    drop(up1);
    drop(up2);
    let _: SocketAddr = r.addr();
}
