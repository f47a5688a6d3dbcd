//! A packet flood against the real binary: at least a million random and mutated packets over
//! UDP and TCP (`RUDDR_FUZZ_PACKETS` to change the count), after which ruddr is still running,
//! healthy, and answers correctly over both transports. The in-process fuzz targets (src/fuzz)
//! check each response; this checks that the server as a whole survives the traffic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

/// xorshift64*: fast and reproducible from its seed, which is printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Real queries: names in the zone and outside, every answered type, with and without EDNS.
fn corpus() -> Vec<Vec<u8>> {
    let names = [
        "web.svc.internal.",
        "WeB.sVc.InTeRnAl.",
        "_http._tcp.web.svc.internal.",
        "w1.web.svc.internal.",
        "v2._tag.web.svc.internal.",
        "db.svc.internal.",
        "svc.internal.",
        "nope.svc.internal.",
        "1.0.8.10.in-addr.arpa.",
        "example.com.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::AXFR,
        RecordType::SOA,
        RecordType::NS,
    ];
    let mut out = Vec::new();
    for name in names {
        for qtype in types {
            for edns in [None, Some(512), Some(1232), Some(4096)] {
                out.push(query_message(name, qtype, edns).to_vec().unwrap());
            }
        }
    }
    out
}

/// A packet: a corpus query as is, mutated (bytes, counts, label lengths, compression
/// pointers), or random bytes.
fn packet(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let roll = rng.below(10);
    if roll == 0 {
        return corpus[rng.below(corpus.len())].clone();
    }
    if roll >= 8 {
        let len = rng.below(300);
        let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if roll == 9 && p.len() >= 12 {
            p[2] &= 0x7f; // a query, so it gets past the header check
        }
        return p;
    }
    let mut p = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = p.len();
        let r = rng.next();
        let at = if len == 0 { 0 } else { (r >> 8) as usize % len };
        match r % 9 {
            0 if len > 0 => p[at] ^= 1 << ((r >> 40) % 8),
            1 if len > 0 => p[at] = (r >> 40) as u8,
            2 => {
                let n = 1 + (r >> 40) as usize % 8;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                p.splice(at..at, bytes);
            }
            3 if len > 0 => {
                p.drain(at..(at + 1 + (r >> 40) as usize % 16).min(len));
            }
            4 => p.truncate(at),
            5 if len > 0 => {
                let chunk = p[at..(at + 1 + (r >> 40) as usize % 32).min(len)].to_vec();
                let to = (r >> 48) as usize % (len + 1);
                p.splice(to..to, chunk);
            }
            // A section count.
            6 if len >= 12 => {
                let field = 4 + 2 * ((r >> 40) % 4) as usize;
                p[field..field + 2].copy_from_slice(&((r >> 44) as u16).to_be_bytes());
            }
            // The first label's length.
            7 if len > 12 => p[12] = [0, 1, 63, 64, 0x7f, 0xc0, 0xff][(r >> 40) as usize % 7],
            // A compression pointer: to itself, to the question, or anywhere.
            8 if len > 13 => {
                let at = 12 + at % (len - 13);
                let to = match (r >> 40) % 3 {
                    0 => at as u16,
                    1 => 12,
                    _ => (r >> 48) as u16 & 0x3fff,
                };
                p[at] = 0xc0 | (to >> 8) as u8;
                p[at + 1] = to as u8;
            }
            _ => {}
        }
    }
    p
}

#[derive(Default)]
struct Counts {
    udp_sent: AtomicU64,
    udp_replies: AtomicU64,
    tcp_sent: AtomicU64,
    tcp_replies: AtomicU64,
    tcp_connections: AtomicU64,
}

/// Sends `n` packets from one socket in bursts, reading what comes back between bursts so
/// the burst size follows what ruddr keeps up with (a burst far beyond it only fills the
/// socket buffers and is dropped by the kernel).
fn udp_flood(addr: SocketAddr, seed: u64, n: u64, corpus: &[Vec<u8>], counts: &Counts) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 65_535];
    let mut sent = 0;
    while sent < n {
        let burst = 64.min(n - sent);
        for _ in 0..burst {
            // Sends to loopback fail only when the socket buffer is full: count what went.
            if sock.send_to(&packet(&mut rng, corpus), addr).is_ok() {
                sent += 1;
            }
        }
        let mut got = 0;
        while sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        counts.udp_replies.fetch_add(got, Relaxed);
    }
    counts.udp_sent.fetch_add(sent, Relaxed);
}

