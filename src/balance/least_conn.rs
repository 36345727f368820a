//! `least_conn`: the ready server with the fewest in-flight requests relative to its weight.
//!
//! In-flight counts come from the `InFlight` guards, which live until a response body ends or the
//! client goes away, so a server streaming slow responses counts as busy. Loads are compared
//! cross-multiplied (`a.in_flight * b.weight < b.in_flight * a.weight`), without division. The scan
//! starts at a rotating index so that ties (e.g. an idle pool) do not all land on the first server.
//! Two concurrent picks may see the same counts and choose the same server: a benign race, corrected
//! by the next picks, and the price of taking no lock.

use super::{PickCtx, Strategy, Upstreams};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Least in-flight requests per unit of weight.
#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Strategy for LeastConn {
    fn pick(&self, _ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        let n = ups.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Scan the slice in two plain runs (start.., ..start): no index arithmetic or bounds checks
        // per server, which is what a full scan of 100 servers spends its time on.
        let (tail, head) = (&ups.0[start..], &ups.0[..start]);
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, u) in tail.iter().enumerate().map(|(k, u)| (start + k, u)).chain(head.iter().enumerate()) {
            if !u.is_ready() {
                continue;
            }
            let (load, weight) = (u.stats.in_flight() as u64, u64::from(u.weight));
            if let Some((_, best_load, best_weight)) = best {
                if load * best_weight >= best_load * weight {
                    continue;
                }
            }
            best = Some((i, load, weight));
            if load == 0 {
                break; // nothing beats an idle server
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// The ready server among `order` with the lowest in-flight/weight; the first one wins ties.
pub(crate) fn least_loaded(order: impl Iterator<Item = usize>, ups: Upstreams<'_>) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for i in order {
        let Some(u) = ups.0.get(i) else { continue };
        if !u.is_ready() {
            continue;
        }
        let (load, weight) = (u.stats.in_flight() as u64, u64::from(u.weight));
        match best {
            Some((_, best_load, best_weight)) if load * best_weight >= best_load * weight => {}
            _ => {
                best = Some((i, load, weight));
                if load == 0 {
                    break; // nothing beats an idle server
                }
            }
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{client, ctx_parts, pool};
    use proptest::prelude::{prop, prop_assert, proptest};

    #[test]
    fn prefers_the_least_loaded_relative_to_weight() {
        let ups = pool(&[1, 1, 2]);
        let _busy: Vec<_> = (0..3).map(|_| ups[0].stats.begin(&Default::default())).collect();
        let _b = ups[1].stats.begin(&Default::default());
        let _c: Vec<_> = (0..2).map(|_| ups[2].stats.begin(&Default::default())).collect();
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        // Loads: 3/1, 1/1, 2/2 -> servers 1 and 2 tie at 1.0; both must be chosen over time.
        let lc = LeastConn::default();
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&ctx, Upstreams(&ups)).unwrap()).collect();
        assert!(!picks.contains(&0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "ties rotate: {picks:?}");
    }

    #[test]
    fn idle_pool_spreads_instead_of_piling_on_the_first() {
        let ups = pool(&[1, 1, 1]);
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let lc = LeastConn::default();
        let picks: Vec<_> = (0..3).map(|_| lc.pick(&ctx, Upstreams(&ups)).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }

    proptest! {
        #[test]
        fn picks_a_ready_server_with_minimal_load(
            servers in prop::collection::vec((0u32..=5, 0usize..8), 1..10),
            start in 0usize..10,
        ) {
            let weights: Vec<u32> = servers.iter().map(|s| s.0).collect();
            let ups = pool(&weights);
            let _guards: Vec<_> = servers.iter().enumerate()
                .flat_map(|(i, s)| (0..s.1).map(move |_| i))
                .map(|i| ups[i].stats.begin(&Default::default()))
                .collect();
            let lc = LeastConn { next: AtomicUsize::new(start) };
            let parts = ctx_parts();
            let ctx = PickCtx { client: client(), parts: &parts, hash: None };
            match lc.pick(&ctx, Upstreams(&ups)) {
                None => prop_assert!(weights.iter().all(|&w| w == 0)),
                Some(i) => {
                    prop_assert!(weights[i] > 0);
                    for (j, s) in servers.iter().enumerate().filter(|(_, s)| s.0 > 0) {
                        // load_i / w_i <= load_j / w_j
                        prop_assert!(servers[i].1 as u64 * u64::from(s.0) <= s.1 as u64 * u64::from(weights[i]), "{} beats {}", j, i);
                    }
                }
            }
        }
    }
}
