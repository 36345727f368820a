//! Balancing strategies: the one seam for choosing a server.
//!
//! A strategy is built once per snapshot from its pool's servers and then only reads: `pick` must not
//! block, lock, allocate or await. Readiness is read live from each server, so a server that stops
//! being ready is skipped without rebuilding anything. Adding a strategy means one new file here and
//! one arm in [`build`] (plus its name in `config::StrategyKind`); the proxy does not change.
//! docs/balancing.md says when to use which, with measured distributions.

mod consistent_hash;
pub mod hash_key;
mod least_conn;
mod p2c;
mod random;
pub mod rng;
mod round_robin;
mod weighted;

pub use consistent_hash::{moved_share, ConsistentHash};
pub use least_conn::LeastConn;
pub use p2c::P2c;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

use crate::config::{PoolConfig, StrategyKind};
use crate::upstream::{PoolStats, Upstream};
use rng::Rng;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a strategy may look at when choosing: the client and the request head.
#[derive(Debug)]
pub struct PickCtx<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The request head (method, URI, headers).
    pub parts: &'a http::request::Parts,
    /// The request's hash key, extracted once per request by the pool (consistent hash only);
    /// `None` when the pool does not hash or the request lacks the key.
    pub hash: Option<u64>,
}

/// One pool's servers as of one snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams<'a>(pub &'a [Arc<Upstream>]);

impl<'a> Upstreams<'a> {
    /// Number of servers, ready or not.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the pool has no servers at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether server `i` may take a new request now.
    pub fn is_ready(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|u| u.is_ready())
    }

    /// The ready servers with their indices, in pool order.
    pub fn ready(&self) -> impl Iterator<Item = (usize, &'a Arc<Upstream>)> + 'a {
        self.0.iter().enumerate().filter(|(_, u)| u.is_ready())
    }
}

/// Chooses a server for a request.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Index of a *ready* server, or `None` when none is ready. Must not block, lock or allocate.
    fn pick(&self, ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> Option<usize>;

    /// A ready server not in `exclude` (for a retry, or to turn away from a server warming up), or
    /// `None`. By default the strategy's own choice if it avoids `exclude` within a few picks, else
    /// the least loaded of the others, scanning from just after the first excluded server (so a
    /// strategy that keeps choosing the excluded one, as least-connection does with a warming
    /// server, does not pour its traffic onto the first server of the pool).
    fn pick_other(&self, ctx: &PickCtx<'_>, ups: Upstreams<'_>, exclude: &[usize]) -> Option<usize> {
        if let Some(i) = (0..3).filter_map(|_| self.pick(ctx, ups)).find(|i| !exclude.contains(i)) {
            return Some(i);
        }
        let n = ups.len();
        let start = exclude.first().map_or(0, |&i| (i + 1) % n.max(1));
        let order = (start..n).chain(0..start).filter(|i| !exclude.contains(i));
        least_conn::least_loaded(order, ups)
    }
}

/// Builds the strategy a pool's config names, for that pool's servers. `load` is the pool's live
/// state (its in-flight total, which bounded-load hashing reads).
pub fn build(pool: &PoolConfig, ups: &[Arc<Upstream>], load: &Arc<PoolStats>) -> Box<dyn Strategy> {
    let rng = || pool.seed.map_or_else(Rng::from_entropy, Rng::new);
    match pool.strategy {
        StrategyKind::RoundRobin => Box::new(RoundRobin::default()),
        StrategyKind::Weighted => Box::new(Weighted::new(ups)),
        StrategyKind::LeastConn => Box::new(LeastConn::default()),
        StrategyKind::Random => Box::new(Random::new(ups, rng())),
        StrategyKind::P2c => Box::new(P2c::new(rng())),
        StrategyKind::ConsistentHash => {
            let (vnodes, factor) = pool.hash.as_ref().map_or((160, None), |h| (h.vnodes, h.balance_factor));
            Box::new(ConsistentHash::new(ups, vnodes, factor, Arc::clone(load)))
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for strategy tests: pools of servers with chosen weights.
    use super::*;
    use crate::upstream::{UpstreamKey, UpstreamStats};

    fn upstream(name: &str, i: usize, weight: u32) -> Arc<Upstream> {
        let addr = format!("127.0.0.1:{}", 9000 + i);
        let stats = Arc::new(UpstreamStats::default());
        Arc::new(Upstream {
            key: UpstreamKey { pool: "p".into(), name: name.into() },
            authority: addr.parse().unwrap(),
            addr,
            weight,
            max_in_flight: usize::MAX,
            checked: false,
            tls: None,
            metrics: crate::metrics::ServerMetrics::new("p", name, &stats),
            stats,
        })
    }

    /// Servers `s0, s1, ...` with the given weights.
    pub(crate) fn pool(weights: &[u32]) -> Vec<Arc<Upstream>> {
        weights.iter().enumerate().map(|(i, &w)| upstream(&format!("s{i}"), i, w)).collect()
    }

    /// Servers with the given names, weight 1.
    pub(crate) fn named_pool(names: &[String]) -> Vec<Arc<Upstream>> {
        names.iter().enumerate().map(|(i, n)| upstream(n, i, 1)).collect()
    }

    pub(crate) fn ctx_parts() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    pub(crate) fn client() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }
}
