//! `consistent_hash`: a hash ring over a request key, with optional bounded load.
//!
//! Placement depends only on the config: each server gets `vnodes x weight` points, each the fixed-seed
//! hash of the server's *name* and the point's number, so every lb instance and every restart build
//! the same ring. A key goes to the first server clockwise from its hash. Servers that are not ready
//! are skipped, not removed, so no rebuild happens and only their keys move (to the next server on
//! the ring).
//!
//! Bounded load ("consistent hashing with bounded loads", Mirrokni et al.; HAProxy's
//! `hash-balance-factor`, Envoy's `hash_balance_factor`): with factor `c`, a server may take a new
//! request only while `in_flight + 1 <= ceil(c * (total_in_flight + 1) / ready_servers)`; a full server
//! is skipped and the walk continues clockwise. Since `c >= 1`, some server always has room. The
//! pool-wide total is a counter kept by the pool's in-flight guards, so the common case is O(1).

use super::hash_key::hash_point;
use super::round_robin::RoundRobin;
use super::{PickCtx, Strategy, Upstreams};
use crate::upstream::{PoolStats, Upstream};
use std::sync::Arc;

/// Most points on one ring (16 bytes each: 4 MiB). Huge pools or weights get fewer points per unit
/// of weight rather than an unbounded ring; placement stays deterministic.
pub(crate) const MAX_POINTS: u64 = 1 << 18;

/// A ring of `(point, server index)`, sorted by point.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: Box<[(u64, u32)]>,
    balance_factor: Option<f64>,
    /// The pool's live state: its in-flight total (bounded load), kept by the pool's guards.
    load: Arc<PoolStats>,
    /// Servers with a weight at build time: an upper bound on the ready servers.
    eligible: usize,
    /// For requests without a key (when the pool's fallback is round robin).
    fallback: RoundRobin,
}

impl ConsistentHash {
    /// Builds the ring for `ups` with `vnodes` points per unit of weight (fewer if the ring would
    /// exceed [`MAX_POINTS`]).
    pub fn new(
        ups: &[Arc<Upstream>],
        vnodes: u32,
        balance_factor: Option<f64>,
        load: Arc<PoolStats>,
    ) -> Self {
        let ring = ring(ups.iter().map(|u| (&*u.key.name, u.weight)), vnodes);
        Self {
            ring: ring.into(),
            balance_factor,
            load,
            eligible: ups.iter().filter(|u| u.weight > 0).count(),
            fallback: RoundRobin::default(),
        }
    }

    /// The first ready server clockwise from `hash`, not in `exclude`, that has room under the
    /// bounded-load cap.
    fn walk(&self, hash: u64, ups: Upstreams<'_>, exclude: &[usize]) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        let first = self.ring.get(start % len.max(1))?.1 as usize;
        // Fast path, O(1): the key's own server is ready and, with bounded load, below a cap computed
        // over every eligible server. That cap is never above the exact one (ready <= eligible).
        let quick_cap = self.balance_factor.map(|f| cap(f, self.load.in_flight(), self.eligible));
        let usable = |i: usize| ups.is_ready(i) && !exclude.contains(&i);
        if usable(first) && quick_cap.is_none_or(|c| in_flight(ups, first) < c) {
            return Some(first);
        }
        // Slow path: walk on with the exact cap over the ready servers, unless nothing is ready.
        let ready = ups.ready().count();
        if ready == 0 {
            return None;
        }
        let exact = self.balance_factor.map(|f| cap(f, self.load.in_flight(), ready));
        let candidates = || (0..len).map(|k| self.ring[(start + k) % len].1 as usize).filter(|&i| usable(i));
        candidates()
            .find(|&i| exact.is_none_or(|c| in_flight(ups, i) < c))
            // Every ready server full cannot happen with consistent counts (factor >= 1); if counts
            // drifted (e.g. across a reload), serving beats refusing.
            .or_else(|| candidates().next())
    }
}

fn in_flight(ups: Upstreams<'_>, i: usize) -> usize {
    ups.0.get(i).map_or(usize::MAX, |u| u.stats.in_flight())
}

