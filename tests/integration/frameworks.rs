//! Framework layouts: keys and values written exactly as each framework writes them (same key
//! shapes, JSON field names and leases), answered over DNS, and gone again when the key is
//! deleted or the lease revoked.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[[sources]]
format = "etcd-naming"
prefix = "foo/bar/my-service"

[[sources]]
format = "go-zero"
prefix = "user.rpc"

[[sources]]
format = "kratos"
prefix = "/microservices"

[[sources]]
format = "go-micro"
prefix = "/micro/registry/"

[[sources]]
format = "skydns"
prefix = "/skydns/"
zones = ["skydns.local."]
"#;

fn start(etcd: &Etcd) -> Ruddr {
    Ruddr::start_with_config(&etcd.endpoint(), CONFIG)
}

/// Waits until the answers to `name`/`qtype` are `want` (sorted strings).
fn wait_for(r: &Ruddr, name: &str, qtype: RecordType, want: &[&str]) {
    wait_answers(r, name, qtype, want, WAIT);
}

fn wait_nxdomain(r: &Ruddr, name: &str) {
    eventually(WAIT, &format!("{name} NXDOMAIN"), || {
        (rcode(&query(r.addr(), name, RecordType::A)) == ResponseCode::NXDomain).then_some(())
    });
}

#[test]
fn etcd_naming_endpoints_with_a_lease() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // endpoints.Manager.AddEndpoint(ctx, "foo/bar/my-service/e1", Endpoint{Addr: ...},
    // clientv3.WithLease(lease)) stores the Update JSON, Op included.
    let lease = etcd.grant(30);
    etcd.put_with_lease(
        "foo/bar/my-service/e1",
        r#"{"Op":0,"Addr":"10.1.0.5:50051","Metadata":null}"#,
        lease,
    );
    etcd.put_with_lease(
        "foo/bar/my-service/e2",
        r#"{"Op":0,"Addr":"[fd00::5]:50051","Metadata":{"zone":"b"}}"#,
        lease,
    );
    // An address without a port: A/AAAA but no SRV.
    etcd.put(
        "foo/bar/my-service/e3",
        r#"{"Op":0,"Addr":"10.1.0.6","Metadata":null}"#,
    );
    let name = "my-service.svc.internal.";
    wait_for(&r, name, RecordType::A, &["10.1.0.5", "10.1.0.6"]);
    wait_for(&r, name, RecordType::AAAA, &["fd00::5"]);
    wait_for(
        &r,
        name,
        RecordType::SRV,
        &[
            "0 1 50051 e1.my-service.svc.internal.",
            "0 1 50051 e2.my-service.svc.internal.",
        ],
    );
    assert_eq!(
        dig_short(r.port, "e2.my-service.svc.internal.", "TXT"),
        ["\"zone=b\""]
    );
    // A target that merely starts like ours is another service.
    etcd.put("foo/bar/my-service2/e1", r#"{"Op":0,"Addr":"10.1.0.99:1"}"#);
    etcd.revoke(lease);
    wait_for(&r, name, RecordType::A, &["10.1.0.6"]);
    etcd.delete("foo/bar/my-service/e3");
    wait_nxdomain(&r, name);
}

#[test]
fn go_zero_lease_keys_and_host_names() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // core/discov Publisher: key "<Key>/<lease id in decimal>", value "host:port", 10 s lease.
    let lease = etcd.grant(10);
    etcd.put_with_lease(&format!("user.rpc/{lease}"), "10.1.1.5:8080", lease);
    let name = "user-rpc.svc.internal.";
    wait_for(&r, name, RecordType::A, &["10.1.1.5"]);
    wait_for(
        &r,
        name,
        RecordType::SRV,
        &[&format!("0 1 8080 {lease}.user-rpc.svc.internal.")],
    );
    // A host name instead of an address: the SRV target is the host, the instance name is a
    // CNAME to it, and the A answer at the service keeps to real addresses.
    let lease2 = etcd.grant(10);
    etcd.put_with_lease(
        &format!("user.rpc/{lease2}"),
        "db-1.example.net:8081",
        lease2,
    );
    wait_for(
        &r,
        name,
        RecordType::SRV,
        &[
            &format!("0 1 8080 {lease}.user-rpc.svc.internal."),
            "0 1 8081 db-1.example.net.",
        ],
    );
    wait_for(&r, name, RecordType::A, &["10.1.1.5"]);
    let cname = query(
        r.addr(),
        &format!("{lease2}.user-rpc.svc.internal."),
        RecordType::A,
    );
    assert_eq!(answer_strings(&cname), ["db-1.example.net."]);
    assert_eq!(cname.answers[0].record_type(), RecordType::CNAME);
    // With only the host name left, the service name itself is the CNAME.
    etcd.revoke(lease);
    wait_for(&r, name, RecordType::A, &["db-1.example.net."]);
    // A value go-zero would never write is skipped with a warning naming key and format.
    etcd.put("user.rpc/42", "not-an-address:http");
    r.wait_log("user.rpc/42");
    let log = r.log_text();
    let line = log.lines().find(|l| l.contains("user.rpc/42")).unwrap();
    assert!(
        line.contains("go-zero") && line.contains("skipping registry entry"),
        "{line}"
    );
    etcd.revoke(lease2);
    wait_nxdomain(&r, name);
}

