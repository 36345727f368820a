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

    /// The next ready server after the last one excluded, without moving the cursor. A retry that
    /// moved it would take the next request's turn: with two servers, every request would then
    /// meet a failing one first, and with more, the failing one would get more than its share of
    /// first tries.
    fn pick_other(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>, exclude: &[usize]) -> Option<usize> {
        let n = ups.len();
        let start = exclude.last().map_or(0, |&i| i.wrapping_add(1));
        (0..n).map(|k| start.wrapping_add(k) % n.max(1)).find(|i| !exclude.contains(i) && ups.is_ready(*i))
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
    fn a_retry_takes_the_next_server_and_leaves_the_turns_alone() {
        let (rr, ups, parts) = (RoundRobin::default(), pool(&[1, 1, 1]), ctx_parts());
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let ups = Upstreams(&ups);
        let mut first_tries = Vec::new();
        for _ in 0..6 {
            let first = rr.pick(&ctx, ups).unwrap();
            first_tries.push(first);
            if first == 0 {
                // Server 0 fails every request: the retry goes to the next server.
                assert_eq!(rr.pick_other(&ctx, ups, &[0]), Some(1));
            }
        }
        assert_eq!(
            first_tries,
            [0, 1, 2, 0, 1, 2],
            "the failing server gets its share of first tries, no more"
        );
        assert_eq!(rr.pick_other(&ctx, ups, &[2, 0]), Some(1));
        assert_eq!(rr.pick_other(&ctx, ups, &[0, 1, 2]), None);
        assert_eq!(rr.pick_other(&ctx, Upstreams(&pool(&[1, 0, 1])), &[0]), Some(2), "skips one not ready");
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
