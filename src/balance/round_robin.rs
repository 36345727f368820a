//! `round_robin`: each ready server in turn, weights ignored (use `weighted` for shares).

use super::{PickCtx, Strategy, Upstreams};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared cursor. While every server is ready, the n-th pick is server `n mod len` (O(1)). When the
/// one in turn is not ready, the pick is the `(n mod ready)`-th ready server, so the others keep
/// even shares instead of the next server inheriting the missing one's turns.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        if ups.is_empty() {
            return None;
        }
        // Relaxed: concurrent picks only need distinct cursor values, not ordering with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = n % ups.len();
        if ups.is_ready(i) {
            return Some(i);
        }
        let ready = ups.ready().count();
        if ready == 0 {
            return None;
        }
        ups.ready().nth(n % ready).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{client, ctx_parts, pool};

    fn picks(rr: &RoundRobin, weights: &[u32], n: usize) -> Vec<usize> {
        let ups = pool(weights);
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        (0..n).map(|_| rr.pick(&ctx, Upstreams(&ups)).unwrap()).collect()
    }

    #[test]
    fn rotates_evenly() {
        assert_eq!(picks(&RoundRobin::default(), &[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_servers_that_are_not_ready() {
        let got = picks(&RoundRobin::default(), &[1, 0, 1], 600);
        assert!(!got.contains(&1));
        let first = got.iter().filter(|&&i| i == 0).count();
        assert!((250..=350).contains(&first), "ready servers keep about even shares: {first} of 600");
    }

    #[test]
    fn none_when_nothing_is_ready() {
        let ups = pool(&[0, 0]);
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        assert_eq!(RoundRobin::default().pick(&ctx, Upstreams(&ups)), None);
        assert_eq!(RoundRobin::default().pick(&ctx, Upstreams(&[])), None);
    }
}