#[test]
fn kratos_endpoints_are_named_ports() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // contrib/registry/etcd: key "<namespace>/<name>/<id>", value ServiceInstance JSON,
    // 15 s lease kept alive.
    let lease = etcd.grant(15);
    let id = "8f8c8a0e-5d8b-4a52-9a3e-0d7c1f5e2b11";
    etcd.put_with_lease(
        &format!("/microservices/helloworld/{id}"),
        r#"{"id":"8f8c8a0e-5d8b-4a52-9a3e-0d7c1f5e2b11","name":"helloworld","version":"v1.0.0","metadata":{"weight":"10","region":"eu"},"endpoints":["grpc://10.1.2.5:9000","http://10.1.2.5:8000"]}"#,
        lease,
    );
    etcd.put(
        "/microservices/helloworld/b2",
        r#"{"id":"b2","name":"helloworld","version":"v1.0.0","metadata":null,"endpoints":["grpc://[fd00::2:6]:9000"]}"#,
    );
    // Directory markers (empty values) are ignored without a word.
    etcd.put("/microservices/helloworld", "");
    let name = "helloworld.svc.internal.";
    wait_for(&r, name, RecordType::A, &["10.1.2.5"]);
    wait_for(&r, name, RecordType::AAAA, &["fd00::2:6"]);
    wait_for(
        &r,
        "_grpc._tcp.helloworld.svc.internal.",
        RecordType::SRV,
        &[
            "0 1 9000 b2.helloworld.svc.internal.",
            &format!("0 10 9000 {id}.helloworld.svc.internal."),
        ],
    );
    wait_for(
        &r,
        "_http._tcp.helloworld.svc.internal.",
        RecordType::SRV,
        &[&format!("0 10 8000 {id}.helloworld.svc.internal.")],
    );
    assert!(!r.log_text().contains("\"/microservices/helloworld\""));
    assert!(!r.log_text().contains("key=/microservices/helloworld "));
    etcd.revoke(lease);
    wait_for(&r, name, RecordType::A, &[]);
    etcd.delete("/microservices/helloworld/b2");
    wait_nxdomain(&r, name);
}

#[test]
fn go_micro_nodes() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // registry/etcd: key path.Join("/micro/registry/", name, node id) with '/' turned to '-',
    // value the service JSON with its one node; leased when registered with a TTL.
    let lease = etcd.grant(90);
    let node = "go.micro.srv.greeter-3c9f4a5e-6d6b-4b8e-9a0b-1f1b2f3c4d5e";
    etcd.put_with_lease(
        &format!("/micro/registry/go.micro.srv.greeter/{node}"),
        &format!(
            r#"{{"name":"go.micro.srv.greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{{"id":"{node}","address":"10.1.3.5:43121","metadata":{{"protocol":"grpc","server":"grpc"}}}}]}}"#
        ),
        lease,
    );
    let name = "go-micro-srv-greeter.svc.internal.";
    wait_for(&r, name, RecordType::A, &["10.1.3.5"]);
    wait_for(
        &r,
        name,
        RecordType::SRV,
        &["0 1 43121 go-micro-srv-greeter-3c9f4a5e-6d6b-4b8e-9a0b-1f1b2f3c4d5e.go-micro-srv-greeter.svc.internal."],
    );
    etcd.revoke(lease);
    wait_nxdomain(&r, name);
}

