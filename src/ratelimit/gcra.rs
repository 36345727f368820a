//! The generic cell rate algorithm (GCRA), and the in-process buckets that use it.
//!
//! A bucket is one number, its theoretical arrival time (TAT): when it would be empty again if no
//! more requests came. A request is allowed if, after adding one emission interval, the TAT is at
//! most `burst` intervals ahead of now. This is a token bucket without a refill task or window edges:
//! `burst` requests may come at once, then one per interval. The same arithmetic runs in Redis for
//! shared buckets (`redis.rs`), so both stores answer the same way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A rule's rate: one request per `interval`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The emission interval: the period divided by the count of the configured rate.
    pub interval: Duration,
    /// Requests that may come at once (the bucket's size), at least 1.
    pub burst: u32,
}

impl Quota {
    fn interval_ns(&self) -> u64 {
        u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn capacity_ns(&self) -> u64 {
        self.interval_ns().saturating_mul(u64::from(self.burst.max(1)))
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `remaining` more may come now, and the bucket is full again after `reset`.
    Allow {
        /// Requests that would still be allowed right now.
        remaining: u32,
        /// Time until the bucket is full again.
        reset: Duration,
    },
    /// Over the limit; the next request is allowed after `retry_after`.
    Deny {
        /// Time until one more request is allowed.
        retry_after: Duration,
    },
}

/// GCRA on a bucket whose TAT is `tat` (nanoseconds on the store's clock) at `now`: the verdict, and
/// the new TAT if the request is allowed.
pub fn decide(tat: u64, now: u64, quota: Quota) -> (Verdict, Option<u64>) {
    let interval = quota.interval_ns();
    let capacity = quota.capacity_ns();
    let new_tat = tat.max(now).saturating_add(interval);
    let ahead = new_tat - now;
    if ahead > capacity {
        return (Verdict::Deny { retry_after: Duration::from_nanos(ahead - capacity) }, None);
    }
    let remaining = u32::try_from((capacity - ahead) / interval).unwrap_or(u32::MAX);
    (Verdict::Allow { remaining, reset: Duration::from_nanos(ahead) }, Some(new_tat))
}

/// Shards of the in-process buckets: a request locks one, for a hash-map lookup.
const SHARDS: usize = 16;

/// A rule's in-process buckets, by key hash. Bounded: a shard that reaches its share of `max_keys`
/// first forgets the buckets that are full again (they hold nothing a fresh one would not), and if
/// that is not enough, the half of its buckets nearest to full (each of those keys gains at most
/// what it had used of its burst; the buckets furthest over their limit are the last to go).
#[derive(Debug)]
pub struct LocalBuckets {
    quota: Quota,
    max_keys: usize,
    per_shard: usize,
    /// The clock: tokio's, so that tests can run it paused.
    start: tokio::time::Instant,
    shards: [Mutex<HashMap<u64, u64>>; SHARDS],
}

impl LocalBuckets {
    /// Empty buckets for `quota`, holding at most about `max_keys` keys.
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        Self {
            quota,
            max_keys,
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            start: tokio::time::Instant::now(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// The quota these buckets count.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one request from `key`'s bucket, if it allows one.
    pub fn take(&self, key: u64) -> Verdict {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(key >> 60) as usize % SHARDS];
        let Ok(mut buckets) = shard.lock() else {
            // A panic elsewhere while holding this lock: do not limit with broken state.
            return Verdict::Allow { remaining: 0, reset: Duration::ZERO };
        };
        let tat = buckets.get(&key).copied().unwrap_or(0);
        let (verdict, new_tat) = decide(tat, now, self.quota);
        if let Some(new_tat) = new_tat {
            if buckets.len() >= self.per_shard && !buckets.contains_key(&key) {
                buckets.retain(|_, tat| *tat > now);
                if buckets.len() >= self.per_shard {
                    // Still full: drop the half nearest to full again (the lowest TATs), so a flood
                    // of new keys never resets the buckets of clients that are over their limit.
                    let mut tats: Vec<u64> = buckets.values().copied().collect();
                    let middle = tats.len() / 2;
                    let (_, median, _) = tats.select_nth_unstable(middle);
                    let median = *median;
                    buckets.retain(|_, tat| *tat > median);
                }
            }
            buckets.insert(key, new_tat);
        }
        verdict
    }

    /// The most keys it holds (about).
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Keys held now (for `/status`).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota { interval: Duration::from_secs(1) / per_second, burst }
    }

    fn allowed(v: Verdict) -> bool {
        matches!(v, Verdict::Allow { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate_then_recovery() {
        let b = LocalBuckets::new(quota(10, 5), 1000);
        // The burst: 5 at once, counting down.
        for left in (0..5).rev() {
            assert!(matches!(b.take(1), Verdict::Allow { remaining, .. } if remaining == left));
        }
        let Verdict::Deny { retry_after } = b.take(1) else { panic!("the sixth is over the burst") };
        assert_eq!(retry_after, Duration::from_millis(100));
        assert!(allowed(b.take(2)), "another key has its own bucket");
        // Then one per 100 ms, not more.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(allowed(b.take(1)));
            assert!(!allowed(b.take(1)));
        }
        // Idle for the bucket's whole size: the full burst again, and no more.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..10).filter(|_| allowed(b.take(1))).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_at_the_rate_is_never_refused() {
        let b = LocalBuckets::new(quota(4, 1), 1000);
        for _ in 0..100 {
            assert!(allowed(b.take(7)));
            tokio::time::advance(Duration::from_millis(250)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_keys_does_not_reset_a_client_over_its_limit() {
        let b = LocalBuckets::new(quota(1, 5), 160);
        // Key 7 is spent for the next 5 s.
        for _ in 0..5 {
            b.take(7);
        }
        let Verdict::Deny { .. } = b.take(7) else { panic!("spent") };
        for key in 0..100_000u64 {
            // All in key 7's shard (the top four bits pick it).
            b.take(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 4);
            tokio::time::advance(Duration::from_micros(1)).await;
        }
        assert!(matches!(b.take(7), Verdict::Deny { .. }), "still over its limit");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_a_flood_of_keys() {
        let b = LocalBuckets::new(quota(1, 1), 1600);
        for key in 0..100_000u64 {
            b.take(key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(b.keys() <= 1600, "{}", b.keys());
        // Buckets that refilled are the first to go.
        tokio::time::advance(Duration::from_secs(2)).await;
        b.take(42);
        assert!(b.keys() <= 1600);
    }

    #[test]
    fn the_arithmetic_reports_reset_and_retry() {
        let q = quota(2, 2);
        let (v, tat) = decide(0, 1_000_000_000, q);
        assert_eq!(v, Verdict::Allow { remaining: 1, reset: Duration::from_millis(500) });
        let (v, tat) = decide(tat.unwrap(), 1_000_000_000, q);
        assert_eq!(v, Verdict::Allow { remaining: 0, reset: Duration::from_secs(1) });
        let (v, none) = decide(tat.unwrap(), 1_100_000_000, q);
        assert_eq!(v, Verdict::Deny { retry_after: Duration::from_millis(400) });
        assert!(none.is_none());
    }
}
