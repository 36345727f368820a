//! Per-server traffic figures for the operators' console: answers by outcome and a small fixed
//! histogram of upstream response times, all cumulative since the server was first seen.
//!
//! The console reads these counters every few seconds and differences two readings itself, so
//! requests/s, the 5xx share and p50/p99 over the last interval cost the request path three relaxed
//! atomic adds and no lock, allocation or clock read (the response time is the one the Prometheus
//! histogram already measured). The counters live in the server's shared state, so they survive
//! reloads like the rest of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds; a last bucket counts everything slower.
/// Roughly 1-2.5-5 per decade: p50/p99 come out within one bucket, which is what a glance needs.
pub const BOUNDS_MS: [f64; 17] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0,
];

/// Number of latency buckets: one per bound, plus the overflow bucket.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// Cumulative traffic counters of one server. Lock-free.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Answers relayed from the server (any status).
    answered: AtomicU64,
    /// Of those, 5xx answers.
    errors: AtomicU64,
    /// Upstream response times (request sent to response head), by bucket.
    latency: [AtomicU64; BUCKETS],
}

impl Traffic {
    /// Counts one answer with HTTP status `status`.
    pub fn answered(&self, status: u16) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one upstream response time, in seconds (as the Prometheus histogram takes it).
    pub fn responded(&self, secs: f64) {
        let ms = secs * 1000.0;
        // A linear scan of 17 constants: cheaper than a binary search at this size, and branch-
        // predictable since most responses land in the same few buckets.
        let i = BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(BOUNDS_MS.len());
        if let Some(bucket) = self.latency.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads every counter (each one atomically; together they may straddle a request).
    pub fn read(&self) -> Reading {
        Reading {
            answered: self.answered.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        }
    }
}

/// One reading of a server's [`Traffic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// Answers relayed so far.
    pub answered: u64,
    /// 5xx answers so far.
    pub errors: u64,
    /// Response times so far, by bucket of [`BOUNDS_MS`] (the last one: slower than all bounds).
    pub latency: [u64; BUCKETS],
}

impl Reading {
    /// The `q` quantile (0..=1) of the response times counted between `earlier` and `self`, as the
    /// upper bound of the bucket it falls in; `None` without responses in between, or when it falls
    /// in the overflow bucket. The console does the same sum in JavaScript; this one is for tests
    /// and anyone reading two `/status` documents.
    pub fn quantile_since(&self, earlier: &Reading, q: f64) -> Option<Duration> {
        let counts: Vec<u64> =
            self.latency.iter().zip(&earlier.latency).map(|(now, then)| now.saturating_sub(*then)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return BOUNDS_MS.get(i).map(|ms| Duration::from_secs_f64(ms / 1000.0));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_5xx_are_counted() {
        let t = Traffic::default();
        for status in [200, 404, 502, 503] {
            t.answered(status);
        }
        let r = t.read();
        assert_eq!((r.answered, r.errors), (4, 2));
    }

    #[test]
    fn response_times_land_in_their_bucket_and_quantiles_difference_readings() {
        let t = Traffic::default();
        let before = t.read();
        for _ in 0..98 {
            t.responded(0.003); // 3 ms: the 5 ms bucket
        }
        t.responded(0.2); // 250 ms bucket
        t.responded(120.0); // overflow
        let after = t.read();
        assert_eq!(after.latency[4], 98);
        assert_eq!(after.latency[BUCKETS - 1], 1);
        assert_eq!(after.quantile_since(&before, 0.5), Some(Duration::from_millis(5)));
        assert_eq!(after.quantile_since(&before, 0.99), Some(Duration::from_millis(250)));
        assert_eq!(after.quantile_since(&before, 1.0), None, "slower than every bound");
        assert_eq!(after.quantile_since(&after, 0.5), None, "nothing in between");
    }

    #[test]
    fn bounds_are_increasing() {
        assert!(BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }
}