#[test]
fn go_micro_values_with_several_nodes_serve_every_node() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // Writers other than go-micro's own put a whole service, all its nodes, under one key.
    let key = "/micro/registry/orders/all";
    let value = |nodes: &[(&str, &str)]| {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|(id, addr)| format!(r#"{{"id":"{id}","address":"{addr}:9000"}}"#))
            .collect();
        format!(r#"{{"name":"orders","nodes":[{}]}}"#, nodes.join(","))
    };
    // Another key of the same service stays untouched by what this key does.
    etcd.put(
        "/micro/registry/orders/solo",
        &value(&[("solo", "10.1.9.9")]),
    );
    etcd.put(
        key,
        &value(&[("n1", "10.1.9.1"), ("n2", "10.1.9.2"), ("n3", "10.1.9.3")]),
    );
    let name = "orders.svc.internal.";
    wait_for(
        &r,
        name,
        RecordType::A,
        &["10.1.9.1", "10.1.9.2", "10.1.9.3", "10.1.9.9"],
    );
    wait_for(&r, "n2.orders.svc.internal.", RecordType::A, &["10.1.9.2"]);
    // A put replaces everything the key gave before.
    etcd.put(key, &value(&[("n1", "10.1.9.1"), ("n4", "10.1.9.4")]));
    wait_for(
        &r,
        name,
        RecordType::A,
        &["10.1.9.1", "10.1.9.4", "10.1.9.9"],
    );
    wait_nxdomain(&r, "n2.orders.svc.internal.");
    // A delete removes all of it.
    etcd.delete(key);
    wait_for(&r, name, RecordType::A, &["10.1.9.9"]);
}

#[test]
fn skydns_names_as_coredns_serves_them() {
    let etcd = Etcd::start();
    let r = start(&etcd);
    // The CoreDNS etcd plugin's layout: the reversed name under /skydns/.
    etcd.put(
        "/skydns/local/skydns/east/production/rails/1",
        r#"{"host":"10.1.4.1","port":8080,"ttl":60}"#,
    );
    etcd.put(
        "/skydns/local/skydns/east/production/rails/2",
        r#"{"host":"10.1.4.2","port":8080,"priority":10,"weight":3}"#,
    );
    etcd.put(
        "/skydns/local/skydns/west/production/rails/1",
        r#"{"host":"fd00::4:3","port":8080}"#,
    );
    // external-dns writes a random suffix under the name, and TXT-only entries.
    etcd.put(
        "/skydns/local/skydns/db/5f2a9c1e",
        r#"{"host":"db.example.org","ttl":120}"#,
    );
    etcd.put(
        "/skydns/local/skydns/db/1a2b3c4d",
        r#"{"text":"\"heritage=external-dns,external-dns/owner=default\""}"#,
    );
    let rails = "rails.production.east.skydns.local.";
    wait_for(&r, rails, RecordType::A, &["10.1.4.1", "10.1.4.2"]);
    let m = query(r.addr(), rails, RecordType::A);
    assert!(m.metadata.authoritative);
    let mut ttls: Vec<u32> = m.answers.iter().map(|a| a.ttl).collect();
    ttls.sort();
    assert_eq!(ttls, [60, 300], "the entry's ttl, else CoreDNS's 300");
    // Weights are shared out per priority as CoreDNS does (100 * w / sum).
    wait_for(
        &r,
        rails,
        RecordType::SRV,
        &[
            "10 2 8080 2.rails.production.east.skydns.local.",
            "10 97 8080 1.rails.production.east.skydns.local.",
        ],
    );
    let srv = query(r.addr(), rails, RecordType::SRV);
    let mut extra: Vec<String> = srv
        .additionals
        .iter()
        .map(|a| format!("{} {}", a.name, rdata_string(&a.data)))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "1.rails.production.east.skydns.local. 10.1.4.1",
            "2.rails.production.east.skydns.local. 10.1.4.2"
        ]
    );
    // A name answers for its whole subtree; `*` matches one label.
    assert_eq!(
        dig_short(r.port, "production.east.skydns.local.", "A"),
        ["10.1.4.1", "10.1.4.2"]
    );
    assert_eq!(
        dig_short(r.port, "rails.production.*.skydns.local.", "AAAA"),
        ["fd00::4:3"]
    );
    assert_eq!(
        dig_short(r.port, "db.skydns.local.", "A"),
        ["db.example.org."]
    );
    assert_eq!(
        dig_short(r.port, "db.skydns.local.", "TXT"),
        ["\"\\\"heritage=external-dns,external-dns/owner=default\\\"\""]
    );
    let missing = query(r.addr(), "nope.skydns.local.", RecordType::A);
    assert_eq!(rcode(&missing), ResponseCode::NXDomain);
    assert_eq!(missing.authorities[0].name.to_string(), "skydns.local.");
    let nodata = query(r.addr(), rails, RecordType::MX);
    assert_eq!(
        (rcode(&nodata), nodata.answers.len()),
        (ResponseCode::NoError, 0)
    );
    etcd.delete("/skydns/local/skydns/east/production/rails/1");
    wait_for(&r, rails, RecordType::A, &["10.1.4.2"]);
    etcd.delete("/skydns/local/skydns/east/production/rails/2");
    wait_nxdomain(&r, rails);
}

