//! The live routing state: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload (a single `store` of a fully
//! built snapshot) never mixes two configs within one request. Per-server live state is re-attached by
//! stable identity on every build, so counters survive reloads.

use crate::balance::{self, hash_key, PickCtx, Strategy, Upstreams};
use crate::config::{Config, HashConfig, HashFallback};
use crate::router::Router;
use crate::upstream::{InFlight, Upstream, UpstreamKey, UpstreamStats};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One pool as of one snapshot: its servers and its built strategy.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// Its servers, in config order.
    pub upstreams: Box<[Arc<Upstream>]>,
    strategy: Box<dyn Strategy>,
    /// What to hash, for consistent-hash pools.
    hash: Option<HashConfig>,
}

impl Pool {
    /// Chooses a ready server for this request, or `None` when none is ready.
    pub fn pick(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<&Arc<Upstream>> {
        let hash = self.hash.as_ref().and_then(|h| {
            hash_key::extract(&h.key, client, parts).or_else(|| match h.fallback {
                HashFallback::ClientIp => Some(hash_key::client_ip(client)),
                HashFallback::RoundRobin => None,
            })
        });
        let ctx = PickCtx { client, parts, hash };
        self.strategy.pick(&ctx, Upstreams(&self.upstreams)).and_then(|i| self.upstreams.get(i))
    }

    /// Counts a request on `upstream` (and in the pool total, if the strategy keeps one) until the
    /// returned guard drops.
    pub fn begin(&self, upstream: &Upstream) -> InFlight {
        let guard = upstream.stats.begin();
        match self.strategy.pool_load() {
            Some(load) => guard.with_pool(load),
            None => guard,
        }
    }
}

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every successful apply, starting at 1.
    pub generation: u64,
    /// Host/path routing to pool indices.
    pub router: Router,
    /// The pools, indexed by the router.
    pub pools: Box<[Pool]>,
    /// The config this snapshot was built from (timeouts, limits, options).
    pub config: Arc<Config>,
}

/// Holds the current snapshot and the registry of per-server state.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Touched only while applying a config, never on the request path.
    stats: Mutex<HashMap<UpstreamKey, Arc<UpstreamStats>>>,
}

impl Runtime {
    /// Builds the first snapshot.
    pub fn new(config: Config) -> Self {
        let mut stats = HashMap::new();
        let snapshot = build(config, 1, &mut stats);
        Self { current: ArcSwap::from_pointee(snapshot), stats: Mutex::new(stats) }
    }

    /// The current snapshot. Load once per request; safe to hold across `.await`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from `config`, re-attaching live state of servers whose identity is unchanged,
    /// and swaps it in. Requests in flight finish on the snapshot they started with.
    pub fn apply(&self, config: Config) -> Arc<Snapshot> {
        let mut stats = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.current.load().generation + 1;
        let snapshot = Arc::new(build(config, generation, &mut stats));
        self.current.store(Arc::clone(&snapshot));
        let live: std::collections::HashSet<&UpstreamKey> =
            snapshot.pools.iter().flat_map(|p| p.upstreams.iter().map(|u| &u.key)).collect();
        stats.retain(|key, _| live.contains(key));
        snapshot
    }
}

fn build(config: Config, generation: u64, stats: &mut HashMap<UpstreamKey, Arc<UpstreamStats>>) -> Snapshot {
    let pools = config
        .pools
        .iter()
        .map(|pool| {
            let name: Arc<str> = pool.name.as_str().into();
            let upstreams: Box<[Arc<Upstream>]> = pool
                .servers
                .iter()
                .filter_map(|s| {
                    let key = UpstreamKey { pool: Arc::clone(&name), name: s.name.as_str().into() };
                    // Validation already checked the address; a failure here would be a bug, so skip
                    // the server rather than take the process down.
                    let authority = s.addr.parse().ok()?;
                    let stats = Arc::clone(stats.entry(key.clone()).or_default());
                    Some(Arc::new(Upstream { key, addr: s.addr.clone(), authority, weight: s.weight, stats }))
                })
                .collect();
            let strategy = balance::build(pool, &upstreams);
            Pool { name, upstreams, strategy, hash: pool.hash.clone() }
        })
        .collect();
    Snapshot { generation, router: Router::new(&config.routes), pools, config: Arc::new(config) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: &str) -> Config {
        Config::from_toml(&format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{servers}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn apply_keeps_state_of_unchanged_servers() {
        let rt = Runtime::new(config(
            r#"{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2" }"#,
        ));
        let before = rt.snapshot();
        let guard = before.pools[0].upstreams[0].stats.begin();
        let after = rt.apply(config(r#"{ name = "a", addr = "127.0.0.1:3", weight = 5 }"#));
        assert_eq!(after.generation, 2);
        assert_eq!(after.pools[0].upstreams[0].stats.in_flight(), 1, "same stats re-attached by name");
        drop(guard);
        assert_eq!(after.pools[0].upstreams[0].stats.in_flight(), 0);
        assert_eq!(rt.stats.lock().unwrap().len(), 1, "removed server's state is dropped");
    }
}
