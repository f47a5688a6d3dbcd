//! Zone files ([`StaticZones::load_dir`]): the operator's, but a typo or a half-written file
//! must be a clear error, never a crash.
//!
//! Input: zone files of every record type ruddr serves mutated as bytes and as lines, under
//! file names that are and are not zone names, and random text.
//! Property: no panic; a directory loads or fails with an error, and zones that load answer
//! well-formed DNS responses through the handler (hickory's catalog, [`Handler::answer_later`]).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use proptest::prelude::*;
use proptest::sample::Index;

use super::packets::{ask, handler, runtime, wire_query, CLIENT};
use super::{check, mutations, random_text, Mutation};
use crate::cache::Mirror;
use crate::dns::zone::file::StaticZones;

const ZONES: &[&str] = &[
    "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 10.0.0.53\nwww IN A 10.0.0.80\n",
    "$ORIGIN example.internal.\n$TTL 1h\n@ 3600 IN SOA ns.example.internal. hostmaster.example.internal. (\n  2024010101 ; serial\n  3600 600 86400 60 )\n  IN NS ns\nns IN A 10.0.0.53\nwww IN AAAA fd00::80\nmail IN MX 10 www\ntxt IN TXT \"hello world\" \"x\"\nalias IN CNAME www\n_sip._udp IN SRV 0 5 5060 www\n*.wild IN A 10.0.0.81\n1.0.0.10.in-addr.arpa. IN PTR www\ncaa IN CAA 0 issue \"ca.example\"\n",
];

/// Lines that are each valid somewhere in a zone file, to splice in.
const LINES: &[&str] = &[
    "$TTL 0\n",
    "$TTL 4294967295\n",
    "$ORIGIN .\n",
    "$ORIGIN sub\n",
    "$INCLUDE missing.inc\n",
    "@ IN SOA ns hostmaster 1 3600 600 86400 60\n",
    "x IN A 10.0.0.1\n",
    "x IN A 999.0.0.1\n",
    "x IN AAAA ::\n",
    "x IN TXT \"unterminated\n",
    "x IN SRV 65535 65535 65535 .\n",
    "x IN MX 10 .\n",
    "x 2147483648 IN A 10.0.0.1\n",
    "x IN TYPE65280 \\# 2 abcd\n",
    "x IN CNAME x\n",
    "* IN CNAME *\n",
    "( ( (\n",
    ") ) )\n",
    "\\065\\066 IN A 10.0.0.2\n",
    "x IN NS @\n",
    "x CH A 10.0.0.1\n",
];

#[derive(Debug, Clone)]
enum Text {
    Bytes(Index, Vec<Mutation>),
    Lines(Index, Vec<(Index, Index)>),
    Random(String),
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => (any::<Index>(), mutations(6)).prop_map(|(i, m)| Text::Bytes(i, m)),
        2 => (any::<Index>(), prop::collection::vec((any::<Index>(), any::<Index>()), 1..4))
            .prop_map(|(i, l)| Text::Lines(i, l)),
        1 => random_text(200).prop_map(Text::Random),
    ]
}

fn render(t: &Text) -> Vec<u8> {
    let pick = |i: &Index| ZONES[i.index(ZONES.len())];
    match t {
        Text::Bytes(i, m) => super::mutated(pick(i).as_bytes(), m),
        Text::Lines(i, inserts) => {
            let mut lines: Vec<&str> = pick(i).split_inclusive('\n').collect();
            for (at, line) in inserts {
                let at = at.index(lines.len() + 1);
                lines.insert(at, LINES[line.index(LINES.len())]);
            }
            lines.concat().into_bytes()
        }
        Text::Random(s) => s.clone().into_bytes(),
    }
}

/// File names: zone names, and names that are not.
const FILE_NAMES: &[&str] = &[
    "static.internal.zone",
    "example.internal.zone",
    "Mixed.Case.zone",
    "..zone",
    ".zone",
    "a..b.zone",
    "-x-.zone",
    "x y.zone",
    "internal.zone",
];

#[test]
fn zone_files_load_or_fail_cleanly() {
    let rt = runtime();
    let src: SocketAddr = CLIENT.parse().unwrap();
    let h = handler(Arc::new(Mirror::new()));
    let zones = Arc::new(ArcSwap::from_pointee(StaticZones::empty()));
    let h = h.with_outside(zones.clone(), None, Vec::new());
    let files = prop::collection::vec((prop::sample::select(FILE_NAMES), text()), 1..3);
    check(1, files, |files| {
        let dir = tempfile::tempdir().unwrap();
        for (name, t) in &files {
            std::fs::write(dir.path().join(name), render(t)).unwrap();
        }
        let Ok(loaded) = StaticZones::load_dir(dir.path()) else {
            return Ok(());
        };
        let origins: Vec<String> = loaded.zones.iter().map(|z| z.origin.to_string()).collect();
        zones.store(Arc::new(loaded));
        for origin in origins {
            for name in [
                origin.clone(),
                format!("www.{origin}"),
                format!("x.wild.{origin}"),
            ] {
                if name.len() > 250 {
                    continue;
                }
                for (qtype, tcp) in [
                    (1u16, false),
                    (6, true),
                    (255, false),
                    (252, true),
                    (28, false),
                    (15, true),
                ] {
                    ask(
                        &h,
                        &rt,
                        &wire_query(9, 0x0100, &name, qtype, None),
                        src,
                        tcp,
                    )?;
                }
            }
        }
        Ok(())
    });
}