/// Sends `n` length-prefixed frames over TCP connections, some with lengths that do not
/// match what follows, reconnecting whenever ruddr closes one (or the frame was cut on
/// purpose). A reader thread per connection takes the responses.
fn tcp_flood(addr: SocketAddr, seed: u64, n: u64, corpus: &[Vec<u8>], counts: &Arc<Counts>) {
    let mut rng = Rng(seed);
    let mut sent = 0;
    while sent < n {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        counts.tcp_connections.fetch_add(1, Relaxed);
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = stream.try_clone().unwrap();
        let c = counts.clone();
        let read = std::thread::spawn(move || {
            let mut len = [0u8; 2];
            let mut buf = vec![0u8; 65_535];
            while reader.read_exact(&mut len).is_ok() {
                let n = usize::from(u16::from_be_bytes(len));
                if reader.read_exact(&mut buf[..n]).is_err() {
                    break;
                }
                c.tcp_replies.fetch_add(1, Relaxed);
            }
        });
        // Up to a few thousand frames per connection, then a new one.
        let frames = (1 + rng.below(4000) as u64).min(n - sent);
        let mut out = Vec::with_capacity(64 * 1024);
        for i in 0..frames {
            let p = packet(&mut rng, corpus);
            match rng.below(2000) {
                // A length that does not match: the stream is out of step from here on
                // (rare, so most frames are read as frames).
                0 => {
                    out.extend_from_slice(&(rng.next() as u16).to_be_bytes());
                    out.extend_from_slice(&p);
                }
                // An empty frame.
                1..=20 => out.extend_from_slice(&[0, 0]),
                _ => {
                    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
                    out.extend_from_slice(&p);
                }
            }
            sent += 1;
            if out.len() > 32 * 1024 || i + 1 == frames {
                if stream.write_all(&out).is_err() {
                    break;
                }
                out.clear();
            }
        }
        // Sometimes leave half a frame behind, then close our side; ruddr answers what it has.
        if rng.below(4) == 0 {
            let _ = stream.write_all(&[0x01, 0x00, 0x12]);
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = read.join();
    }
    counts.tcp_sent.fetch_add(sent, Relaxed);
}

#[test]
fn a_million_hostile_packets_leave_ruddr_answering() {
    let total: u64 = std::env::var("RUDDR_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.8.0.1","port":8080,"tags":["v2"]}"#,
    );
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"fd00::8","port":8080}"#,
    );
    etcd.put(
        "/ruddr/services/db/d1",
        r#"{"address":"10.8.0.2","port":5432}"#,
    );
    // Per-query debug lines would make the flood a test of the log file.
    let mut r = Ruddr::start_env(
        &etcd.endpoint(),
        &[],
        &[("RUST_LOG", "info,hickory_server=warn")],
    );
    wait_answers(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.8.0.1"],
        Duration::from_secs(20),
    );

    let corpus = Arc::new(corpus());
    let counts = Arc::new(Counts::default());
    let seed = std::env::var("RUDDR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    eprintln!("packet flood: {total} packets, seed {seed} (RUDDR_FUZZ_SEED replays it)");
    // A tenth over TCP, the rest over UDP, from several clients at once.
    let (udp_clients, tcp_clients) = (3u64, 2u64);
    let tcp_total = total / 10;
    let udp_total = total - tcp_total;
    let started = Instant::now();
    let mut threads = Vec::new();
    for i in 0..udp_clients + tcp_clients {
        let (corpus, counts, addr) = (corpus.clone(), counts.clone(), r.addr());
        let seed = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        threads.push(std::thread::spawn(move || {
            if i < udp_clients {
                let n = udp_total / udp_clients + u64::from(i < udp_total % udp_clients);
                udp_flood(addr, seed, n, &corpus, &counts);
            } else {
                let i = i - udp_clients;
                let n = tcp_total / tcp_clients + u64::from(i < tcp_total % tcp_clients);
                tcp_flood(addr, seed, n, &corpus, &counts);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    let (udp, tcp) = (counts.udp_sent.load(Relaxed), counts.tcp_sent.load(Relaxed));
    eprintln!(
        "packet flood: sent {} packets in {elapsed:.1?} ({:.0}/s): udp {udp} ({} responses), \
         tcp {tcp} frames on {} connections ({} responses)",
        udp + tcp,
        (udp + tcp) as f64 / elapsed.as_secs_f64(),
        counts.udp_replies.load(Relaxed),
        counts.tcp_connections.load(Relaxed),
        counts.tcp_replies.load(Relaxed),
    );
    assert!(udp + tcp >= total, "sent {} of {total}", udp + tcp);

    // Still up, healthy, and right.
    assert!(r.is_alive(), "ruddr exited during the flood");
    let (code, _) = r.http_get("/health");
    assert_eq!(code, 200, "/health after the flood");
    for t in [Transport::Udp, Transport::Tcp] {
        let m = exchange(
            r.addr(),
            &query_message("web.svc.internal.", RecordType::A, Some(1232)),
            t,
        );
        assert_eq!(answer_strings(&m), ["10.8.0.1"], "A over {t:?}");
        let m = exchange(
            r.addr(),
            &query_message("web.svc.internal.", RecordType::SRV, None),
            t,
        );
        assert_eq!(
            answer_strings(&m),
            [
                "0 1 8080 w1.web.svc.internal.",
                "0 1 8080 w2.web.svc.internal."
            ],
            "SRV over {t:?}"
        );
        let m = exchange(
            r.addr(),
            &query_message("nope.svc.internal.", RecordType::A, None),
            t,
        );
        assert_eq!(rcode(&m), ResponseCode::NXDomain, "NXDOMAIN over {t:?}");
    }
    // The registry is still followed: a change made now is served.
    etcd.put("/ruddr/services/db/d2", r#"{"address":"10.8.0.3"}"#);
    wait_answers(
        &r,
        "db.svc.internal.",
        RecordType::A,
        &["10.8.0.2", "10.8.0.3"],
        Duration::from_secs(10),
    );
    assert_eq!(
        dig_short(r.port, "web.svc.internal.", "AAAA"),
        ["fd00::8"],
        "dig after the flood"
    );
    assert!(r.is_alive());
    assert!(!r.log_text().contains("panicked"));
    let (_, metrics) = r.http_get("/metrics");
    let answered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ruddr_dns_queries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "packet flood: ruddr counted {answered} answered queries (FORMERR replies to undecodable \
         ones are not counted there) and dropped {} packets that were not queries",
        r.metric("ruddr_dns_dropped_total")
    );
}
