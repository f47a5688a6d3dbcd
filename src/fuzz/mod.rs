//! Fuzz targets for every reader of outside input: DNS packets through the transport's decode
//! and the answer core, registry keys and values of every layout, the snapshot file, zone files.
//! Each is a proptest property run as an ordinary test on random and mutated input; none may
//! panic. `RUDDR_FUZZ_CASES` sets the cases per target (default [`DEFAULT_CASES`]); a long run:
//! `RUDDR_FUZZ_CASES=1000000 cargo test --release --lib fuzz`.

mod packets;
mod registry;
mod snapshot;
mod zones;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};

/// Cases per target when `RUDDR_FUZZ_CASES` is not set: enough to catch a regression in
/// `cargo test --lib` within seconds.
pub const DEFAULT_CASES: u32 = 256;

/// Cases per target: `RUDDR_FUZZ_CASES` times `weight` (targets whose cases are cheap run more).
fn cases(weight: u32) -> u32 {
    let base = std::env::var("RUDDR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    base.saturating_mul(weight)
}

/// A runner for `weight` times the configured cases. Failures are printed (minimal input and
/// seed), not saved into the source tree; `PROPTEST_RNG_SEED` replays a seed.
fn runner(weight: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(weight),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs `test` on every case of `strategy`, panicking with the minimal failing input.
fn check<S: Strategy>(
    weight: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    if let Err(e) = runner(weight).run(&strategy, test) {
        panic!("{e}");
    }
}

/// One change to a byte string, at positions relative to its length (so the same mutation
/// applies to any input).
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Copies a slice of the input (at the first index, this long) to the second index.
    Duplicate(Index, usize, Index),
    /// A byte that often means something to a parser (`0`, `0xff`, `0xc0`, `"`, `{`, `\n`...).
    Special(Index, u8),
}

/// Bytes that make parsers take unusual paths: zero, the maxima, DNS compression and label
/// limits, and JSON and zone-file syntax.
const SPECIAL: &[u8] = &[
    0, 1, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b':',
    b',', b'-', b'.', b'/', b'(', b')', b';', b'$', b'@', b'\n', b' ', b'*',
];

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, 1 << b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        (any::<Index>(), prop::sample::select(SPECIAL)).prop_map(|(i, b)| Mutation::Special(i, b)),
    ]
}

/// Up to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

/// Position `i` in a string of `len` bytes (0 for an empty one); `extra` allows the end.
fn at(i: &Index, len: usize, extra: bool) -> usize {
    let n = len + usize::from(extra);
    if n == 0 {
        0
    } else {
        i.index(n)
    }
}

pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[at(i, len, false)] ^= bit,
        Mutation::Set(i, b) | Mutation::Special(i, b) if len > 0 => bytes[at(i, len, false)] = *b,
        Mutation::Insert(i, b) => {
            let p = at(i, len, true);
            bytes.splice(p..p, b.iter().copied());
        }
        Mutation::Delete(i, n) if len > 0 => {
            let p = at(i, len, false);
            bytes.drain(p..(p + n).min(len));
        }
        Mutation::Truncate(i) => bytes.truncate(at(i, len, false)),
        Mutation::Duplicate(a, n, b) if len > 0 => {
            let from = at(a, len, false);
            let copy = bytes[from..(from + n).min(len)].to_vec();
            let to = at(b, len, true);
            bytes.splice(to..to, copy);
        }
        _ => {}
    }
}

/// `seed` with `mutations` applied in order.
pub fn mutated(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        apply(&mut bytes, m);
    }
    bytes
}

/// Random bytes, up to `max` long.
pub fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Text in which the characters that matter to JSON and zone files are frequent.
pub fn random_text(max: usize) -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        3 => prop::sample::select(
            "{}[]\":,-.0123456789eE+ truefalsnl/\\@$();*\n\tabcxyz_:ABC".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ];
    prop::collection::vec(chars, 0..=max).prop_map(|v| v.into_iter().collect())
}

#[test]
fn mutations_stay_in_bounds() {
    // Every kind at every position of empty, one-byte and longer inputs: no panic.
    check(4, (random_bytes(8), mutations(8)), |(seed, ms)| {
        let _ = mutated(&seed, &ms);
        Ok(())
    });
}
