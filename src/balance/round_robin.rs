//! `round_robin`: each ready server in turn, weights ignored (use `weighted` for shares).

use super::{PickCtx, Strategy, Upstreams};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared cursor; the n-th pick goes to the (n mod ready)-th ready server, so servers that are not
/// ready are skipped without skewing the rotation of the others.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        let ready = ups.ready().count();
        if ready == 0 {
            return None;
        }
        // Relaxed: concurrent picks only need distinct cursor values, not ordering with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed) % ready;
        ups.ready().nth(n).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{client, parts, pool};

    fn picks(rr: &RoundRobin, weights: &[u32], n: usize) -> Vec<usize> {
        let ups = pool(weights);
        let parts = parts();
        let ctx = PickCtx {
            client: client(),
            parts: &parts,
        };
        (0..n).map(|_| rr.pick(&ctx, Upstreams(&ups)).unwrap()).collect()
    }

    #[test]
    fn rotates_evenly() {
        assert_eq!(
            picks(&RoundRobin::default(), &[1, 1, 1], 6),
            vec![0, 1, 2, 0, 1, 2]
        );
    }

    #[test]
    fn skips_servers_that_are_not_ready() {
        assert_eq!(picks(&RoundRobin::default(), &[1, 0, 1], 4), vec![0, 2, 0, 2]);
    }

    #[test]
    fn none_when_nothing_is_ready() {
        let ups = pool(&[0, 0]);
        let parts = parts();
        let ctx = PickCtx {
            client: client(),
            parts: &parts,
        };
        assert_eq!(RoundRobin::default().pick(&ctx, Upstreams(&ups)), None);
        assert_eq!(RoundRobin::default().pick(&ctx, Upstreams(&[])), None);
    }
}
