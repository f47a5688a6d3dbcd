//! Restarts: a restart with a snapshot resumes the etcd watch after the snapshot's revisions
//! instead of listing the registry again, and lists when etcd no longer has that history;
//! restarts under dnsperf load lose no query, with systemd socket activation (emulated: this
//! test holds the sockets and starts each ruddr with `LISTEN_FDS`, as systemd does) and with
//! the hand-over from the running process to the next.

use std::collections::BTreeSet;
use std::net::SocketAddr;
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
            && p.positions.iter().all(|(_, _, rev)| *rev >= revision - 1)
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
    // (The go-micro source's events come on its own watch.)
    wait_answers(
        &r,
        "orders.svc.internal.",
        RecordType::A,
        &["10.200.0.1", "10.200.0.3"],
        Duration::from_secs(10),
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

/// Services the restart tests query: `svc<i>.svc.internal` with three instances each.
const SERVICES: usize = 50;

fn load_services(etcd: &Etcd) {
    let kvs: Vec<(String, String)> = (0..SERVICES * 3)
        .map(|i| {
            (
                format!("/ruddr/services/svc{}/i{i}", i % SERVICES),
                format!(r#"{{"address":"10.9.{}.{}","port":80}}"#, i / 256, i % 256),
            )
        })
        .collect();
    etcd.put_many(&kvs);
}

/// dnsperf at `qps` for `seconds` against `port` (A and SRV of every service), in the
/// background; its report when joined.
fn dnsperf(port: u16, qps: u32, seconds: u32) -> std::thread::JoinHandle<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries");
    let mut text = String::new();
    for i in 0..SERVICES {
        text.push_str(&format!("svc{i}.svc.internal A\nsvc{i}.svc.internal SRV\n"));
    }
    std::fs::write(&file, text).unwrap();
    std::thread::spawn(move || {
        let out = std::process::Command::new("dnsperf")
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
            .arg(&file)
            .args([
                "-Q",
                &qps.to_string(),
                "-l",
                &seconds.to_string(),
                "-c",
                "4",
                "-t",
                "5",
            ])
            .output()
            .expect("dnsperf");
        drop(dir);
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// The number after `label` in dnsperf's report (`Queries lost:  0 (0.00%)`).
fn report_number(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in dnsperf's report:\n{report}"))
}

/// Checks a dnsperf report: every query answered, and every answer NOERROR.
fn assert_nothing_lost(report: &str, qps: u32, seconds: u32) {
    let sent = report_number(report, "Queries sent:");
    let completed = report_number(report, "Queries completed:");
    let lost = report_number(report, "Queries lost:");
    eprintln!("{report}");
    assert!(
        // The load really ran (a loaded machine may fall short of the rate).
        sent as f64 >= 0.5 * f64::from(qps * seconds),
        "dnsperf sent only {sent}"
    );
    assert_eq!(lost, 0, "{report}");
    assert_eq!(completed, sent, "{report}");
    let codes = report
        .lines()
        .find(|l| l.contains("Response codes:"))
        .unwrap_or_default();
    assert!(
        codes.contains("NOERROR") && !codes.contains("SERVFAIL") && codes.matches('%').count() == 1,
        "{report}"
    );
}

/// A TCP client that keeps one connection open and asks one query at a time (20 ms apart),
/// as a stub resolver with a persistent connection does: before each query it checks that
/// the server has not closed the connection (then it connects again). Every query it sends
/// must be answered on the connection it was sent on. Returns (answered, reconnects).
fn tcp_client(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let query = {
            let m = query_message("svc1.svc.internal.", RecordType::A, None);
            m.to_vec().unwrap()
        };
        let (mut answered, mut reconnects) = (0u64, 0u64);
        let mut conn: Option<std::net::TcpStream> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Closed by the server since the last answer? (EOF waiting to be read.)
            if let Some(c) = &conn {
                c.set_nonblocking(true).unwrap();
                let mut b = [0u8; 1];
                let closed = match c.peek(&mut b) {
                    Ok(0) => true,
                    Ok(_) => panic!("data nobody asked for on the TCP connection"),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                    Err(_) => true,
                };
                c.set_nonblocking(false).unwrap();
                if closed {
                    conn = None;
                }
            }
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    reconnects += 1;
                    let c = std::net::TcpStream::connect(addr).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    conn.insert(c)
                }
            };
            let mut frame = (query.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(&query);
            c.write_all(&frame).expect("send on an open connection");
            let mut len = [0u8; 2];
            c.read_exact(&mut len)
                .expect("the query sent on this connection answered before it closed");
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut body).expect("a whole answer");
            let m = hickory_proto::op::Message::from_vec(&body).unwrap();
            assert_eq!(rcode(&m), hickory_proto::op::ResponseCode::NoError);
            answered += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (answered, reconnects)
    })
}

