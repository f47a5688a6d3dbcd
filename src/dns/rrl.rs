//! Response rate limiting (RRL) for UDP, as in knotd and nsd: a token bucket per client network
//! and kind of response, in a fixed-size table. It only decides ([`Verdict`]); the transport
//! sends, truncates or drops. TCP is never limited: the caller does not ask for it.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net};
use prometheus_client::metrics::counter::Counter;
use tracing::warn;

use crate::config::RateLimitConfig;
use crate::metrics::{Metrics, RateLimitAction, RateLimitLabels};

/// What a response is, for rate limiting. Each kind has its own buckets, so a flood of
/// NXDOMAINs does not limit answers for real names, and the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// An answer for this name: positive, and NODATA too (knot and nsd key positive answers by
    /// name; a NODATA is as large and as cheap for a reflector). Wire or text form, as long as
    /// the caller always uses the same one; ASCII case is ignored, so 0x20-randomized names share
    /// the bucket of their name.
    Answer { name: &'a [u8] },
    /// An NXDOMAIN for a name in this zone (its apex, not the missing name: random
    /// subdomains must share one bucket). Same form and case rule as `Answer`.
    NxDomain { zone: &'a [u8] },
    /// Any error (SERVFAIL, REFUSED, FORMERR, NOTIMP, ...): one bucket per client network.
    Error,
}

impl Kind<'_> {
    fn as_str(&self) -> &'static str {
        match self {
            Kind::Answer { .. } => "answer",
            Kind::NxDomain { .. } => "nxdomain",
            Kind::Error => "error",
        }
    }
}

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: send it as built.
    Send,
    /// Over the rate, but this is the `slip`th one: send an empty answer with TC set (question
    /// kept, no records), so a real client behind a spoofed flood retries over TCP.
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// One token bucket. Tokens are counted in thousandths, so a rate of r responses per second
/// refills exactly r thousandths per millisecond.
#[derive(Debug, Default)]
struct Bucket {
    /// The hash of the key owning the slot; 0 for a slot never used (tags are odd).
    tag: u64,
    /// Thousandths of a token; a response costs `TOKEN`.
    tokens: u64,
    /// When `tokens` was last brought up to date, milliseconds after the limiter's epoch.
    at_ms: u64,
    /// Responses limited so far in this bucket; every `slip`th one is a [`Verdict::Slip`].
    limited: u32,
}

const TOKEN: u64 = 1000;

/// The rate limiter: one per server, shared by every UDP socket.
///
/// The table is a fixed array of buckets indexed by a keyed hash of (network, kind, name), as
/// in knot: no allocation per check, and one slot's lock held for a few integer operations.
/// A key whose slot holds another key's bucket takes the slot over with a full bucket, so a
/// collision can only let responses through, never limit an innocent client. The hash key is
/// random per process, so a client cannot aim its keys at another's slot.
pub struct RateLimiter {
    /// A std `Mutex` per slot: uncontended in practice (one slot per key) and never held
    /// across anything but the arithmetic below.
    slots: Box<[Mutex<Bucket>]>,
    hasher: RandomState,
    /// Thousandths of a token added per millisecond, which is responses per second.
    rate: u64,
    /// Bucket capacity in thousandths: two seconds' worth of the rate.
    capacity: u64,
    slip: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    /// IPv4-mapped IPv6 networks are stored as IPv4, as clients are compared.
    exempt: Vec<IpNet>,
    epoch: Instant,
    slipped: Counter,
    dropped: Counter,
    is_logged: AtomicBool,
}

impl RateLimiter {
    /// A limiter for a validated config, counting into `metrics`; `None` when rate limiting is
    /// off (`responses_per_second = 0`).
    pub fn new(cfg: &RateLimitConfig, metrics: &Metrics) -> Option<Self> {
        Self::with_epoch(cfg, metrics, Instant::now())
    }

    fn with_epoch(cfg: &RateLimitConfig, metrics: &Metrics, epoch: Instant) -> Option<Self> {
        if cfg.responses_per_second == 0 {
            return None;
        }
        let rate = u64::from(cfg.responses_per_second);
        let counter = |action| {
            metrics
                .rate_limited
                .get_or_create_owned(&RateLimitLabels { action })
        };
        Some(Self {
            // A zero table_size is refused by validation; one slot still works.
            slots: (0..cfg.table_size.max(1))
                .map(|_| Mutex::default())
                .collect(),
            hasher: RandomState::new(),
            rate,
            capacity: 2 * rate * TOKEN,
            slip: cfg.slip,
            ipv4_prefix: cfg.ipv4_prefix.min(32),
            ipv6_prefix: cfg.ipv6_prefix.min(128),
            exempt: cfg.exempt.iter().map(|n| canonical_net(*n)).collect(),
            epoch,
            slipped: counter(RateLimitAction::slip),
            dropped: counter(RateLimitAction::drop),
            is_logged: AtomicBool::new(false),
        })
    }

