//! The snapshot file ([`Persisted::decode`], [`persist::load`]): what a restart reads before
//! etcd answers, so a damaged or hostile file must not stop ruddr.
//!
//! Input: real snapshot files (version 2 written by [`persist::write`], a version 1 JSON file)
//! mutated as a whole, or mutated in the body with the header's length and checksum made to
//! match again (so the body decoders see the damage), headers of random text, random bytes.
//! Property: no panic; every file is an `Err` or a snapshot, and a snapshot that decodes is
//! applied to a mirror whose names then answer well-formed DNS responses.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name};
use proptest::prelude::*;
use proptest::sample::Index;

use super::packets::{ask, handler, runtime, wire_query, CLIENT};
use super::{check, mutations, random_bytes, random_text, Mutation};
use crate::cache::{Mirror, Update};
use crate::persist::tests::seal;
use crate::persist::{self, Persisted};
use crate::registry::{Layout, Source};

fn sky_source() -> Source {
    Source::framework(
        Layout::Skydns {
            zones: vec!["skydns.local.".into()],
            ttl: 300,
        },
        "/skydns",
    )
}

/// A version 2 file as ruddr writes it, over instances of several layouts and SkyDNS entries.
fn written() -> Vec<u8> {
    let mirror = Mirror::new();
    let mut updates = Vec::new();
    let native = Source::native("/ruddr/services/");
    for (id, value) in [
        (
            "a",
            r#"{"address":"10.0.0.1","port":80,"ports":{"grpc":9090},"tags":["v2"],"weight":7,"priority":1,"health":"warning","meta":{"az":"a"}}"#,
        ),
        ("b", r#"{"address":"fd00::2","port":8080}"#),
    ] {
        updates.push(native.put(
            format!("/ruddr/services/web/{id}").as_bytes(),
            value.as_bytes(),
        ));
    }
    let kratos = Source::framework(Layout::Kratos, "/microservices");
    updates.push(kratos.put(
        b"/microservices/named/n1",
        br#"{"endpoints":["grpc://db.example.com:9000"]}"#,
    ));
    let sky = sky_source();
    updates.push(sky.put(
        b"/skydns/local/skydns/east/rails/1",
        br#"{"host":"10.0.0.9","port":8080,"priority":10,"weight":20,"ttl":60,"text":"t"}"#,
    ));
    updates.push(sky.put(
        b"/skydns/local/skydns/west/db",
        br#"{"host":"db.example.com","targetstrip":1}"#,
    ));
    mirror.apply(updates.into_iter().map(|u| u.unwrap().unwrap()), 42);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.snapshot");
    persist::write(&path, &mirror.load()).unwrap();
    std::fs::read(&path).unwrap()
}

/// A version 1 (JSON) file.
fn json_file() -> Vec<u8> {
    let body = br#"{"revision":7,"written_at_unix_ms":1000,"instances":[["web",{"id":"a","address":"10.0.0.1","port":80,"ports":{"http":80},"tags":["x"],"weight":1,"priority":0,"health":"passing","meta":{"az":"b"}}],["web",{"id":"h","address":"db.example.com","port":80,"ports":{},"tags":[],"weight":1,"priority":0,"health":"passing","meta":{}}]],"domains":[[[1,"local/skydns/x"],{"host":"10.0.0.3","port":1,"priority":0,"weight":0,"text":null,"ttl":null,"target_strip":0}]]}"#;
    seal(1, body)
}

#[derive(Debug, Clone)]
enum File {
    /// A seed file mutated anywhere (the checksum mostly catches it).
    Whole(Index, Vec<Mutation>),
    /// A seed's body mutated, then sealed with a matching header.
    Body(Index, Vec<Mutation>),
    /// A seed's body under a header line of random text.
    Header(Index, String),
    Random(Vec<u8>),
}

fn file() -> impl Strategy<Value = File> {
    prop_oneof![
        2 => (any::<Index>(), mutations(4)).prop_map(|(i, m)| File::Whole(i, m)),
        5 => (any::<Index>(), mutations(4)).prop_map(|(i, m)| File::Body(i, m)),
        1 => (any::<Index>(), random_text(60)).prop_map(|(i, h)| File::Header(i, h)),
        1 => random_bytes(200).prop_map(File::Random),
    ]
}

fn render(f: &File, seeds: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let pick = |i: &Index| &seeds[i.index(seeds.len())];
    let body = |file: &[u8]| {
        let nl = file.iter().position(|b| *b == b'\n').unwrap();
        file[nl + 1..].to_vec()
    };
    match f {
        File::Whole(i, m) => super::mutated(&pick(i).1, m),
        File::Body(i, m) => {
            let (version, file) = pick(i);
            seal(*version, &super::mutated(&body(file), m))
        }
        File::Header(i, h) => {
            let mut out = h.clone().into_bytes();
            out.push(b'\n');
            out.extend(body(&pick(i).1));
            out
        }
        File::Random(b) => b.clone(),
    }
}

#[test]
fn snapshot_files_load_or_fail_cleanly() {
    let seeds = vec![(2, written()), (1, json_file())];
    for (_, s) in &seeds {
        Persisted::decode(s).expect("the seeds decode");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirror.snapshot");
    let sky = sky_source();
    let rt = runtime();
    let src: SocketAddr = CLIENT.parse().unwrap();
    check(
        4,
        (file(), any::<bool>(), 0u64..2000),
        |(f, via_file, max)| {
            let bytes = render(&f, &seeds);
            let decoded = if via_file {
                std::fs::write(&path, &bytes).unwrap();
                persist::load(&path, max).unwrap_or_default()
            } else {
                Persisted::decode(&bytes).ok()
            };
            let Some(p) = decoded else {
                return Ok(());
            };
            // What a restart does with it: the mirror takes it, the handler answers from it.
            let mut names: Vec<String> = p
                .instances
                .iter()
                .take(8)
                .flat_map(|(s, i)| {
                    [
                        format!("{s}.svc.internal."),
                        format!("{}.{s}.svc.internal.", i.id),
                    ]
                })
                .collect();
            names.extend(p.domains.iter().take(8).map(|((_, path), _)| {
                let mut labels: Vec<&str> = path.split('/').collect();
                labels.reverse();
                format!("{}.", labels.join("."))
            }));
            let mirror = Arc::new(Mirror::new());
            mirror.apply(
                [Update::Reset {
                    source: None,
                    instances: p.instances,
                    domains: p.domains,
                    keep: Vec::new(),
                }],
                p.revision,
            );
            let origin = Name::from_ascii("skydns.local.").unwrap();
            let h = handler(mirror);
            let zone = crate::dns::zone::skydns::SkyZone {
                soa: Default::default(),
                apex: LowerName::new(&origin),
                zone: h.zone_for(origin).unwrap(),
                source: sky.id,
                ttl: 300,
            };
            let h = h.with_sky(vec![zone]);
            names.push("svc.internal.".into());
            names.push("skydns.local.".into());
            for name in names {
                if name.len() > 250 || name.split('.').any(|l| l.len() > 63) {
                    continue;
                }
                for (qtype, tcp) in [
                    (1u16, false),
                    (33, true),
                    (16, false),
                    (255, true),
                    (6, false),
                ] {
                    ask(
                        &h,
                        &rt,
                        &wire_query(7, 0x0100, &name, qtype, None),
                        src,
                        tcp,
                    )?;
                }
            }
            Ok(())
        },
    );
}

/// Found by the target above: a body whose map length prefix claims billions of entries (with
/// a checksum that matches) made litemap reserve them all and abort the process.
#[test]
fn a_map_length_past_the_body_is_an_error() {
    let file = written();
    let nl = file.iter().position(|b| *b == b'\n').unwrap();
    let mut body = file[nl + 1..].to_vec();
    // The ports map `{"grpc": 9090}`: length 1, then the 4-byte key.
    let at = body
        .windows(6)
        .position(|w| w == [1, 4, b'g', b'r', b'p', b'c'])
        .expect("the ports map in the body");
    body.splice(at..=at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(Persisted::decode(&seal(2, &body)).is_err());
}