/// Ends the load of a restart test: dnsperf lost nothing and every answer was NOERROR, and the
/// TCP client (every query answered on its connection) was moved to a new connection by the
/// restarts.
fn finish_load(
    perf: std::thread::JoinHandle<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: std::thread::JoinHandle<(u64, u64)>,
) {
    let report = perf.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, reconnects) = client.join().unwrap();
    eprintln!("tcp client: {answered} answered, {reconnects} connections");
    assert!(
        reconnects >= 2,
        "the restarts closed the TCP connection between queries"
    );
    assert_nothing_lost(&report, qps(), SECONDS);
}

/// Binds UDP and TCP on a free loopback port as systemd does for a `.socket` unit: the UDP
/// receive buffer raised past net.core.rmem_max (SO_RCVBUFFORCE, as `ReceiveBuffer=`) so
/// queries queue while the service restarts.
fn activation_sockets() -> (std::net::UdpSocket, std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    loop {
        let port = free_port();
        let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) else {
            continue;
        };
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let size: libc::c_int = 64 << 20;
        // SAFETY: setsockopt with a pointer to a live c_int of the given size.
        let forced = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(forced, 0, "SO_RCVBUFFORCE (the tests run as root)");
        return (udp, tcp);
    }
}

/// Starts ruddr as systemd starts a socket-activated service: the sockets as descriptors 3
/// and 4, `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` set to the new process's own id
/// (a shell sets it to `$$` and then execs ruddr, keeping the id).
fn start_activated(
    udp: &std::net::UdpSocket,
    tcp: &std::net::TcpListener,
    args: &[String],
) -> Proc {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (u, t) = (udp.as_raw_fd(), tcp.as_raw_fd());
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=dns-udp:dns-tcp exec "$0" "$@""#)
        .arg(ruddr_bin())
        .args(args);
    // SAFETY: dup2 is async-signal-safe; the descriptors are open in the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(u, 3) < 0 || libc::dup2(t, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::spawn("ruddr", command)
}