    /// Whether the UDP response of this kind to `client` may be sent at `now` (a monotonic
    /// clock; tests pass their own). Takes a token from the bucket of (client network, kind)
    /// when it can. Limited responses are counted in `ruddr_dns_rate_limited_total`.
    pub fn check(&self, client: IpAddr, kind: Kind<'_>, now: Instant) -> Verdict {
        let client = client.to_canonical();
        if self.exempt.iter().any(|n| n.contains(&client)) {
            return Verdict::Send;
        }
        let net = self.network(client);
        let hash = self.hash(net, kind);
        // Multiply-shift maps the hash onto the table without a division; the tag is the whole
        // hash, made odd so it never equals an unused slot's 0.
        let index = ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize;
        let tag = hash | 1;
        // Milliseconds since the epoch fit a u64 for 584 million years.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let limited = {
            // A poisoned slot still holds a usable bucket: each update is a few integer
            // operations, and the worst a torn one can do is let a response through.
            let mut b = self.slots[index].lock().unwrap_or_else(|e| e.into_inner());
            if b.tag != tag {
                *b = Bucket {
                    tag,
                    tokens: self.capacity,
                    at_ms: now_ms,
                    limited: 0,
                };
            } else if now_ms > b.at_ms {
                // Another thread may have read the clock later and updated first: time never
                // runs backwards for a bucket.
                let refill = (now_ms - b.at_ms).saturating_mul(self.rate);
                b.tokens = b.tokens.saturating_add(refill).min(self.capacity);
                b.at_ms = now_ms;
            }
            if b.tokens >= TOKEN {
                b.tokens -= TOKEN;
                return Verdict::Send;
            }
            b.limited = b.limited.wrapping_add(1);
            b.limited
        };
        let verdict = if self.slip > 0 && limited % self.slip == 0 {
            self.slipped.inc();
            Verdict::Slip
        } else {
            self.dropped.inc();
            Verdict::Drop
        };
        if !self.is_logged.swap(true, Relaxed) {
            let prefix = if net.is_ipv4() {
                self.ipv4_prefix
            } else {
                self.ipv6_prefix
            };
            warn!(
                network = %format_args!("{net}/{prefix}"),
                kind = kind.as_str(),
                rate = self.rate,
                "response rate limit reached: UDP responses over the rate are dropped or truncated (logged once; see ruddr_dns_rate_limited_total)",
            );
        }
        verdict
    }

    /// The client's address with the host bits cleared.
    fn network(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.ipv4_prefix));
                Ipv4Addr::from(u32::from(a) & mask.unwrap_or(0)).into()
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix));
                Ipv6Addr::from(u128::from(a) & mask.unwrap_or(0)).into()
            }
        }
    }

    fn hash(&self, net: IpAddr, kind: Kind<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match net {
            IpAddr::V4(a) => h.write_u32(a.into()),
            IpAddr::V6(a) => h.write_u128(a.into()),
        }
        let name = match kind {
            Kind::Answer { name } => {
                h.write_u8(1);
                name
            }
            Kind::NxDomain { zone } => {
                h.write_u8(2);
                zone
            }
            Kind::Error => {
                h.write_u8(3);
                &[]
            }
        };
        h.write_usize(name.len());
        // Lower-cased through a stack buffer: no allocation, and few calls into the hasher.
        let mut buf = [0u8; 64];
        for chunk in name.chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            h.write(lower);
        }
        h.finish()
    }
}