/// `ceil(factor * (total + 1) / servers)`: the most in-flight requests a server may hold after taking
/// one more request.
fn cap(factor: f64, total: usize, servers: usize) -> usize {
    (factor * (total + 1) as f64 / servers.max(1) as f64).ceil() as usize
}

/// The ring of `servers` (`(name, weight)`, in pool order): `vnodes` points per unit of weight, fewer
/// if the ring would exceed [`MAX_POINTS`], each tagged with its server's index.
fn ring<'a>(servers: impl Iterator<Item = (&'a str, u32)> + Clone, vnodes: u32) -> Vec<(u64, u32)> {
    let total_weight: u64 = servers.clone().map(|(_, w)| u64::from(w)).sum();
    let per_weight = u64::from(vnodes).min(MAX_POINTS / total_weight.max(1));
    // Past MAX_POINTS units of weight, each server gets points in proportion to its weight (at least
    // one if weighted), so the ring stays near MAX_POINTS whatever the pool.
    let points = |weight: u32| match (weight, per_weight) {
        (0, _) => 0,
        (w, 0) => (u64::from(w) * MAX_POINTS / total_weight).max(1),
        (w, p) => u64::from(w) * p,
    };
    let size: u64 = servers.clone().map(|(_, w)| points(w)).sum();
    let mut ring = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    for (i, (name, weight)) in servers.enumerate() {
        for point in 0..u32::try_from(points(weight)).unwrap_or(u32::MAX) {
            ring.push((hash_point(name, point), i as u32));
        }
    }
    // Ties (vanishingly rare) are ordered by server index, so the ring is still deterministic.
    ring.sort_unstable();
    ring
}

/// The share of the key space (0.0 to 1.0) whose server changes between two rings, each given as
/// `(name, weight)` servers and vnodes: exact, by walking the arcs between every point of both rings
/// (servers are the same server when their names are). Readiness and bounded load are ignored: this
/// is where keys go when every server is up.
pub fn moved_share(old: &[(&str, u32)], old_vnodes: u32, new: &[(&str, u32)], new_vnodes: u32) -> f64 {
    let (a, b) = (ring(old.iter().copied(), old_vnodes), ring(new.iter().copied(), new_vnodes));
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        (false, false) => {}
    }
    let mut bounds: Vec<u64> = a.iter().chain(&b).map(|&(p, _)| p).collect();
    bounds.sort_unstable();
    bounds.dedup();
    // A key hashing into (previous bound, bound] goes to each ring's first point at or after `bound`;
    // keys after the last bound wrap around to the first bound's owners.
    fn owner<'n>(ring: &[(u64, u32)], names: &[(&'n str, u32)], at: u64) -> &'n str {
        let i = ring.partition_point(|&(p, _)| p < at) % ring.len();
        names[ring[i].1 as usize].0
    }
    let mut moved: u128 = 0;
    let mut previous = *bounds.last().unwrap_or(&0);
    for &bound in &bounds {
        let width = u128::from(bound.wrapping_sub(previous));
        // With a single bound the one arc is the whole ring.
        let width = if bounds.len() == 1 { 1u128 << 64 } else { width };
        if owner(&a, old, bound) != owner(&b, new, bound) {
            moved += width;
        }
        previous = bound;
    }
    moved as f64 / (1u128 << 64) as f64
}

