//! Per-client request rate limits: a token bucket per key (a user, a node,
//! an EC2 access key), shared by the native API (429) and the EC2 façade
//! (`RequestLimitExceeded`, which AWS SDKs retry with backoff).
//!
//! Pure logic: the caller passes the clock, so tests need no sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast one client may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests that may arrive at once after a quiet spell.
    pub burst: u32,
    /// Sustained requests per second.
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client key. Buckets that have refilled completely
/// are forgotten, so memory follows the clients active in the last few
/// seconds, not every client ever seen.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Mutex<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit: Mutex::new(limit),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> RateLimit {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_limit(&self, limit: RateLimit) {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
    }

    /// Whether `key` has no token left at `now` (and how long until it
    /// has one), without taking any: for refusing a client early, before
    /// the work whose failure [`RateLimiter::check`] charges.
    pub fn exhausted(&self, key: &str, now: Instant) -> Option<Duration> {
        let limit = self.limit();
        let burst = f64::from(limit.burst.max(1));
        let rate = limit.per_second.max(0.001);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.get(key)?;
        let tokens =
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / rate))
    }

    /// Takes one token for `key` at `now`; when none is left, how long
    /// until one is.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let limit = self.limit();
        let burst = f64::from(limit.burst.max(1));
        let rate = limit.per_second.max(0.001);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_key() {
        let l = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 2.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t0).is_ok());
        }
        let wait = l.check("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(l.exhausted("a", t0), Some(Duration::from_millis(500)));
        assert_eq!(l.exhausted("b", t0), None, "an unseen key has tokens");
        // Another client is not held back by the first.
        assert!(l.check("b", t0).is_ok());
        // Half a second later one more token has arrived, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check("a", t1).is_ok());
        assert!(l.check("a", t1).is_err());
        // A long quiet spell refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check("a", t2).is_ok());
        }
        assert!(l.check("a", t2).is_err());
    }
}
