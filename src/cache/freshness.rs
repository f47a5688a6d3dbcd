//! How far the mirror can be trusted: the one place that turns the registry's connection state
//! and `max_stale` into what answers, readiness and metrics do with the data.

use std::time::Duration;

/// The state of the mirror's data, as answers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No data yet: neither etcd nor a snapshot filled the mirror. Registry names get
    /// SERVFAIL (ruddr cannot say a name does not exist).
    Empty,
    /// Following etcd.
    Current,
    /// Possibly behind etcd (etcd unreachable, or data from a snapshot file), for `age`
    /// (`None`: unknown), within `max_stale`. Answers carry the stale TTL (RFC 8767).
    Stale { age: Option<Duration> },
    /// Older than `max_stale`: registry names get SERVFAIL.
    Expired,
}

impl Freshness {
    /// Classifies the data: `has_data` (filled at least once), `connected` (the watch is up),
    /// `age` (how long it may have been behind etcd; `None` when current or unknown),
    /// `age_unknown` (a snapshot dated in the future), against `max_stale` (`None`: no limit).
    pub fn of(
        has_data: bool,
        connected: bool,
        age: Option<Duration>,
        age_unknown: bool,
        max_stale: Option<Duration>,
    ) -> Self {
        if !has_data {
            return Self::Empty;
        }
        if connected {
            return Self::Current;
        }
        let expired = match (max_stale, age) {
            (Some(max), Some(age)) => age > max,
            (Some(_), None) => age_unknown,
            (None, _) => false,
        };
        if expired {
            Self::Expired
        } else {
            Self::Stale {
                age: age.filter(|_| !age_unknown),
            }
        }
    }

    /// Whether registry names may be answered from the data (positively or negatively).
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Current | Self::Stale { .. })
    }

    pub fn is_stale(self) -> bool {
        matches!(self, Self::Stale { .. })
    }

    /// The TTL for an answer whose normal TTL is `ttl`: while stale, `stale_ttl` replaces it,
    /// for every kind of registry answer (RFC 8767).
    pub fn ttl(self, ttl: u32, stale_ttl: u32) -> u32 {
        if self.is_stale() {
            stale_ttl
        } else {
            ttl
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn classification() {
        assert_eq!(
            Freshness::of(false, false, None, false, None),
            Freshness::Empty
        );
        assert_eq!(
            Freshness::of(false, true, None, false, None),
            Freshness::Empty
        );
        assert_eq!(
            Freshness::of(true, true, None, false, Some(MIN)),
            Freshness::Current
        );
        let young = Some(Duration::from_secs(5));
        assert_eq!(
            Freshness::of(true, false, young, false, Some(MIN)),
            Freshness::Stale { age: young }
        );
        let old = Some(Duration::from_secs(61));
        assert_eq!(
            Freshness::of(true, false, old, false, Some(MIN)),
            Freshness::Expired
        );
        assert_eq!(
            Freshness::of(true, false, old, false, None),
            Freshness::Stale { age: old },
            "no max_stale: never expired"
        );
    }

    #[test]
    fn an_unknown_age_is_older_than_any_limit() {
        let huge = Some(Duration::MAX / 2);
        assert_eq!(
            Freshness::of(true, false, huge, true, Some(MIN)),
            Freshness::Expired
        );
        assert_eq!(
            Freshness::of(true, false, huge, true, None),
            Freshness::Stale { age: None }
        );
    }

    #[test]
    fn ttl_is_replaced_only_while_stale() {
        let stale = Freshness::Stale { age: None };
        assert_eq!(stale.ttl(5, 30), 30, "longer");
        assert_eq!(stale.ttl(300, 30), 30, "shorter");
        assert_eq!(Freshness::Current.ttl(5, 30), 5);
        assert!(!Freshness::Expired.is_usable() && !Freshness::Empty.is_usable());
        assert!(stale.is_usable() && Freshness::Current.is_usable());
    }
}
