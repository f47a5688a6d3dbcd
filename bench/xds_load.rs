//! Load for ruddr's xDS server: many ADS streams, each on its own HTTP/2 connection as real
//! gRPC clients open them, each subscribed to the assignments of a few services, while a
//! writer changes those services in etcd at a steady rate.
//!
//!     cargo build --release --example xds_load
//!     target/release/examples/xds_load --xds 127.0.0.1:18000 --etcd http://127.0.0.1:2379 \
//!         --streams 1000 --services 1000 --per-stream 10 --rate 100 --duration 30 [--pid N]
//!
//! `--setup` only registers `svc0..svc<N>` (one instance each) and exits. Otherwise: opens the
//! streams, prints "streams ready", then changes a random service's instance address `rate`
//! times a second for `duration` seconds, and reports the push latency (etcd put to a stream
//! receiving the assignment holding the new address), whether every stream ended with the last
//! state of each of its services, and ruddr's RSS per stream (`--pid`). `bench/xds_scale.py`
//! runs it beside dnsperf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use rand::{Rng, SeedableRng};

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

struct Args {
    xds: String,
    etcd: String,
    streams: usize,
    services: usize,
    per_stream: usize,
    rate: u32,
    duration: u64,
    pid: Option<u32>,
    setup: bool,
}

fn args() -> Args {
    let mut a = Args {
        xds: "127.0.0.1:18000".into(),
        etcd: "http://127.0.0.1:2379".into(),
        streams: 1000,
        services: 1000,
        per_stream: 10,
        rate: 100,
        duration: 30,
        pid: None,
        setup: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--xds" => a.xds = val(),
            "--etcd" => a.etcd = val(),
            "--streams" => a.streams = val().parse().unwrap(),
            "--services" => a.services = val().parse().unwrap(),
            "--per-stream" => a.per_stream = val().parse().unwrap(),
            "--rate" => a.rate = val().parse().unwrap(),
            "--duration" => a.duration = val().parse().unwrap(),
            "--pid" => a.pid = Some(val().parse().unwrap()),
            "--setup" => a.setup = true,
            other => panic!("unknown flag {other} (see the file's header)"),
        }
    }
    assert!(a.services > 0 && a.per_stream <= a.services && a.rate > 0);
    a
}

