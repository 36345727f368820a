//! The live routing state: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload (a single `store` of a fully
//! built snapshot) never mixes two configs within one request. Per-server live state is re-attached by
//! stable identity on every build, so counters survive reloads.

use crate::balance::{self, hash_key, PickCtx, Strategy, Upstreams};
use crate::config::{Config, HashConfig, HashFallback, Secret};
use crate::metrics::{PoolMetrics, ServerMetrics};
use crate::router::Router;
use crate::sticky::Sticky;
use crate::upstream::{InFlight, Upstream, UpstreamKey, UpstreamStats};
use arc_swap::ArcSwap;
use http::HeaderValue;
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
    /// Sticky-session cookies, when the pool has them.
    sticky: Option<Sticky>,
    /// Metric handles of the pool.
    pub metrics: PoolMetrics,
}

/// A chosen server for one request.
#[derive(Debug)]
pub struct Choice<'a> {
    /// Index in [`Pool::upstreams`].
    pub index: usize,
    /// The server.
    pub upstream: &'a Arc<Upstream>,
    /// A sticky cookie to set on the response (the request had no valid cookie for a ready server).
    pub set_cookie: Option<HeaderValue>,
}

impl Pool {
    /// Chooses a server for a request: the one its sticky cookie names if that one is ready,
    /// otherwise the strategy's pick (with a cookie to set, for sticky pools). `None`: none is ready.
    pub fn choose(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<Choice<'_>> {
        if let Some(index) = self.sticky.as_ref().and_then(|s| s.lookup(&parts.headers)) {
            if let Some(upstream) = self.upstreams.get(index).filter(|u| u.is_ready()) {
                return Some(Choice { index, upstream, set_cookie: None });
            }
        }
        let index = self.pick_index(client, parts)?;
        self.choice(index)
    }

    /// Chooses a ready server not in `tried` (after a connect failure), preferring the strategy's
    /// pick. Sticky clients get a cookie for the new server: their session moved.
    pub fn choose_other(
        &self,
        client: SocketAddr,
        parts: &http::request::Parts,
        tried: &[usize],
    ) -> Option<Choice<'_>> {
        let from_strategy =
            (0..3).filter_map(|_| self.pick_index(client, parts)).find(|i| !tried.contains(i));
        let index = from_strategy
            .or_else(|| Upstreams(&self.upstreams).ready().map(|(i, _)| i).find(|i| !tried.contains(i)))?;
        self.choice(index)
    }

    fn choice(&self, index: usize) -> Option<Choice<'_>> {
        let upstream = self.upstreams.get(index)?;
        let set_cookie = self.sticky.as_ref().and_then(|s| s.set_cookie(index).cloned());
        Some(Choice { index, upstream, set_cookie })
    }

    /// The strategy's choice among ready servers, ignoring cookies (`None`: none is ready).
    pub fn pick(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<&Arc<Upstream>> {
        self.pick_index(client, parts).and_then(|i| self.upstreams.get(i))
    }

    fn pick_index(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<usize> {
        let hash = self.hash.as_ref().and_then(|h| {
            hash_key::extract(&h.key, client, parts).or_else(|| match h.fallback {
                HashFallback::ClientIp => Some(hash_key::client_ip(client)),
                HashFallback::RoundRobin => None,
            })
        });
        let ctx = PickCtx { client, parts, hash };
        self.strategy.pick(&ctx, Upstreams(&self.upstreams))
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
    /// Every pool's sticky cookie name: none of them ever reaches an upstream.
    pub sticky_cookies: Box<[String]>,
}

/// Holds the current snapshot and the registry of per-server state.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Signs sticky cookies when the config sets no secret: generated once per process, so reloads
    /// keep sessions (restarts and other instances cannot).
    generated_secret: Secret,
    /// Touched only while applying a config, never on the request path.
    stats: Mutex<HashMap<UpstreamKey, Arc<UpstreamStats>>>,
}

impl Runtime {
    /// Builds the first snapshot.
    pub fn new(config: Config) -> Self {
        let generated_secret = random_secret();
        let mut stats = HashMap::new();
        let snapshot = build(config, 1, &mut stats, &generated_secret);
        Self { current: ArcSwap::from_pointee(snapshot), generated_secret, stats: Mutex::new(stats) }
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
        let snapshot = Arc::new(build(config, generation, &mut stats, &self.generated_secret));
        self.current.store(Arc::clone(&snapshot));
        let live: std::collections::HashSet<&UpstreamKey> =
            snapshot.pools.iter().flat_map(|p| p.upstreams.iter().map(|u| &u.key)).collect();
        stats.retain(|key, _| live.contains(key));
        snapshot
    }
}

/// 32 bytes from the OS-seeded hasher state and the clock: unpredictable enough for a per-process
/// cookie key, and only used when the operator configured none.
fn random_secret() -> Secret {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let bytes = (0..4u64)
        .flat_map(|i| {
            std::collections::hash_map::RandomState::new().hash_one((i, now.as_nanos())).to_le_bytes()
        })
        .collect();
    Secret(bytes)
}

fn build(
    config: Config,
    generation: u64,
    stats: &mut HashMap<UpstreamKey, Arc<UpstreamStats>>,
    generated_secret: &Secret,
) -> Snapshot {
    let secret = config.sticky_secret.as_ref().unwrap_or(generated_secret);
    if config.sticky_secret.is_none() && config.pools.iter().any(|p| p.sticky.is_some()) {
        tracing::warn!(
            "sticky cookies are signed with a secret generated at start: sessions will not survive a \
             restart or span several lb instances; set [sticky] secret or secret_file"
        );
    }
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
                    let metrics = ServerMetrics::new(&pool.name, &s.name);
                    Some(Arc::new(Upstream {
                        key,
                        addr: s.addr.clone(),
                        authority,
                        weight: s.weight,
                        stats,
                        metrics,
                    }))
                })
                .collect();
            let strategy = balance::build(pool, &upstreams);
            let sticky =
                pool.sticky.as_ref().map(|st| Sticky::new(st, &secret.0, &pool.name, &upstreams, false));
            Pool {
                metrics: PoolMetrics::new(&name),
                name,
                upstreams,
                strategy,
                hash: pool.hash.clone(),
                sticky,
            }
        })
        .collect();
    let sticky_cookies =
        config.pools.iter().filter_map(|p| p.sticky.as_ref().map(|s| s.cookie.clone())).collect();
    Snapshot {
        generation,
        router: Router::new(&config.routes),
        pools,
        config: Arc::new(config),
        sticky_cookies,
    }
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