fn serve_args(
    etcd: &Etcd,
    port: u16,
    admin: u16,
    snap: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--snapshot-file",
        snap.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `/ready` on `admin` says connected.
fn wait_ready(admin: u16) {
    eventually(Duration::from_secs(20), "/ready to say connected", || {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{admin}/ready"),
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("\"connected\":true")
            .then_some(())
    });
}

/// The load the restart tests hold: 5,000 queries/s by default (the test binary's ruddr is a
/// debug build, sharing two cores with other tests); `RUDDR_TEST_QPS=20000` with
/// `cargo test --release` for the figure in the README.
fn qps() -> u32 {
    std::env::var("RUDDR_TEST_QPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

const SECONDS: u32 = 12;

/// What both restart tests start from: etcd with the services loaded, a directory, and the
/// path of the snapshot file in it.
fn restart_setup() -> (Etcd, tempfile::TempDir, std::path::PathBuf) {
    require("dnsperf", "dnsperf");
    require("curl", "curl");
    let etcd = Etcd::start();
    load_services(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("mirror.snapshot");
    (etcd, dir, snap)
}

#[test]
fn socket_activated_restarts_lose_no_query() {
    let (etcd, _dir, snap) = restart_setup(); // the directory lives as long as the test
    let (udp, tcp) = activation_sockets();
    let port = udp.local_addr().unwrap().port();
    let admin = free_port();
    let args = serve_args(&etcd, port, admin, &snap, &[]);
    let mut r = start_activated(&udp, &tcp, &args);
    wait_ready(admin);
    assert!(
        r.log_text().contains("socket from systemd"),
        "{}",
        r.log_text()
    );
    eventually(Duration::from_secs(20), "a snapshot", || {
        snap.exists().then_some(())
    });

    let perf = dnsperf(port, qps(), SECONDS);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tcp_client(SocketAddr::from(([127, 0, 0, 1], port)), stop.clone());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        // As systemd restarts the service: SIGTERM, wait for the exit, start the next one on
        // the same sockets.
        r.signal("TERM");
        assert_eq!(
            r.wait_exit(Duration::from_secs(15)),
            Some(0),
            "{}",
            r.log_text()
        );
        r = start_activated(&udp, &tcp, &args);
        wait_ready(admin);
    }
    finish_load(perf, stop, client);
}

#[test]
fn handed_over_restarts_lose_no_query() {
    let (etcd, dir, snap) = restart_setup();
    let handover = dir.path().join("handover.sock");
    let port = free_port();
    let admin = free_port();
    let args = serve_args(
        &etcd,
        port,
        admin,
        &snap,
        &["--handover-socket", handover.to_str().unwrap()],
    );
    let start = || {
        let mut command = std::process::Command::new(ruddr_bin());
        command.args(&args);
        Proc::spawn("ruddr", command)
    };
    let mut r = start();
    wait_ready(admin);
    r.wait_log("hand-over socket listening");

    let perf = dnsperf(port, qps(), SECONDS);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tcp_client(SocketAddr::from(([127, 0, 0, 1], port)), stop.clone());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        // The next one starts beside it, takes its sockets, answers, and the old one goes.
        let mut next = start();
        assert_eq!(
            r.wait_exit(Duration::from_secs(20)),
            Some(0),
            "{}",
            r.log_text()
        );
        assert!(
            r.log_text().contains("handed over; draining"),
            "{}",
            r.log_text()
        );
        next.wait_log("hand-over socket listening");
        assert!(next.log_text().contains("socket from the running ruddr"));
        assert!(next.is_alive());
        r = next;
    }
    finish_load(perf, stop, client);

    // A successor that cannot get data leaves the running one in charge.
    let mut broken = args.clone();
    let at = broken.iter().position(|a| a == "--etcd-endpoints").unwrap();
    broken[at + 1] = "http://127.0.0.1:9".into();
    let at = broken.iter().position(|a| a == "--snapshot-file").unwrap();
    broken[at + 1] = dir.path().join("none").to_str().unwrap().into();
    broken.extend(["--config".into(), {
        let cfg = dir.path().join("short.toml");
        std::fs::write(&cfg, "[restart]\nwait_for_data = \"1s\"\n").unwrap();
        cfg.to_str().unwrap().to_string()
    }]);
    let mut command = std::process::Command::new(ruddr_bin());
    command.args(&broken);
    let mut failed = Proc::spawn("ruddr-broken", command);
    assert_eq!(
        failed.wait_exit(Duration::from_secs(20)),
        Some(1),
        "{}",
        failed.log_text()
    );
    assert!(failed
        .log_text()
        .contains("the running ruddr keeps answering"));
    assert!(r.is_alive());
    let m = query(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "svc1.svc.internal.",
        RecordType::A,
    );
    assert_eq!(answer_strings(&m).len(), 3);
    // And the next hand-over still works.
    let next = start();
    assert_eq!(
        r.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        r.log_text()
    );
    next.wait_log("hand-over socket listening");
}

/// A position counts only for the settings the data was read with: a restart with another
/// native prefix lists it (and serves none of the old prefix's instances).
#[test]
fn a_restart_with_another_prefix_lists_instead_of_resuming() {
    let etcd = Etcd::start();
    etcd.put("/ruddr/services/web/a", r#"{"address":"10.31.0.1"}"#);
    etcd.put("/other/services/web/b", r#"{"address":"10.31.0.2"}"#);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("mirror.snapshot");
    let snap_arg = snap.to_str().unwrap().to_string();
    let mut r = Ruddr::start(&etcd.endpoint(), &["--snapshot-file", &snap_arg]);
    r.wait_watching();
    eventually(
        Duration::from_secs(10),
        "a snapshot with a position",
        || {
            let p = ruddr::persist::load(&snap, u64::MAX).ok()??;
            (!p.positions.is_empty()).then_some(())
        },
    );
    r.signal("TERM");
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(0));
    let r = Ruddr::start(
        &etcd.endpoint(),
        &["--snapshot-file", &snap_arg, "--prefix", "/other/services/"],
    );
    r.wait_watching();
    r.wait_log("registry current");
    assert_eq!(r.metric("ruddr_registry_resumes_total{how=\"list\"}"), 1.0);
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.31.0.2"],
        Duration::from_secs(10),
    );
}
