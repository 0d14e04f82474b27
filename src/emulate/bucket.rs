//! Batch's rate limits: one token bucket per endpoint for the project the emulator serves.
//!
//! - One token per operation (one custom id in a request), whatever its number of events.
//! - `/profiles/update`: 300 tokens/s, capacity 1,000 (the documented burst).
//!   `/profiles/mass-update`: 10,000 tokens/s, capacity 10,000 (no burst beyond one second).
//! - A request takes all its tokens or none: when the bucket holds fewer tokens than the
//!   request has operations, the request is refused (429) and the bucket is left as it was.
//! - Buckets start full. The emulator accepts exactly one project key, so one pair of buckets
//!   is the per-project limiter.
//! - Pure: the caller passes the time in (tokio's `Instant`, which tests may pause).

use tokio::time::Instant;

use super::Endpoint;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn full(capacity: f64, per_second: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            updated: now,
        }
    }

    /// Takes `n` tokens if the bucket holds that many at `now`; otherwise takes none.
    pub(crate) fn try_take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        // A clock that goes backwards must not refill twice.
        self.updated = self.updated.max(now);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The two buckets of the project.
#[derive(Debug, Clone)]
pub(crate) struct ProjectLimits {
    update: TokenBucket,
    mass_update: TokenBucket,
}

impl ProjectLimits {
    pub(crate) const UPDATE_PER_SECOND: f64 = 300.0;
    pub(crate) const UPDATE_BURST: f64 = 1_000.0;
    pub(crate) const MASS_UPDATE_PER_SECOND: f64 = 10_000.0;

    pub(crate) fn new(now: Instant) -> Self {
        ProjectLimits {
            update: TokenBucket::full(Self::UPDATE_BURST, Self::UPDATE_PER_SECOND, now),
            mass_update: TokenBucket::full(
                Self::MASS_UPDATE_PER_SECOND,
                Self::MASS_UPDATE_PER_SECOND,
                now,
            ),
        }
    }

    pub(crate) fn try_take(&mut self, endpoint: Endpoint, operations: usize, now: Instant) -> bool {
        match endpoint {
            Endpoint::Update => self.update.try_take(operations, now),
            Endpoint::MassUpdate => self.mass_update.try_take(operations, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rstest::rstest;

    use super::*;

    #[test]
    fn a_full_update_bucket_allows_the_burst_then_refuses() {
        let t0 = Instant::now();
        let mut limits = ProjectLimits::new(t0);
        for _ in 0..5 {
            assert!(limits.try_take(Endpoint::Update, 200, t0));
        }
        assert!(!limits.try_take(Endpoint::Update, 1, t0));
    }

    #[test]
    fn a_refused_request_takes_no_tokens() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(10.0, 1.0, t0);
        assert!(!bucket.try_take(11, t0));
        assert!(bucket.try_take(10, t0));
    }

    #[rstest]
    #[case::nothing_after_no_time(Duration::ZERO, 1, false)]
    #[case::a_hundred_tokens_after_a_third_of_a_second(Duration::from_millis(334), 100, true)]
    #[case::not_quite_enough(Duration::from_millis(330), 100, false)]
    #[case::refill_caps_at_capacity(Duration::from_secs(60), 1_001, false)]
    #[case::a_full_burst_after_long_idle(Duration::from_secs(60), 1_000, true)]
    fn an_empty_update_bucket_refills_at_300_per_second(
        #[case] wait: Duration,
        #[case] take: usize,
        #[case] allowed: bool,
    ) {
        let t0 = Instant::now();
        let mut limits = ProjectLimits::new(t0);
        assert!(limits.try_take(Endpoint::Update, 1_000, t0));
        assert_eq!(limits.try_take(Endpoint::Update, take, t0 + wait), allowed);
    }

    #[test]
    fn mass_update_has_its_own_bucket_of_ten_thousand() {
        let t0 = Instant::now();
        let mut limits = ProjectLimits::new(t0);
        assert!(limits.try_take(Endpoint::Update, 1_000, t0));
        assert!(limits.try_take(Endpoint::MassUpdate, 10_000, t0));
        assert!(!limits.try_take(Endpoint::MassUpdate, 1, t0));
        assert!(limits.try_take(Endpoint::MassUpdate, 5_000, t0 + Duration::from_millis(500)));
    }
}