/// An IPv4-mapped IPv6 network as the IPv4 network it is, since clients are compared by their
/// canonical address.
fn canonical_net(n: IpNet) -> IpNet {
    if let IpNet::V6(v6) = n {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4);
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NAME: Kind<'static> = Kind::Answer {
        name: b"web.svc.internal.",
    };

    fn config(rate: u32, slip: u32) -> RateLimitConfig {
        RateLimitConfig {
            responses_per_second: rate,
            slip,
            ..RateLimitConfig::default()
        }
    }

    fn limiter(cfg: &RateLimitConfig) -> (RateLimiter, Metrics, Instant) {
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let rrl = RateLimiter::with_epoch(cfg, &metrics, t0).expect("rate limiting is on");
        (rrl, metrics, t0)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Verdicts for `n` queries at once.
    fn burst(
        rrl: &RateLimiter,
        client: &str,
        kind: Kind<'_>,
        n: usize,
        at: Instant,
    ) -> Vec<Verdict> {
        (0..n).map(|_| rrl.check(ip(client), kind, at)).collect()
    }

    fn sends(v: &[Verdict]) -> usize {
        v.iter().filter(|v| **v == Verdict::Send).count()
    }

    #[test]
    fn off_by_default() {
        let cfg = RateLimitConfig::default();
        assert_eq!(cfg.responses_per_second, 0);
        assert!(RateLimiter::new(&cfg, &Metrics::new()).is_none());
    }

    #[test]
    fn within_rate_is_always_sent() {
        let (rrl, _, t0) = limiter(&config(10, 2));
        // 10 per second, evenly spaced, for a minute.
        for i in 0..600 {
            assert_eq!(
                rrl.check(ip("192.0.2.1"), NAME, t0 + ms(100 * i)),
                Verdict::Send,
                "query {i}"
            );
        }
    }

    #[test]
    fn flood_gets_burst_plus_rate_then_slip_pattern() {
        let (rrl, metrics, t0) = limiter(&config(10, 2));
        // 1000 queries in one second, one per millisecond.
        let v: Vec<Verdict> = (0..1000)
            .map(|i| rrl.check(ip("192.0.2.1"), NAME, t0 + ms(i)))
            .collect();
        // Burst (2 x 10) plus the refill of 999 ms (9 tokens, the 10th just short).
        assert_eq!(sends(&v), 29);
        // The first 20 go out at once; then the bucket is empty.
        assert!(v[..20].iter().all(|v| *v == Verdict::Send));
        assert_ne!(v[20], Verdict::Send);
        // Limited responses alternate drop, slip (every 2nd is truncated).
        let limited: Vec<_> = v.iter().filter(|v| **v != Verdict::Send).collect();
        for (i, v) in limited.iter().enumerate() {
            let want = if i % 2 == 1 {
                Verdict::Slip
            } else {
                Verdict::Drop
            };
            assert_eq!(**v, want, "limited response {i}");
        }
        let count = |action| {
            metrics
                .rate_limited
                .get_or_create(&RateLimitLabels { action })
                .get()
        };
        assert_eq!(count(RateLimitAction::slip), 485);
        assert_eq!(count(RateLimitAction::drop), 486);
    }

    #[test]
    fn slip_zero_drops_all_and_slip_one_truncates_all() {
        let (rrl, _, t0) = limiter(&config(5, 0));
        let v = burst(&rrl, "192.0.2.1", NAME, 100, t0);
        assert_eq!(sends(&v), 10);
        assert!(v[10..].iter().all(|v| *v == Verdict::Drop));

        let (rrl, _, t0) = limiter(&config(5, 1));
        let v = burst(&rrl, "192.0.2.1", NAME, 100, t0);
        assert_eq!(sends(&v), 10);
        assert!(v[10..].iter().all(|v| *v == Verdict::Slip));
    }

    #[test]
    fn the_whole_ipv4_network_shares_a_bucket_and_others_are_unaffected() {
        let (rrl, _, t0) = limiter(&config(5, 0));
        // Ten addresses of one /24 share its 10 tokens.
        for i in 0..10 {
            assert_eq!(
                rrl.check(ip(&format!("192.0.2.{i}")), NAME, t0),
                Verdict::Send
            );
        }
        assert_eq!(rrl.check(ip("192.0.2.200"), NAME, t0), Verdict::Drop);
        // As does the IPv4-mapped form of an address in it.
        assert_eq!(rrl.check(ip("::ffff:192.0.2.7"), NAME, t0), Verdict::Drop);
        // The next /24 has its own bucket.
        assert_eq!(sends(&burst(&rrl, "192.0.3.1", NAME, 20, t0)), 10);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_56() {
        let (rrl, _, t0) = limiter(&config(5, 0));
        assert_eq!(sends(&burst(&rrl, "2001:db8:0:ff::1", NAME, 6, t0)), 6);
        // Same /56 (2001:db8:0:00xx::).
        assert_eq!(sends(&burst(&rrl, "2001:db8:0:aa::2", NAME, 10, t0)), 4);
        // Next /56.
        assert_eq!(sends(&burst(&rrl, "2001:db8:0:100::1", NAME, 20, t0)), 10);
    }

    #[test]
    fn prefixes_follow_the_config() {
        let cfg = RateLimitConfig {
            ipv4_prefix: 32,
            ipv6_prefix: 0,
            ..config(5, 0)
        };
        let (rrl, _, t0) = limiter(&cfg);
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 20, t0)), 10);
        assert_eq!(sends(&burst(&rrl, "192.0.2.2", NAME, 20, t0)), 10);
        // /0: every IPv6 client is one network.
        assert_eq!(sends(&burst(&rrl, "2001:db8::1", NAME, 6, t0)), 6);
        assert_eq!(sends(&burst(&rrl, "fd00::1", NAME, 20, t0)), 4);
    }

    #[test]
    fn exempt_networks_are_never_limited() {
        let cfg = RateLimitConfig {
            exempt: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
                // Written mapped; matches the IPv4 client.
                "::ffff:198.51.100.0/120".parse().unwrap(),
            ],
            ..config(1, 2)
        };
        let (rrl, _, t0) = limiter(&cfg);
        for client in ["10.1.2.3", "::ffff:10.9.9.9", "fd00::53", "198.51.100.9"] {
            assert_eq!(
                sends(&burst(&rrl, client, NAME, 1000, t0)),
                1000,
                "{client}"
            );
        }
        // Everyone else is limited.
        assert_eq!(sends(&burst(&rrl, "11.0.0.1", NAME, 10, t0)), 2);
    }

    #[test]
    fn tokens_refill_over_time_up_to_twice_the_rate() {
        let (rrl, _, t0) = limiter(&config(10, 0));
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 50, t0)), 20);
        // 100 ms refills one token.
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 5, t0 + ms(100))), 1);
        // Half a second refills five.
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 50, t0 + ms(600))), 5);
        // A long pause refills the bucket, but only to its capacity.
        assert_eq!(
            sends(&burst(
                &rrl,
                "192.0.2.1",
                NAME,
                50,
                t0 + Duration::from_secs(3600)
            )),
            20
        );
        // A clock read earlier by another thread takes nothing back and adds nothing.
        assert_eq!(
            sends(&burst(
                &rrl,
                "192.0.2.1",
                NAME,
                5,
                t0 + Duration::from_secs(3599)
            )),
            0
        );
    }

    #[test]
    fn kinds_and_names_have_separate_buckets() {
        let (rrl, _, t0) = limiter(&config(5, 0));
        let nx = Kind::NxDomain {
            zone: b"svc.internal.",
        };
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", nx, 20, t0)), 10);
        // The NXDOMAIN flood leaves answers, other names and errors alone.
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 20, t0)), 10);
        let other = Kind::Answer {
            name: b"db.svc.internal.",
        };
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", other, 20, t0)), 10);
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", Kind::Error, 20, t0)), 10);
        // An answer keyed by the zone's name is not the zone's NXDOMAIN bucket.
        let apex = Kind::Answer {
            name: b"svc.internal.",
        };
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", apex, 20, t0)), 10);
    }

    #[test]
    fn names_are_compared_without_case() {
        let (rrl, _, t0) = limiter(&config(5, 0));
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 6, t0)), 6);
        let mixed = Kind::Answer {
            name: b"WeB.sVc.InTeRnAl.",
        };
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", mixed, 10, t0)), 4);
        // Longer than the hashing buffer: case still ignored across chunks.
        let long = "a".repeat(100) + ".svc.internal.";
        let upper = long.to_ascii_uppercase();
        let long = Kind::Answer {
            name: long.as_bytes(),
        };
        let upper = Kind::Answer {
            name: upper.as_bytes(),
        };
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", long, 6, t0)), 6);
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", upper, 10, t0)), 4);
    }

    #[test]
    fn a_one_slot_table_stays_bounded_and_only_under_limits() {
        let cfg = RateLimitConfig {
            table_size: 1,
            ..config(1, 0)
        };
        let (rrl, _, t0) = limiter(&cfg);
        assert_eq!(rrl.slots.len(), 1);
        // One key alone is limited as usual.
        assert_eq!(sends(&burst(&rrl, "192.0.2.1", NAME, 10, t0)), 2);
        // Keys taking turns in the one slot each start from a full bucket: never limited
        // wrongly, only too little.
        for i in 0..100 {
            let client = if i % 2 == 0 {
                "198.51.100.1"
            } else {
                "192.0.2.1"
            };
            assert_eq!(rrl.check(ip(client), NAME, t0), Verdict::Send);
        }
    }

    #[test]
    fn a_bucket_takes_the_memory_the_config_documents() {
        // rate_limit.table_size says "about 40 bytes each".
        assert!(std::mem::size_of::<Mutex<Bucket>>() <= 40);
    }

    #[test]
    fn a_small_table_holds_many_keys_without_panicking() {
        let cfg = RateLimitConfig {
            table_size: 7,
            ..config(1, 1)
        };
        let (rrl, _, t0) = limiter(&cfg);
        for i in 0..10_000u32 {
            let client = IpAddr::from(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
            let v = rrl.check(client, Kind::Error, t0 + ms(u64::from(i)));
            assert_ne!(v, Verdict::Drop);
        }
        assert_eq!(rrl.slots.len(), 7);
    }
}
