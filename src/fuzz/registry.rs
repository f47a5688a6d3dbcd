//! Registry keys and values of every layout (native, etcd-naming, go-zero, Kratos, go-micro,
//! SkyDNS), read through [`Source`] as the watcher reads them.
//!
//! Input: the layouts' documented examples mutated as bytes and as JSON (a value replaced by a
//! number out of range, a wrong type, deep nesting, odd addresses), and random text.
//! Property: no panic; a bad key or value is an `Err`. What does parse is applied to a mirror,
//! and the names it gives then answer well-formed DNS responses.

use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;

use super::packets::{ask, handler, runtime, wire_query, CLIENT};
use super::{check, mutations, random_bytes, random_text, Mutation};
use crate::cache::{Mirror, Update};
use crate::registry::{Layout, Source};

/// A layout's source and examples of its keys and values.
struct Example {
    source: Source,
    keys: &'static [&'static str],
    values: &'static [&'static str],
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            source: Source::native("/ruddr/services/"),
            keys: &["/ruddr/services/web/web-1", "/ruddr/services/Web/w0"],
            values: &[
                r#"{"address":"10.0.0.5","port":8080,"ports":{"http":8080,"grpc":9090},"tags":["v2"],"weight":10,"priority":0,"health":"passing","meta":{"az":"a"}}"#,
                r#"{"address":"fd00::1","health":"Warning","meta":{"n":3,"b":true}}"#,
                r#"{"address":"10.0.0.1"}"#,
            ],
        },
        Example {
            source: Source::framework(Layout::EtcdNaming { service: None }, "foo/bar/my-service"),
            keys: &["foo/bar/my-service/e1", "foo/bar/my-service/10.0.0.5:50051"],
            values: &[
                r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#,
                r#"{"Addr":"10.0.0.5:50051","Metadata":{"zone":"a","n":1,"x":[1]}}"#,
                r#"{"Op":0,"Addr":"[fd00::1]:9000"}"#,
                r#"{"Op":1,"Addr":"10.0.0.5:1"}"#,
            ],
        },
        Example {
            source: Source::framework(Layout::GoZero { service: None }, "user.rpc"),
            keys: &["user.rpc/7587864068988009477"],
            values: &[
                "10.0.0.6:8080",
                "[fd00::6]:8080",
                "db.internal:5432",
                "fd00::6",
            ],
        },
        Example {
            source: Source::framework(Layout::Kratos, "/microservices"),
            keys: &["/microservices/helloworld/8f8c8a0e-2b1d-4a51-9c4e-3c1f0e5f2a11"],
            values: &[
                r#"{"id":"a1","name":"helloworld","version":"v1","metadata":{"weight":"10"},"endpoints":["grpc://10.0.0.5:9000?isSecure=false","http://10.0.0.5:8000"]}"#,
                r#"{"id":"a2","name":"x","version":"","metadata":null,"endpoints":["grpc://[fd00::2]:9000"]}"#,
                r#"{"endpoints":["grpc://10.0.0.5:9000?isSecure=true","https://db.example.com:443"]}"#,
            ],
        },
        Example {
            source: Source::framework(Layout::GoMicro, "/micro/registry/"),
            keys: &[
                "/micro/registry/go.micro.srv.greeter/go.micro.srv.greeter-3c9f",
                "/micro/registry/micro/greeter/greeter-a",
            ],
            values: &[
                r#"{"name":"go.micro.srv.greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"greeter-8b1c","address":"10.0.0.7:43121","metadata":{"protocol":"grpc"}}]}"#,
                r#"{"name":"greeter","nodes":[{"id":"n1","address":"10.0.0.8","port":8080}]}"#,
                r#"{"version":"1.2","nodes":[{"id":"greeter-a","address":"10.0.0.1:80"},{"id":"greeter-b","address":"[fd00::2]:80"},{"id":"greeter-c","address":"db.example.com:80"}]}"#,
            ],
        },
        Example {
            source: Source::framework(
                Layout::Skydns {
                    zones: vec!["skydns.local.".into()],
                    ttl: 300,
                },
                "/skydns",
            ),
            keys: &[
                "/skydns/local/skydns/east/production/rails/1",
                "/skydns/local/skydns/*/x",
            ],
            values: &[
                r#"{"host":"10.0.0.1","port":8080,"priority":10,"weight":20,"ttl":60,"text":"hi"}"#,
                r#"{"host":"db.example.com","port":-1}"#,
                r#"{"text":"only text","targetstrip":1}"#,
                r#"{"host":"db.example.com","port":5432,"targetstrip":3}"#,
            ],
        },
    ]
}

/// JSON values that parsers get wrong: out of range, wrong types, deep nesting, odd addresses.
const JSON_VALUES: &[&str] = &[
    "-1",
    "0",
    "65535",
    "65536",
    "4294967296",
    "-9223372036854775809",
    "18446744073709551616",
    "1e400",
    "0.5",
    "null",
    "true",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"::\"",
    "\"[::1]:0\"",
    "\"[::1\"",
    "\"a:b:c\"",
    "\"grpc://:\"",
    "\"http://[fd00::1\"",
    "\"grpc://10.0.0.1:99999\"",
    "\"999.1.1.1:80\"",
    "\"*\"",
    "\"..\"",
    "\"-a-\"",
    "\"1.2.3.4:65536\"",
    "\"a..b:1\"",
    "[\"grpc://10.0.0.1:1\",\"grpc://10.0.0.1:1\"]",
    "[{\"id\":\"a\",\"address\":\"10.0.0.1\"},{\"id\":\"A\",\"address\":\"10.0.0.2\"}]",
];