#[test]
fn mixed_sources_serve_side_by_side() {
    let mut etcd = Etcd::start();
    let r = start(&etcd);
    // The same service name and instance id from the native contract and from Kratos.
    etcd.put(
        "/ruddr/services/helloworld/a1",
        r#"{"address":"10.1.5.1","port":80}"#,
    );
    etcd.put(
        "/microservices/helloworld/a1",
        r#"{"id":"a1","name":"helloworld","version":"","metadata":null,"endpoints":["http://10.1.5.2:8000"]}"#,
    );
    etcd.put("user.rpc/7", "10.1.5.3:8080");
    etcd.put("/skydns/local/skydns/helloworld", r#"{"host":"10.1.5.4"}"#);
    let name = "helloworld.svc.internal.";
    wait_for(&r, name, RecordType::A, &["10.1.5.1", "10.1.5.2"]);
    wait_for(&r, "user-rpc.svc.internal.", RecordType::A, &["10.1.5.3"]);
    wait_for(&r, "helloworld.skydns.local.", RecordType::A, &["10.1.5.4"]);
    // Deleting one source's entry leaves the other's alone.
    etcd.delete("/microservices/helloworld/a1");
    wait_for(&r, name, RecordType::A, &["10.1.5.1"]);
    etcd.put(
        "/microservices/helloworld/a1",
        r#"{"id":"a1","name":"helloworld","version":"","metadata":null,"endpoints":["http://10.1.5.2:8000"]}"#,
    );
    wait_for(&r, name, RecordType::A, &["10.1.5.1", "10.1.5.2"]);
    etcd.delete("/ruddr/services/helloworld/a1");
    wait_for(&r, name, RecordType::A, &["10.1.5.2"]);
    // Changes missed while ruddr was frozen, then compacted away: every source re-lists on
    // its own, and no source's re-list drops another's entries.
    r.signal("STOP");
    etcd.restart();
    etcd.put("user.rpc/8", "10.1.5.5:8080");
    etcd.delete("/skydns/local/skydns/helloworld");
    etcd.put("/skydns/local/skydns/helloworld2", r#"{"host":"10.1.5.6"}"#);
    etcd.put(
        "/ruddr/services/helloworld/a2",
        r#"{"address":"10.1.5.7","port":80}"#,
    );
    etcd.compact();
    etcd.defragment();
    r.signal("CONT");
    r.wait_log("watch lost its revision");
    // The re-list comes after a random wait (etcd.relist_jitter).
    wait_answers(
        &r,
        "user-rpc.svc.internal.",
        RecordType::A,
        &["10.1.5.3", "10.1.5.5"],
        RELIST_WAIT,
    );
    wait_for(&r, name, RecordType::A, &["10.1.5.2", "10.1.5.7"]);
    wait_for(
        &r,
        "helloworld2.skydns.local.",
        RecordType::A,
        &["10.1.5.6"],
    );
    wait_nxdomain(&r, "helloworld.skydns.local.");
    // And every watch follows changes after the re-lists.
    etcd.put("user.rpc/9", "10.1.5.8:8080");
    etcd.put(
        "/micro/registry/late/n1",
        r#"{"name":"late","nodes":[{"id":"n1","address":"10.1.5.9:1"}]}"#,
    );
    wait_for(
        &r,
        "user-rpc.svc.internal.",
        RecordType::A,
        &["10.1.5.3", "10.1.5.5", "10.1.5.8"],
    );
    wait_for(&r, "late.svc.internal.", RecordType::A, &["10.1.5.9"]);
}

#[test]
fn snapshot_restores_sources_and_drops_removed_ones() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.1.6.1","port":80}"#,
    );
    etcd.put(
        "/microservices/helloworld/a1",
        r#"{"id":"a1","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://10.1.6.2:9000"]}"#,
    );
    etcd.put(
        "/skydns/local/skydns/db/x",
        r#"{"host":"10.1.6.3","ttl":60}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("mirror.snapshot");
    let with_kratos = dir.path().join("all.toml");
    let without_kratos = dir.path().join("sky-only.toml");
    let sky =
        "[[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\nzones = [\"skydns.local.\"]\n";
    let snapshot = format!("[snapshot]\nfile = {:?}\n\n", snap.to_str().unwrap());
    std::fs::write(
        &with_kratos,
        format!("{snapshot}[[sources]]\nformat = \"kratos\"\nprefix = \"/microservices\"\n\n{sky}"),
    )
    .unwrap();
    std::fs::write(&without_kratos, format!("{snapshot}{sky}")).unwrap();
    let endpoint = etcd.endpoint();
    let start =
        |cfg: &std::path::Path| Ruddr::start(&endpoint, &["--config", cfg.to_str().unwrap()]);

    let mut r = start(&with_kratos);
    r.wait_watching();
    eventually(
        Duration::from_secs(20),
        "snapshot with every source",
        || {
            let p = ruddr::persist::load(&snap, u64::MAX).ok()??;
            let mut addrs: Vec<String> = p
                .instances
                .iter()
                .map(|(_, i)| i.address.to_string())
                .chain(
                    p.domains
                        .iter()
                        .filter_map(|(_, d)| Some(d.host.as_ref()?.to_string())),
                )
                .collect();
            addrs.sort();
            (addrs == ["10.1.6.1", "10.1.6.2", "10.1.6.3"]).then_some(())
        },
    );
    r.signal("TERM");
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(0));
    etcd.kill();

    // etcd down: every source answers from the snapshot at once.
    let r = start(&with_kratos);
    assert_eq!(
        answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        ["10.1.6.1"]
    );
    assert_eq!(
        answer_strings(&query(r.addr(), "helloworld.svc.internal.", RecordType::A)),
        ["10.1.6.2"]
    );
    let db = query(r.addr(), "db.skydns.local.", RecordType::A);
    assert_eq!(answer_strings(&db), ["10.1.6.3"]);
    assert!(db.answers[0].ttl <= 30, "stale answers use stale_ttl");
    drop(r);

    // A source taken out of the config is not resurrected from the snapshot.
    let r = start(&without_kratos);
    assert_eq!(
        answer_strings(&query(r.addr(), "web.svc.internal.", RecordType::A)),
        ["10.1.6.1"]
    );
    assert_eq!(
        answer_strings(&query(r.addr(), "db.skydns.local.", RecordType::A)),
        ["10.1.6.3"]
    );
    assert_eq!(
        rcode(&query(r.addr(), "helloworld.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain
    );
}

#[test]
fn a_refused_source_does_not_stop_the_others() {
    let mut etcd = Etcd::start();
    etcd.put(
        "/ruddr/services/web/w1",
        r#"{"address":"10.1.7.1","port":80}"#,
    );
    etcd.put(
        "/microservices/helloworld/a1",
        r#"{"id":"a1","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://10.1.7.2:9000"]}"#,
    );
    // ruddr's etcd user may read the native prefix only.
    etcd.add_reader("ruddr", "pw", &["/ruddr/services/"]);
    etcd.enable_auth("rootpw");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ruddr.toml");
    std::fs::write(
        &cfg,
        "[etcd]\nusername = \"ruddr\"\nretry_max = \"1s\"\n\n[[sources]]\nformat = \"kratos\"\nprefix = \"/microservices\"\n",
    )
    .unwrap();
    let r = Ruddr::start_env(
        &etcd.endpoint(),
        &["--config", cfg.to_str().unwrap()],
        &[("RUDDR_ETCD_PASSWORD", "pw")],
    );
    r.wait_log("etcd refuses this source");
    // The native source is followed as usual, live and ready.
    wait_for(&r, "web.svc.internal.", RecordType::A, &["10.1.7.1"]);
    etcd.put(
        "/ruddr/services/web/w2",
        r#"{"address":"10.1.7.3","port":80}"#,
    );
    wait_for(
        &r,
        "web.svc.internal.",
        RecordType::A,
        &["10.1.7.1", "10.1.7.3"],
    );
    assert_eq!(r.http_get("/ready").0, 200);
    assert_eq!(r.metric("ruddr_registry_connected"), 1.0);
    assert_eq!(r.metric("ruddr_registry_sources_failing"), 1.0);
    assert_eq!(
        rcode(&query(r.addr(), "helloworld.svc.internal.", RecordType::A)),
        ResponseCode::NXDomain
    );
    // Once etcd lets ruddr read it, the source comes in on the next retry.
    etcd.grant_read("ruddr", "/microservices/");
    wait_for(&r, "helloworld.svc.internal.", RecordType::A, &["10.1.7.2"]);
    r.wait_metric("ruddr_registry_sources_failing", |v| v == 0.0);
    r.wait_log("etcd serves this source again");
}