impl Strategy for ConsistentHash {
    fn pick(&self, ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize> {
        match ctx.hash {
            Some(hash) => self.walk(hash, ups, &[]),
            None => self.fallback.pick(ctx, ups),
        }
    }

    /// With a key, the next usable server on the ring after the excluded ones: every lb instance
    /// retries a key on the same server. Without one, round robin's retry (which takes no turn from
    /// the rotation).
    fn pick_other(&self, ctx: &PickCtx<'_>, ups: Upstreams<'_>, exclude: &[usize]) -> Option<usize> {
        match ctx.hash {
            Some(hash) => self.walk(hash, ups, exclude),
            None => self.fallback.pick_other(ctx, ups, exclude),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash_key::hash_key_bytes;
    use crate::balance::testing::{client, ctx_parts, named_pool, pool};
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, proptest, ProptestConfig};

    fn load() -> Arc<PoolStats> {
        Arc::new(PoolStats::default())
    }

    fn place(ring: &ConsistentHash, ups: &[Arc<Upstream>], keys: u64) -> Vec<usize> {
        let parts = ctx_parts();
        (0..keys)
            .map(|k| {
                let ctx =
                    PickCtx { client: client(), parts: &parts, hash: Some(hash_key_bytes(&k.to_le_bytes())) };
                ring.pick(&ctx, Upstreams(ups)).unwrap()
            })
            .collect()
    }

    fn names(ups: &[Arc<Upstream>], placement: &[usize]) -> Vec<String> {
        placement.iter().map(|&i| ups[i].key.name.to_string()).collect()
    }

    #[test]
    fn moved_share_is_exact_against_placing_keys() {
        let before: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let after: Vec<String> = ["s0", "s1", "s3", "s4", "s5"].map(String::from).to_vec();
        let (old, new) = (named_pool(&before), named_pool(&after));
        let old_places = names(&old, &place(&ConsistentHash::new(&old, 160, None, load()), &old, 40_000));
        let new_places = names(&new, &place(&ConsistentHash::new(&new, 160, None, load()), &new, 40_000));
        let sampled = old_places.iter().zip(&new_places).filter(|(a, b)| a != b).count() as f64 / 40_000.0;
        fn pairs(v: &[String]) -> Vec<(&str, u32)> {
            v.iter().map(|n| (n.as_str(), 1)).collect()
        }
        let exact = moved_share(&pairs(&before), 160, &pairs(&after), 160);
        assert!((sampled - exact).abs() < 0.01, "sampled {sampled}, exact {exact}");
        // s2 leaves (its quarter moves) and two servers join (taking 2/5 of the rest).
        assert!((0.45..0.65).contains(&exact), "{exact}");
        assert_eq!(moved_share(&pairs(&before), 160, &pairs(&before), 160), 0.0);
        assert_eq!(moved_share(&[], 160, &pairs(&before), 160), 1.0);
        let reweighted = moved_share(&[("a", 1), ("b", 1)], 160, &[("a", 1), ("b", 3)], 160);
        // b keeps its points and gains more: only keys from a move, about a quarter of them all.
        assert!((0.15..0.35).contains(&reweighted), "b goes from 1/2 to 3/4 of the keys: {reweighted}");
    }

    #[test]
    fn keys_without_a_hash_use_the_fallback() {
        let ups = pool(&[1, 1]);
        let ch = ConsistentHash::new(&ups, 160, None, load());
        let parts = ctx_parts();
        let ctx = PickCtx { client: client(), parts: &parts, hash: None };
        let picks: Vec<_> = (0..4).map(|_| ch.pick(&ctx, Upstreams(&ups)).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn huge_rings_are_capped() {
        let ups = pool(&vec![1000; 100]);
        let ch = ConsistentHash::new(&ups, 1000, None, load());
        assert!(ch.ring.len() as u64 <= MAX_POINTS, "{} points", ch.ring.len());
        assert!(ch.ring.len() as u64 >= MAX_POINTS / 2, "still finely spread: {} points", ch.ring.len());
        // More units of weight than points: proportional points, at least one per weighted server.
        let names: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
        let mut servers: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1000)).collect();
        servers[0].1 = 0;
        let big = ring(servers.iter().copied(), 160);
        assert!(big.len() as u64 <= MAX_POINTS + 10_000, "{} points", big.len());
        assert!(big.iter().all(|&(_, i)| i != 0), "weight 0 has no point");
    }

    #[test]
    fn weight_scales_the_share() {
        let ups = pool(&[1, 3]);
        let ch = ConsistentHash::new(&ups, 160, None, load());
        let placement = place(&ch, &ups, 40_000);
        let heavy = placement.iter().filter(|&&i| i == 1).count();
        assert!((27_000..33_000).contains(&heavy), "{heavy} of 40000 on the weight-3 server");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn two_independent_builds_place_every_key_alike(n in 1usize..12) {
            let names_list: Vec<String> = (0..n).map(|i| format!("srv-{i}")).collect();
            let (a, b) = (named_pool(&names_list), named_pool(&names_list));
            let (ra, rb) = (ConsistentHash::new(&a, 160, None, load()), ConsistentHash::new(&b, 160, None, load()));
            prop_assert_eq!(place(&ra, &a, 2_000), place(&rb, &b, 2_000));
        }

        #[test]
        fn removing_a_server_moves_only_its_keys(n in 2usize..12, victim in 0usize..12) {
            let victim = victim % n;
            let all: Vec<String> = (0..n).map(|i| format!("srv-{i}")).collect();
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s.clone()).collect();
            let (full, less) = (named_pool(&all), named_pool(&rest));
            let before = names(&full, &place(&ConsistentHash::new(&full, 160, None, load()), &full, 3_000));
            let after = names(&less, &place(&ConsistentHash::new(&less, 160, None, load()), &less, 3_000));
            for (b, a) in before.iter().zip(&after) {
                if *b != all[victim] {
                    prop_assert_eq!(b, a, "a key not on the removed server moved");
                }
            }
        }

        #[test]
        fn an_unready_server_moves_only_its_keys(n in 2usize..12, victim in 0usize..12) {
            let victim = victim % n;
            let ups = pool(&vec![1; n]);
            let ch = ConsistentHash::new(&ups, 160, None, load());
            let before = place(&ch, &ups, 3_000);
            let mut drained = pool(&vec![1; n]);
            Arc::get_mut(&mut drained[victim]).unwrap().weight = 0; // not ready, same ring
            let after = place(&ch, &drained, 3_000);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(*a != victim);
                if *b != victim {
                    prop_assert_eq!(b, a);
                }
            }
        }

        #[test]
        fn adding_a_server_moves_about_its_share(n in 2usize..16) {
            let old: Vec<String> = (0..n).map(|i| format!("srv-{i}")).collect();
            let mut new = old.clone();
            new.push(format!("srv-{n}"));
            let (a, b) = (named_pool(&old), named_pool(&new));
            let keys = 20_000u64;
            let before = names(&a, &place(&ConsistentHash::new(&a, 160, None, load()), &a, keys));
            let after = names(&b, &place(&ConsistentHash::new(&b, 160, None, load()), &b, keys));
            let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count() as f64 / keys as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            // Every moved key went to the new server, and about 1/(N+1) of them moved.
            prop_assert!(before.iter().zip(&after).all(|(x, y)| x == y || *y == new[n]));
            prop_assert!((moved - ideal).abs() < ideal * 0.35 + 0.01, "moved {:.3}, ideal {:.3}", moved, ideal);
        }

        #[test]
        fn bounded_load_caps_every_server(
            n in 2usize..8,
            factor in 1.0f64..2.0,
            ops in prop::collection::vec((any::<bool>(), 0u64..8), 50..400),
        ) {
            // Few distinct keys: an unbounded ring would pile them onto one or two servers.
            let ups = pool(&vec![1; n]);
            let pool_stats = load();
            let ch = ConsistentHash::new(&ups, 160, Some(factor), Arc::clone(&pool_stats));
            let parts = ctx_parts();
            let mut held: Vec<crate::upstream::InFlight> = Vec::new();
            for (arrive, key) in ops {
                if !arrive && !held.is_empty() {
                    drop(held.remove(0));
                    continue;
                }
                let ctx = PickCtx { client: client(), parts: &parts, hash: Some(hash_key_bytes(&key.to_le_bytes())) };
                let i = ch.pick(&ctx, Upstreams(&ups)).unwrap();
                held.push(ups[i].stats.begin(&pool_stats));
                let total = held.len();
                let cap = (factor * total as f64 / n as f64).ceil() as usize;
                prop_assert!(ups[i].stats.in_flight() <= cap, "server {} holds {} > cap {}", i, ups[i].stats.in_flight(), cap);
            }
        }
    }
}
