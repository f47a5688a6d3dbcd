//! Capped exponential backoff with full jitter, for reconnecting to etcd.

use std::time::Duration;

use rand::Rng;

/// Delays grow from `base` doubling up to `cap`; each delay is drawn uniformly from
/// `[cap_now / 2, cap_now]`, so replicas that lost etcd together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + rand::rng().random_range(Duration::ZERO..=exp - half)
    }

    /// Call after a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter_and_resets() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut b = Backoff::new(base, cap);
        let first = b.next_delay();
        assert!(first >= base / 2 && first <= base);
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= cap, "{d:?} over cap");
        }
        let late = b.next_delay();
        assert!(late >= cap / 2);
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