fn value(addr: &str) -> String {
    format!(r#"{{"address":"{addr}","port":8080}}"#)
}

fn address(seq: u32) -> String {
    format!(
        "10.{}.{}.{}",
        100 + (seq >> 16) % 100,
        (seq >> 8) & 255,
        seq & 255
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last change of each service: its sequence number, address and put time.
type Latest = Arc<Mutex<HashMap<String, (u32, String, Instant)>>>;

/// Per stream: the last change seen per service, and the latencies it measured.
#[derive(Default)]
struct Seen {
    last: HashMap<String, u32>,
    latencies: Vec<Duration>,
}

async fn stream(
    xds: String,
    names: Vec<String>,
    latest: Latest,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the xDS server");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = |version: String, nonce: String| DiscoveryRequest {
        version_info: version,
        node: Some(Node {
            id: "xds-load".into(),
            ..Default::default()
        }),
        resource_names: names.clone(),
        type_url: EDS.into(),
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(request(String::new(), String::new()))
        .await
        .unwrap();
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("an ADS stream")
        .into_inner();
    let mut first = Some(ready);
    while let Ok(Some(response)) = responses.message().await {
        let now = Instant::now();
        {
            let latest = latest.lock().unwrap();
            let mut seen = seen.lock().unwrap();
            for any in &response.resources {
                let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) else {
                    continue;
                };
                let addrs: Vec<String> = cla
                    .endpoints
                    .iter()
                    .flat_map(|g| &g.lb_endpoints)
                    .filter_map(|e| match &e.host_identifier {
                        Some(HostIdentifier::Endpoint(ep)) => {
                            match ep.address.as_ref()?.address.as_ref()? {
                                address::Address::SocketAddress(sa) => Some(sa.address.clone()),
                                _ => None,
                            }
                        }
                        _ => None,
                    })
                    .collect();
                if let Some((seq, addr, at)) = latest.get(&cla.cluster_name) {
                    let before = seen.last.get(&cla.cluster_name).copied();
                    if addrs.contains(addr) && before != Some(*seq) {
                        seen.last.insert(cla.cluster_name.clone(), *seq);
                        seen.latencies.push(now.duration_since(*at));
                    }
                }
            }
        }
        if let Some(r) = first.take() {
            let _ = r.send(()).await;
        }
        if tx
            .send(request(response.version_info, response.nonce))
            .await
            .is_err()
        {
            break;
        }
    }
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut etcd = etcd_client::Client::connect([a.etcd.as_str()], None)
        .await
        .expect("connecting to etcd");
    let key = |s: usize| format!("/ruddr/services/svc{s}/a");
    if a.setup {
        for s in 0..a.services {
            etcd.put(key(s), value(&address(s as u32)), None)
                .await
                .unwrap();
        }
        println!("registered {} services", a.services);
        return;
    }
    let latest: Latest = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let rss_before = a.pid.and_then(rss_kib);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.streams.max(1));
    let mut streams = Vec::new();
    for _ in 0..a.streams {
        let mut names: Vec<String> = Vec::new();
        while names.len() < a.per_stream {
            let n = format!("svc{}", rng.random_range(0..a.services));
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        tokio::spawn(stream(
            a.xds.clone(),
            names.clone(),
            latest.clone(),
            seen.clone(),
            ready_tx.clone(),
        ));
        streams.push((names, seen));
    }
    drop(ready_tx);
    let t = Instant::now();
    for _ in 0..a.streams {
        ready_rx
            .recv()
            .await
            .expect("every stream got its first response");
    }
    println!(
        "streams ready: {} in {:.2} s",
        a.streams,
        t.elapsed().as_secs_f64()
    );
    let rss_ready = a.pid.and_then(rss_kib);

    // The writer: `rate` changes a second, each a new address for a random service.
    // Addresses no earlier run gave (a put of the value a key already holds changes nothing).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut seq = a.services as u32 + nanos % 4_000_000;
    let mut changes = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / a.rate);
    let end = Instant::now() + Duration::from_secs(a.duration);
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        let s = rng.random_range(0..a.services);
        let addr = address(seq);
        latest
            .lock()
            .unwrap()
            .insert(format!("svc{s}"), (seq, addr.clone(), Instant::now()));
        etcd.put(key(s), value(&addr), None).await.unwrap();
        changes += 1;
    }
    // Let the last pushes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.pid.and_then(rss_kib);
    let latest = latest.lock().unwrap();
    let (mut lat, mut behind, mut checked) = (Vec::new(), 0usize, 0usize);
    for (names, seen) in &streams {
        let seen = seen.lock().unwrap();
        lat.extend_from_slice(&seen.latencies);
        for n in names {
            if let Some((seq, _, _)) = latest.get(n) {
                checked += 1;
                if seen.last.get(n) != Some(seq) {
                    behind += 1;
                }
            }
        }
    }
    lat.sort();
    println!(
        "changes: {changes} in {} s ({} streams x {} services of {})",
        a.duration, a.streams, a.per_stream, a.services
    );
    if !lat.is_empty() {
        println!(
            "push latency (etcd put -> assignment received), {} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            pct(&lat, 0.5).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!("subscriptions behind the last change at the end: {behind} of {checked} changed ones");
    if let (Some(b), Some(r), Some(f)) = (rss_before, rss_ready, rss_after) {
        let per = |x: u64| (x.saturating_sub(b) as f64) * 1024.0 / a.streams.max(1) as f64 / 1024.0;
        println!(
            "ruddr RSS: {b} KiB before, {r} KiB with the streams open ({:.1} KiB per stream), {f} KiB after the changes ({:.1} KiB per stream)",
            per(r),
            per(f)
        );
    }
}
