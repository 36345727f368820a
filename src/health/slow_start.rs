//! Slow start: a server that comes back gets a share of its weight that grows linearly from 1/STEPS
//! to full over the pool's `slow_start` time, so a cold cache or JIT is not hit by a full share at
//! once (nginx's `slow_start`, HAProxy's `slowstart`).
//!
//! A short task raises [`super::Health`]'s warm-up share step by step; the request path reads one
//! atomic and turns away picks of a warming server with probability `1 - share` (see
//! `runtime::Pool`), which works the same for every strategy. The ramp stops early if the server
//! goes down again (its epoch changes).

use super::FULL;
use crate::upstream::UpstreamStats;
use std::sync::Arc;
use std::time::Duration;

/// Most steps of a ramp.
const STEPS: u32 = 50;
/// Shortest time between two steps.
const MIN_STEP: Duration = Duration::from_millis(100);

/// The share (permille) after `step` of `steps` steps.
pub fn share(step: u32, steps: u32) -> u32 {
    (FULL * step / steps.max(1)).clamp(1, FULL)
}

/// How many steps a ramp over `over` takes, and how long each is.
pub fn steps(over: Duration) -> (u32, Duration) {
    let steps = u32::try_from(over.as_millis() / MIN_STEP.as_millis()).unwrap_or(STEPS).clamp(1, STEPS);
    (steps, over / steps)
}

/// Starts a ramp for the server whose up period is `epoch`.
pub fn ramp(stats: Arc<UpstreamStats>, over: Duration, epoch: u64) {
    let (steps, every) = steps(over);
    stats.health.set_warmup(share(1, steps));
    tokio::spawn(async move {
        for step in 2..=steps {
            tokio::time::sleep(every).await;
            if stats.health.epoch() != epoch {
                return;
            }
            stats.health.set_warmup(share(step, steps));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_at_least_100ms_and_at_most_50() {
        assert_eq!(steps(Duration::from_secs(30)), (50, Duration::from_millis(600)));
        assert_eq!(steps(Duration::from_secs(1)), (10, Duration::from_millis(100)));
        assert_eq!(steps(Duration::from_millis(50)), (1, Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn ramps_linearly_to_full_then_stops_when_superseded() {
        let stats = Arc::new(UpstreamStats::default());
        let epoch = stats.health.next_epoch();
        ramp(Arc::clone(&stats), Duration::from_secs(10), epoch);
        assert_eq!(stats.health.warmup(), 20, "starts at 1/50");
        tokio::time::sleep(Duration::from_millis(5_010)).await;
        assert_eq!(stats.health.warmup(), 520, "half-way after half the time");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(stats.health.warmup(), FULL);

        let epoch = stats.health.next_epoch();
        ramp(Arc::clone(&stats), Duration::from_secs(10), epoch);
        tokio::time::sleep(Duration::from_millis(1_010)).await;
        let at = stats.health.warmup();
        stats.health.next_epoch(); // the server went down: this ramp is stale
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(stats.health.warmup(), at, "a stale ramp stops");
    }
}
