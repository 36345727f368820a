//! `weighted`: smooth weighted round robin, the nginx algorithm.
//!
//! The interleaved sequence (weights 5,1,1 give `a a b a c a a`) is computed once at build time and
//! then walked with an atomic cursor, so `pick` is lock-free and O(1) while servers are ready. Shares
//! are exact over each full cycle. Servers that are not ready are skipped in place: their turns go to
//! the next entries of the sequence, which keeps the others interleaved.

use super::{PickCtx, Strategy, Upstreams};
use crate::upstream::Upstream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest precomputed cycle. Larger weight sums are scaled down to fit (shares then exact to within
/// one entry in 65,536).
const MAX_CYCLE: u64 = 1 << 16;
/// Bound on build work (cycle length x servers), so a huge pool still builds in milliseconds.
const MAX_BUILD_STEPS: u64 = 1 << 26;

/// Smooth weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub struct Weighted {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl Weighted {
    /// Builds the cycle from the servers' weights (weight 0 servers never appear).
    pub fn new(ups: &[Arc<Upstream>]) -> Self {
        let weights: Vec<u64> = ups.iter().map(|u| u64::from(u.weight)).collect();
        Self { cycle: smooth_cycle(&weights).into(), next: AtomicUsize::new(0) }
    }
}

impl Strategy for Weighted {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        let len = self.cycle.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let first = self.cycle[start] as usize;
        if ups.is_ready(first) {
            return Some(first);
        }
        // Slow path: skip entries of servers that are not ready, but only if any server is.
        ups.ready().next()?;
        (1..len).map(|k| self.cycle[(start + k) % len] as usize).find(|&i| ups.is_ready(i))
    }

    /// The next entry of the cycle that is ready and not excluded, without moving the cursor: a
    /// retry that moved it would take the next request's turn (with two equal servers, every
    /// request would meet a failing one first).
    fn pick_other(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>, exclude: &[usize]) -> Option<usize> {
        let len = self.cycle.len();
        let start = self.next.load(Ordering::Relaxed) % len.max(1);
        (0..len)
            .map(|k| self.cycle[(start + k) % len] as usize)
            .find(|i| !exclude.contains(i) && ups.is_ready(*i))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The smooth weighted round-robin cycle for `weights`, as server indices.
pub(crate) fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|&x| x / g).collect();
    let limit = MAX_CYCLE.min(MAX_BUILD_STEPS / w.len().max(1) as u64).max(w.len() as u64);
    let sum: u64 = w.iter().sum();
    if sum > limit {
        // Scale down, keeping every server with a weight in the cycle at least once.
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * limit / sum).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{ctx_parts, pool};
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};

    #[test]
    fn a_retry_leaves_the_turns_alone() {
        let (w, ups, parts) = (Weighted::new(&pool(&[1, 1])), pool(&[1, 1]), ctx_parts());
        let ctx = PickCtx { client: crate::balance::testing::client(), parts: &parts, hash: None };
        let ups = Upstreams(&ups);
        let mut first_tries = Vec::new();
        for _ in 0..4 {
            let first = w.pick(&ctx, ups).unwrap();
            first_tries.push(first);
            if first == 0 {
                assert_eq!(w.pick_other(&ctx, ups, &[0]), Some(1));
            }
        }
        assert_eq!(first_tries, [0, 1, 0, 1], "the failing server gets its share of first tries, no more");
        assert_eq!(w.pick_other(&ctx, ups, &[0, 1]), None);
    }

    #[test]
    fn nginx_example_interleaves() {
        let names: String = smooth_cycle(&[5, 1, 1]).iter().map(|&i| (b'a' + i as u8) as char).collect();
        assert_eq!(names, "aabacaa");
    }

    #[test]
    fn skips_servers_that_are_not_ready() {
        let ups = pool(&[2, 0, 1]);
        let w = Weighted::new(&ups);
        let parts = ctx_parts();
        let ctx = PickCtx { client: crate::balance::testing::client(), parts: &parts, hash: None };
        let picks: Vec<_> = (0..6).map(|_| w.pick(&ctx, Upstreams(&ups)).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 0, 2, 0]);
        assert_eq!(Weighted::new(&pool(&[0, 0])).pick(&ctx, Upstreams(&pool(&[0, 0]))), None);
    }

    fn run_bound(heaviest: u64, total: u64) -> u64 {
        2 * heaviest.div_ceil(total - heaviest)
    }

    #[test]
    fn the_run_bound_rejects_bursts() {
        // A burst-style cycle for weights 32,2,1 (all of one server, then the others) breaks it.
        let bursty: Vec<u32> = std::iter::repeat_n(2, 32).chain([0, 0, 1]).collect();
        assert!(max_run(&bursty) as u64 > run_bound(32, 35));
        assert!(max_run(&smooth_cycle(&[2, 1, 32])) as u64 <= run_bound(32, 35));
    }

    /// Longest run of one server, counting across the end of a cycle into the next.
    fn max_run(cycle: &[u32]) -> usize {
        let twice: Vec<u32> = cycle.iter().chain(cycle).copied().collect();
        twice.chunk_by(|a, b| a == b).map(<[u32]>::len).max().unwrap_or(0)
    }

    proptest! {
        #[test]
        fn shares_are_exact_over_one_cycle(weights in prop::collection::vec(0u64..=50, 1..12)) {
            let cycle = smooth_cycle(&weights);
            let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
            for (i, &w) in weights.iter().enumerate() {
                let count = cycle.iter().filter(|&&c| c as usize == i).count() as u64;
                prop_assert_eq!(count, w.checked_div(g).unwrap_or(0));
            }
        }

        #[test]
        fn runs_are_bounded(weights in prop::collection::vec(1u64..=50, 2..12)) {
            let cycle = smooth_cycle(&weights);
            let g = weights.iter().copied().fold(0, gcd);
            let total: u64 = weights.iter().map(|w| w / g).sum();
            let heaviest = weights.iter().map(|w| w / g).max().unwrap();
            // The heaviest server's turns are spread over the others' gaps: ideally
            // ceil(heaviest / others) in a row; smooth WRR stays within twice that, even across
            // cycle boundaries (a burst-style WRR reaches `heaviest`).
            let bound = run_bound(heaviest, total);
            prop_assert!(max_run(&cycle) as u64 <= bound, "{:?} -> run {} > {}", weights, max_run(&cycle), bound);
        }

        #[test]
        fn never_picks_a_server_that_is_not_ready(weights in prop::collection::vec(0u32..=20, 1..10), picks in 1usize..200) {
            let ups = pool(&weights);
            let w = Weighted::new(&ups);
            let parts = ctx_parts();
            let ctx = PickCtx { client: crate::balance::testing::client(), parts: &parts, hash: None };
            for _ in 0..picks {
                match w.pick(&ctx, Upstreams(&ups)) {
                    Some(i) => prop_assert!(weights[i] > 0),
                    None => prop_assert!(weights.iter().all(|&w| w == 0)),
                }
            }
        }
    }

    #[test]
    fn huge_weight_sums_are_scaled_not_exploded() {
        let weights: Vec<u64> = (0..1000).map(|i| 1 + (i % 997)).collect();
        let cycle = smooth_cycle(&weights);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 1000);
        for i in 0..1000u32 {
            assert!(cycle.contains(&i), "server {i} vanished");
        }
    }
}
