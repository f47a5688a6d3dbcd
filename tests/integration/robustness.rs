//! Bad input never crashes the server; bad usage gets exit code 64; signals stop it cleanly.

use std::process::Command;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

/// Malformed packets: each gets FORMERR (or no answer, for what is not a DNS query at all),
/// and the server keeps answering correctly.
#[test]
fn malformed_packets_do_not_crash() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/w1", r#"{"address":"10.8.0.1"}"#);
    let mut r = Ruddr::start(&etcd.endpoint(), &[]);
    r.wait_watching();
    let good = query_message("web.svc.internal.", RecordType::A, Some(1232))
        .to_vec()
        .unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x42]),
        ("short header", vec![0; 11]),
        (
            "header only, qdcount 1",
            vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "header, qdcount 0",
            vec![0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "qdcount 65535",
            vec![
                0x12, 0x34, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0,
            ],
        ),
        (
            "label past end",
            vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'],
        ),
        (
            "compression loop",
            vec![
                0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
            ],
        ),
        (
            "pointer forward",
            vec![
                0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0, 1, 0, 1,
            ],
        ),
        (
            "reserved label type",
            vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80, 0, 1, 0, 1],
        ),
        ("arcount lies", {
            let mut g = good.clone();
            g[11] = 9;
            g
        }),
        ("truncated good query", good[..good.len() - 3].to_vec()),
        ("two queries", {
            let mut g = good.clone();
            g[5] = 2;
            g
        }),
        ("response bit set", {
            let mut g = good.clone();
            g[2] |= 0x80;
            g
        }),
        ("opcode 15", {
            let mut g = good.clone();
            g[2] |= 0x78;
            g
        }),
        (
            "garbage",
            (0..512u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ];
    // Random mutations of a good query, reproducible.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for i in 0..200 {
        let mut g = good.clone();
        for _ in 0..3 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % g.len();
            g[at] = (seed >> 32) as u8;
        }
        cases.push((if i % 2 == 0 { "mutated" } else { "mutated " }, g));
    }

    for (what, bytes) in &cases {
        for t in [Transport::Udp, Transport::Tcp] {
            if bytes.is_empty() && t == Transport::Tcp {
                continue;
            }
            if let Some(resp) = exchange_raw(r.addr(), bytes, t) {
                if let Ok(m) = hickory_proto::op::Message::from_vec(&resp) {
                    if *what == "header only, qdcount 1"
                        || *what == "header, qdcount 0"
                        || *what == "two queries"
                    {
                        assert_eq!(rcode(&m), ResponseCode::FormErr, "{what} over {t:?}");
                    }
                    if *what == "opcode 15" {
                        assert_eq!(rcode(&m), ResponseCode::NotImp);
                    }
                }
            } else {
                assert!(
                    !matches!(*what, "two queries" | "header, qdcount 0"),
                    "{what} over {t:?}: a parseable header deserves an answer"
                );
            }
        }
        let m = exchange(
            r.addr(),
            &query_message("web.svc.internal.", RecordType::A, Some(1232)),
            Transport::Udp,
        );
        assert_eq!(
            answer_strings(&m),
            ["10.8.0.1"],
            "still serving after {what}"
        );
    }
    assert!(r.is_alive());
    assert!(!r.log_text().contains("panicked"));
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    let etcd = Etcd::start();
    for sig in ["TERM", "INT"] {
        let mut r = Ruddr::start(&etcd.endpoint(), &[]);
        r.wait_watching();
        r.signal(sig);
        assert_eq!(
            r.wait_exit(Duration::from_secs(10)),
            Some(0),
            "exit code after SIG{sig}"
        );
        let log = r.log_text();
        assert!(
            log.contains(&format!("signal=\"SIG{sig}\""))
                || log.contains(&format!("signal=SIG{sig}")),
            "{log}"
        );
        assert!(log.contains("stopped"));
    }
}

#[test]
fn ruddr_serves_while_etcd_never_came_up() {
    // Unreachable etcd at start: the server still binds and answers, but with SERVFAIL for
    // registry names: it cannot know they do not exist (no cacheable NXDOMAIN).
    let r = Ruddr::start(&format!("http://{}:2379", own_loopback()), &[]);
    r.wait_log("etcd unreachable");
    let m = query(r.addr(), "web.svc.internal.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::ServFail);
}

fn ruddr(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ruddr_bin()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_help_and_usage_errors() {
    let (code, out, _) = ruddr(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("serve") && out.contains("check-config"),
        "{out}"
    );
    let (code, out, _) = ruddr(&["serve", "--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--config",
        "--listen",
        "--etcd-endpoints",
        "--prefix",
        "--zone",
        "--ttl",
        "--etcd-ca",
    ] {
        assert!(out.contains(flag), "serve --help lacks {flag}");
    }
    let (code, _, err) = ruddr(&["serve", "--no-such-flag"]);
    assert_eq!(code, Some(64), "{err}");
    let (code, _, err) = ruddr(&["serve", "--listen", "not-an-address"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--listen"), "{err}");
    let (code, _, err) = ruddr(&["serve", "--prefix", "noslash"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("etcd.prefix"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dns]\nzone = \"svc.internal.\"\ntypo_key = 1\n").unwrap();
    let (code, _, err) = ruddr(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("typo_key") && err.contains("bad.toml"),
        "{err}"
    );
    let (code, _, err) = ruddr(&["serve", "--config", "/nonexistent/ruddr.toml"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("/nonexistent/ruddr.toml"), "{err}");

    // The shipped config is accepted, and flags show up in the effective settings.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ruddr.toml");
    let (code, out, err) = ruddr(&[
        "check-config",
        "--config",
        shipped,
        "--zone",
        "Example.Test",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("zone = \"example.test.\""), "{out}");

    // A port already in use is a runtime failure (1), not a usage error.
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, _, err) = ruddr(&[
        "serve",
        "--listen",
        &addr,
        "--etcd-endpoints",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&addr), "{err}");
}
