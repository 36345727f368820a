//! `random`: weighted random choice. Each ready server is chosen with probability proportional to its
//! weight. Seedable (`seed = N` in the pool) so tests and simulations are repeatable.

use super::rng::Rng;
use super::{PickCtx, Strategy, Upstreams};
use crate::upstream::Upstream;
use std::sync::Arc;

/// Draws over the precomputed cumulative weights; unready servers cost a redraw, then a scan.
#[derive(Debug)]
pub struct Random {
    /// `cumulative[i]` = sum of weights of servers `0..=i`.
    cumulative: Box<[u64]>,
    rng: Rng,
}

/// Draws before falling back to a scan of the ready servers.
const DRAWS: usize = 4;

impl Random {
    /// Weighted random over `ups`.
    pub fn new(ups: &[Arc<Upstream>], rng: Rng) -> Self {
        let cumulative = ups
            .iter()
            .scan(0u64, |sum, u| {
                *sum += u64::from(u.weight);
                Some(*sum)
            })
            .collect();
        Self { cumulative, rng }
    }
}

impl Strategy for Random {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        for _ in 0..DRAWS {
            let r = self.rng.next_u64() % total;
            let i = self.cumulative.partition_point(|&c| c <= r);
            if ups.is_ready(i) {
                return Some(i);
            }
        }
        // Several draws hit servers that are not ready: choose among the ready ones directly.
        let ready_weight: u64 = ups.ready().map(|(_, u)| u64::from(u.weight)).sum();
        if ready_weight == 0 {
            return None;
        }
        let mut r = self.rng.next_u64() % ready_weight;
        for (i, u) in ups.ready() {
            let w = u64::from(u.weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{client, ctx_parts, pool};

    #[test]
    fn shares_follow_weights_and_skip_unready() {
        let ups = pool(&[1, 3, 0, 2]);
        let random = Random::new(&ups, Rng::new(42));
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let mut counts = [0usize; 4];
        for _ in 0..60_000 {
            counts[random.pick(&ctx, Upstreams(&ups)).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        for (i, expected) in [(0, 10_000), (1, 30_000), (3, 20_000)] {
            assert!(counts[i].abs_diff(expected) < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let ups = pool(&[1, 1, 1, 1]);
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let run = || {
            let r = Random::new(&ups, Rng::new(9));
            (0..20).map(|_| r.pick(&ctx, Upstreams(&ups)).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert_eq!(Random::new(&pool(&[0]), Rng::new(1)).pick(&ctx, Upstreams(&pool(&[0]))), None);
    }
}