/// A change to JSON text: the value after one of its `:`, `[` or `,` replaced.
#[derive(Debug, Clone)]
struct JsonChange(Index, &'static str, bool);

fn json_change() -> impl Strategy<Value = JsonChange> {
    (
        any::<Index>(),
        prop::sample::select(JSON_VALUES),
        any::<bool>(),
    )
        .prop_map(|(i, v, long)| JsonChange(i, v, long))
}

fn apply_json(text: &str, c: &JsonChange) -> String {
    let starts: Vec<usize> = text
        .char_indices()
        .filter(|(_, ch)| matches!(ch, ':' | '[' | ','))
        .map(|(i, _)| i + 1)
        .collect();
    if starts.is_empty() {
        return text.to_string();
    }
    let start = starts[c.0.index(starts.len())];
    // The old value ends where the next `,` `]` or `}` is (good enough for scalars; a nested
    // value is cut somewhere inside, which is one more malformed input).
    let end = text[start..]
        .find([',', ']', '}'])
        .map_or(text.len(), |e| start + e);
    let value = if c.2 {
        format!("\"{}\"", "a".repeat(300))
    } else {
        c.1.to_string()
    };
    format!("{}{}{}", &text[..start], value, &text[end..])
}

#[derive(Debug, Clone)]
enum Text {
    Example(Index, Vec<Mutation>),
    Json(Index, Vec<JsonChange>),
    Random(String),
    Bytes(Vec<u8>),
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => (any::<Index>(), mutations(4)).prop_map(|(i, m)| Text::Example(i, m)),
        3 => (any::<Index>(), prop::collection::vec(json_change(), 1..4))
            .prop_map(|(i, c)| Text::Json(i, c)),
        1 => random_text(80).prop_map(Text::Random),
        1 => random_bytes(80).prop_map(Text::Bytes),
    ]
}

fn render(t: &Text, examples: &[&str]) -> Vec<u8> {
    match t {
        Text::Example(i, m) => super::mutated(examples[i.index(examples.len())].as_bytes(), m),
        Text::Json(i, changes) => {
            let mut s = examples[i.index(examples.len())].to_string();
            for c in changes {
                s = apply_json(&s, c);
            }
            s.into_bytes()
        }
        Text::Random(s) => s.clone().into_bytes(),
        Text::Bytes(b) => b.clone(),
    }
}

/// The names an update gives, to ask for.
fn names_of(update: &Update) -> Vec<String> {
    let zone = "svc.internal.";
    match update {
        Update::Put { service, instance } => vec![
            format!("{service}.{zone}"),
            format!("{}.{service}.{zone}", instance.id),
            format!("_grpc._tcp.{service}.{zone}"),
        ],
        Update::Replace {
            service, instances, ..
        } => std::iter::once(format!("{service}.{zone}"))
            .chain(
                instances
                    .iter()
                    .map(|i| format!("{}.{service}.{zone}", i.id)),
            )
            .collect(),
        Update::Delete { service, id, .. } => vec![format!("{id}.{service}.{zone}")],
        Update::DomainPut { key, .. } | Update::DomainDelete { key } => {
            let mut labels: Vec<&str> = key.1.split('/').collect();
            labels.reverse();
            vec![format!("{}.", labels.join("."))]
        }
        Update::Reset { .. } | Update::Position { .. } | Update::ForgetPositions => Vec::new(),
    }
}

#[test]
fn registry_values_parse_or_fail_cleanly() {
    let examples = examples();
    let mirror = Arc::new(Mirror::new());
    let sky_source = examples[5].source.clone();
    let origin = hickory_proto::rr::Name::from_ascii("skydns.local.").unwrap();
    let h = handler(mirror.clone());
    let sky = crate::dns::zone::skydns::SkyZone {
        soa: Default::default(),
        apex: hickory_proto::rr::LowerName::new(&origin),
        zone: h.zone_for(origin).unwrap(),
        source: sky_source.id,
        ttl: 300,
    };
    let h = h.with_sky(vec![sky]);
    let rt = runtime();
    let src: SocketAddr = CLIENT.parse().unwrap();
    let n = examples.len();
    let strategy = (0..n, text(), text(), 0..n, any::<u16>());
    check(4, strategy, |(layout, key, value, other, id)| {
        let ex = &examples[layout];
        let key = render(&key, ex.keys);
        // Mostly the layout's own values, sometimes another layout's.
        let values = if id % 4 == 0 {
            examples[other].values
        } else {
            ex.values
        };
        let value = render(&value, values);
        let _ = ex.source.key(&key);
        let _ = ex.source.entry(&key, &value);
        let deleted = ex.source.delete(&key);
        let Ok(Some(update)) = ex.source.put(&key, &value) else {
            return Ok(());
        };
        let names = names_of(&update);
        let revision = mirror.load().revision + 1;
        mirror.apply([update], revision);
        for name in names {
            // Names from keys can be anything; the ones that are not DNS names are the
            // packet fuzz target's business.
            if name.len() > 250 || name.split('.').any(|l| l.len() > 63) {
                continue;
            }
            for (qtype, tcp) in [
                (1u16, false),
                (33, false),
                (16, true),
                (255, true),
                (28, false),
            ] {
                ask(
                    &h,
                    &rt,
                    &wire_query(id, 0x0100, &name, qtype, None),
                    src,
                    tcp,
                )?;
            }
        }
        if id % 8 == 0 {
            if let Some(d) = deleted {
                mirror.apply([d], mirror.load().revision + 1);
            }
        }
        Ok(())
    });
}

#[test]
fn the_examples_parse() {
    for ex in examples() {
        for key in ex.keys {
            for value in ex.values {
                assert!(
                    ex.source.put(key.as_bytes(), value.as_bytes()).is_ok(),
                    "{key} = {value}"
                );
            }
        }
    }
}
