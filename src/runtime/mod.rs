//! The live routing state: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload (a single `store` of a fully
//! built snapshot) never mixes two configs within one request. Per-server live state is re-attached by
//! stable identity on every build, so counters survive reloads.

mod pool;

use crate::balance;
use crate::balance::rng::Rng;
use crate::config::{Config, Secret};
use crate::control::{Change, Override};
use crate::health::{self, Checks};
use crate::metrics::{PoolMetrics, ServerMetrics};
use crate::proxy::body::BufferBudget;
use crate::router::Router;
use crate::sticky::Sticky;
use crate::upstream::connect::ConnLimits;
use crate::upstream::{PoolStats, Upstream, UpstreamKey, UpstreamStats};
use arc_swap::ArcSwap;
pub use pool::{Choice, NoServer, Pool, RetrySlot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why an override names no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// No pool by that name.
    #[error("no such pool")]
    Pool,
    /// The pool has no server by that name.
    #[error("no such server in this pool")]
    Server,
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
    /// Answers to requests no pool took (no route, refused before routing).
    pub unrouted: crate::metrics::Unserved,
    /// `[[rate_limits]]` with their buckets.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// `[caches.NAME]` with their objects, indexed as `config.caches`.
    pub caches: Box<[Arc<crate::cache::Store>]>,
}

/// Holds the current snapshot and the registry of per-server state.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Signs sticky cookies when the config sets no secret: generated once per process, so reloads
    /// keep sessions (restarts and other instances cannot).
    generated_secret: Secret,
    /// Live state by identity; touched only while applying a config, never on the request path.
    registry: Mutex<Registry>,
    /// Connection limits per upstream address, read by the upstream connector.
    conn_limits: Arc<ConnLimits>,
    /// Memory held by request buffers, process-wide (it outlives reloads, as the buffers do).
    request_buffers: Arc<BufferBudget>,
}

/// A server as the last applied config had it.
#[derive(Debug)]
struct Known {
    /// A server whose address changed is a new server to health checks and counters: it starts
    /// afresh.
    addr: String,
    /// Weight 0 to more is a server coming back from a drain: it slow-starts.
    weight: u32,
    stats: Arc<UpstreamStats>,
}

/// Live state that outlives snapshots, by stable identity.
#[derive(Debug, Default)]
struct Registry {
    servers: HashMap<UpstreamKey, Known>,
    pools: HashMap<Arc<str>, Arc<PoolStats>>,
    /// Operator overrides by identity: outlive reloads and address changes, dropped with their
    /// server.
    overrides: HashMap<UpstreamKey, Override>,
    /// Health-check tasks, once started.
    checks: Option<Checks>,
    /// The idle-connection sweep, once started.
    sweep: Option<tokio::task::JoinHandle<()>>,
    /// Each rate-limit rule's in-process buckets, by rule name: a reload that keeps a rule's rate,
    /// burst and size keeps its buckets.
    buckets: HashMap<Arc<str>, Arc<crate::ratelimit::gcra::LocalBuckets>>,
    /// The Redis store of `[redis]`, kept while its settings stay (connections included).
    redis: Option<Arc<crate::ratelimit::redis::RedisStore>>,
    /// Each cache by name: a reload that keeps its settings keeps its objects.
    caches: HashMap<Arc<str>, Arc<crate::cache::Store>>,
}

impl Runtime {
    /// Builds the first snapshot.
    pub fn new(config: Config) -> Self {
        let generated_secret = random_secret();
        let mut registry = Registry::default();
        let conn_limits = Arc::new(ConnLimits::default());
        // At start nothing "arrives": every server is new, so none slow-starts.
        let (snapshot, _) = build(config, 1, &mut registry, &generated_secret);
        conn_limits.update(&snapshot);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            generated_secret,
            registry: Mutex::new(registry),
            conn_limits,
            request_buffers: Arc::default(),
        }
    }

    /// Servers that active checks hold down, as (pool, server): what an upgrade hands over.
    pub fn held_down(&self) -> Vec<(String, String)> {
        let snap = self.snapshot();
        snap.pools
            .iter()
            .flat_map(|p| p.upstreams.iter())
            .filter(|u| u.checked && u.stats.health.is_down())
            .map(|u| (u.key.pool.to_string(), u.key.name.to_string()))
            .collect()
    }

    /// Starts these servers down (a process taking over from one whose checks held them down):
    /// their own checks bring them back once they pass `rise` times.
    pub fn hold_down(&self, servers: &[(String, String)]) {
        let snap = self.snapshot();
        for (pool, name) in servers {
            let found = snap.pools.iter().filter(|p| &*p.name == pool).flat_map(|p| p.upstreams.iter());
            for u in found.filter(|u| &*u.key.name == name && u.checked) {
                if u.stats.health.set_down(true) {
                    crate::health::went_away(&u.stats);
                }
            }
        }
    }

    /// The process-wide account of request-buffer memory (`limits.request_buffer_total`).
    pub fn request_buffers(&self) -> &Arc<BufferBudget> {
        &self.request_buffers
    }

    /// The connection limits the upstream connector enforces.
    pub fn conn_limits(&self) -> &ConnLimits {
        &self.conn_limits
    }

    /// Starts the active health checks of the current snapshot (and of every later one). Must run
    /// inside a tokio runtime; checks stop with [`Runtime::stop_health_checks`].
    pub fn start_health_checks(&self) {
        let mut registry = self.lock();
        let checks = registry.checks.get_or_insert_with(|| Checks::new(tokio::runtime::Handle::current()));
        checks.reconcile(&self.current.load());
    }

    /// Stops every health-check task.
    pub fn stop_health_checks(&self) {
        self.lock().checks = None;
    }

    /// Starts the one task that closes idle upstream connections: those idle for
    /// `timeouts.upstream_idle` (as the current snapshot has it), and those whose server closed them.
    /// It runs a few times per idle timeout, at least once a second; it stops with
    /// [`Runtime::stop_conn_sweep`] or when the runtime is dropped.
    pub fn start_conn_sweep(self: &Arc<Self>) {
        let mut registry = self.lock();
        if registry.sweep.is_some() {
            return;
        }
        let runtime = Arc::downgrade(self);
        registry.sweep = Some(tokio::spawn(async move {
            loop {
                let Some(idle) = runtime.upgrade().map(|rt| rt.sweep_conns()) else { return };
                let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(every).await;
            }
        }));
    }

    /// Stops the idle-connection sweep.
    pub fn stop_conn_sweep(&self) {
        if let Some(task) = self.lock().sweep.take() {
            task.abort();
        }
    }

    /// One pass of the sweep over every server of the current snapshot; returns the idle timeout.
    fn sweep_conns(&self) -> Duration {
        let snap = self.snapshot();
        let idle = snap.config.timeouts.upstream_idle;
        for pool in snap.pools.iter() {
            // Connections that run in tasks of their own are kept while the pool stays above half its
            // threshold (`limits.upstream_tasks_above`), or went above it since the last pass: a
            // load hovering at it, or coming in bursts, does not make the sweep close connections
            // that the next requests would open again (`Pool::keep_apart`).
            let keep_apart = pool.keep_apart(snap.config.limits.upstream_tasks_above);
            for upstream in pool.upstreams.iter() {
                upstream.stats.conns.sweep(idle, keep_apart);
            }
        }
        idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current snapshot. Load once per request; safe to hold across `.await`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from `config`, re-attaching live state of servers whose identity is unchanged,
    /// and swaps it in. Requests in flight finish on the snapshot they started with.
    pub fn apply(&self, config: Config) -> Arc<Snapshot> {
        let mut registry = self.lock();
        self.swap(&mut registry, config)
    }

    /// The operator overrides in force, by server.
    pub fn overrides(&self) -> HashMap<UpstreamKey, Override> {
        self.lock().overrides.clone()
    }

    /// Applies an operator's change to server `name` of `pool` and returns the overrides now in
    /// force for it. A state change takes effect at once (one atomic); a weight change rebuilds the
    /// snapshot from the running config, as a reload that changed only that weight would (the
    /// generation goes up by one).
    pub fn set_override(&self, pool: &str, name: &str, change: Change) -> Result<Override, Unknown> {
        let mut registry = self.lock();
        let snapshot = self.current.load_full();
        let p = snapshot.pools.iter().find(|p| &*p.name == pool).ok_or(Unknown::Pool)?;
        let u = p.upstreams.iter().find(|u| &*u.key.name == name).ok_or(Unknown::Server)?;
        let before = registry.overrides.get(&u.key).copied().unwrap_or_default();
        let after = before.with(change);
        if after.is_empty() {
            registry.overrides.remove(&u.key);
        } else {
            registry.overrides.insert(u.key.clone(), after);
        }
        u.stats.admin.set(after.state.unwrap_or_default());
        tracing::info!(pool, server = name, state = after.state.unwrap_or_default().as_str(),
            weight = ?after.weight, "runtime override set");
        if after.weight != before.weight {
            self.swap(&mut registry, (*snapshot.config).clone());
        }
        Ok(after)
    }

    fn swap(&self, registry: &mut Registry, config: Config) -> Arc<Snapshot> {
        let generation = self.current.load().generation + 1;
        let (snapshot, arrived) = build(config, generation, registry, &self.generated_secret);
        let snapshot = Arc::new(snapshot);
        self.conn_limits.update(&snapshot);
        self.current.store(Arc::clone(&snapshot));
        // Servers added or raised from weight 0 warm up like servers coming back (ramps need a
        // tokio runtime; outside one, as in unit tests, they start at full weight).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _inside = handle.enter();
            for (stats, over) in arrived {
                health::came_back(&stats, Some(over));
            }
        }
        let live: std::collections::HashSet<&UpstreamKey> =
            snapshot.pools.iter().flat_map(|p| p.upstreams.iter().map(|u| &u.key)).collect();
        registry.servers.retain(|key, _| live.contains(key));
        registry.overrides.retain(|key, o| {
            let keep = live.contains(key);
            if !keep {
                tracing::info!(pool = %key.pool, server = %key.name, override = o.describe(None),
                    "runtime override dropped: the server left the config");
            }
            keep
        });
        let pools: std::collections::HashSet<&str> = snapshot.pools.iter().map(|p| &*p.name).collect();
        registry.pools.retain(|name, _| pools.contains(&**name));
        if let Some(checks) = registry.checks.as_mut() {
            checks.reconcile(&snapshot);
        }
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

/// Servers that start taking traffic with this snapshot (new, or weight raised from 0), with their
/// pool's slow start.
type Arrivals = Vec<(Arc<UpstreamStats>, std::time::Duration)>;

/// The live state of server `s` under `key`: the known one if its address is unchanged, else fresh.
/// `true` when the server starts taking traffic now (new, or its weight raised from 0).
fn known(
    registry: &mut Registry,
    key: &UpstreamKey,
    s: &crate::config::ServerConfig,
    weight: u32,
    start_up: bool,
) -> (Arc<UpstreamStats>, bool) {
    let fresh = || Known { addr: s.addr.clone(), weight, stats: Arc::new(UpstreamStats::new(start_up)) };
    let (entry, arriving) = match registry.servers.entry(key.clone()) {
        std::collections::hash_map::Entry::Occupied(e) => {
            let entry = e.into_mut();
            if entry.addr != s.addr {
                *entry = fresh();
                (entry, true)
            } else {
                let returning = entry.weight == 0 && weight > 0;
                entry.weight = weight;
                (entry, returning)
            }
        }
        std::collections::hash_map::Entry::Vacant(e) => (e.insert(fresh()), true),
    };
    (Arc::clone(&entry.stats), arriving && weight > 0)
}

fn build(
    config: Config,
    generation: u64,
    registry: &mut Registry,
    generated_secret: &Secret,
) -> (Snapshot, Arrivals) {
    let mut arrived = Arrivals::new();
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
            let start_up = pool.health.as_ref().is_none_or(|h| h.start_up);
            let mut primaries = 0;
            // Backups after the others, so that each set is one slice for its strategy.
            let in_order =
                pool.servers.iter().filter(|s| !s.backup).chain(pool.servers.iter().filter(|s| s.backup));
            let upstreams: Box<[Arc<Upstream>]> = in_order
                .filter_map(|s| {
                    let key = UpstreamKey { pool: Arc::clone(&name), name: s.name.as_str().into() };
                    // Validation already checked the address; a failure here would be a bug, so skip
                    // the server rather than take the process down.
                    let authority: http::uri::Authority = s.addr.parse().ok()?;
                    let tls = match &pool.tls {
                        None => None,
                        // Validation checked the name; should it fail anyway, the server is left
                        // out rather than spoken to in the clear.
                        Some(t) => Some(Arc::new(crate::tls::ClientTls::new(t, authority.host())?)),
                    };
                    // An operator's override wins over the file, until cleared.
                    let over = registry.overrides.get(&key).copied().unwrap_or_default();
                    let weight = over.weight.unwrap_or(s.weight);
                    let (stats, arriving) = known(registry, &key, s, weight, start_up);
                    stats.admin.set(over.state.unwrap_or_default());
                    if let (true, Some(over)) = (arriving, pool.slow_start) {
                        arrived.push((Arc::clone(&stats), over));
                    }
                    let limit =
                        |server: Option<usize>, pool: Option<usize>| server.or(pool).unwrap_or(usize::MAX);
                    let max_in_flight = limit(s.max_requests, pool.limits.max_requests)
                        .min(limit(s.max_connections, pool.limits.max_connections));
                    let metrics = ServerMetrics::new(&pool.name, &s.name, &stats);
                    Some((
                        s.backup,
                        Arc::new(Upstream {
                            key,
                            addr: s.addr.clone(),
                            authority,
                            weight,
                            max_in_flight,
                            checked: pool.health.is_some(),
                            stats,
                            tls,
                            metrics,
                        }),
                    ))
                })
                .map(|(backup, u)| {
                    primaries += usize::from(!backup);
                    u
                })
                .collect();
            let stats = Arc::clone(registry.pools.entry(Arc::clone(&name)).or_default());
            let (main, backups) = upstreams.split_at(primaries);
            let strategy = balance::build(pool, main, &stats);
            let backup_strategy = (!backups.is_empty()).then(|| balance::build(pool, backups, &stats));
            let limited = upstreams.iter().any(|u| u.max_in_flight != usize::MAX)
                || pool.servers.iter().any(|s| s.max_connections.is_some())
                || pool.limits.max_connections.is_some();
            let sticky = pool.sticky.as_ref().map(|st| Sticky::new(st, &secret.0, &pool.name, &upstreams));
            Pool {
                metrics: PoolMetrics::new(&name),
                name,
                upstreams,
                primaries,
                strategy,
                backup_strategy,
                hash: pool.hash.clone(),
                sticky,
                stats,
                health: pool.health.clone(),
                passive: pool.passive,
                slow_start: pool.slow_start,
                retry: pool.retry,
                limits: pool.limits,
                connect_timeout: pool.timeouts.connect.unwrap_or(config.timeouts.connect),
                response_timeout: pool.timeouts.response.unwrap_or(config.timeouts.response),
                limited,
                http2: pool.tls.as_ref().is_some_and(|t| t.http2),
                warm_rng: Rng::from_entropy(),
            }
        })
        .collect();
    let sticky_cookies =
        config.pools.iter().filter_map(|p| p.sticky.as_ref().map(|s| s.cookie.clone())).collect();
    let rate_limits = rate_limits(&config, registry);
    let caches = caches(&config, registry);
    let snapshot = Snapshot {
        generation,
        // The router answers the route's index: the route names the pool and its own limits.
        router: Router::with_targets(&config.routes, |index, _| index),
        pools,
        config: Arc::new(config),
        sticky_cookies,
        unrouted: crate::metrics::Unserved::default(),
        rate_limits,
        caches,
    };
    (snapshot, arrived)
}

/// The config's caches, each the previous snapshot's store when its settings did not change.
fn caches(config: &Config, registry: &mut Registry) -> Box<[Arc<crate::cache::Store>]> {
    let stores: Box<[_]> = config
        .caches
        .iter()
        .map(|settings| {
            // Shared through the `[redis]` the rate limits use (the same connections).
            let redis = registry.redis.clone().filter(|_| settings.redis);
            let same_redis = |store: &crate::cache::Store| match (&store.shared, &redis) {
                (Some(shared), Some(redis)) => Arc::ptr_eq(shared.redis(), redis),
                (None, None) => true,
                _ => false,
            };
            match registry.caches.get(&settings.name) {
                Some(store) if store.settings == *settings && same_redis(store) => Arc::clone(store),
                _ => Arc::new(crate::cache::Store::new(settings.clone(), redis)),
            }
        })
        .collect();
    registry.caches = stores.iter().map(|s| (Arc::clone(&s.settings.name), Arc::clone(s))).collect();
    stores
}

/// The config's rate-limit rules, with the buckets and Redis store of the previous snapshot where
/// their settings did not change.
fn rate_limits(config: &Config, registry: &mut Registry) -> crate::ratelimit::RateLimits {
    use crate::ratelimit::{gcra::LocalBuckets, redis::RedisStore};
    let store = config.redis.as_ref().map(|settings| match &registry.redis {
        Some(s) if s.config() == settings => Arc::clone(s),
        _ => Arc::new(RedisStore::new(settings.clone())),
    });
    registry.redis = store.clone();
    let mut kept = HashMap::new();
    let limits = crate::ratelimit::RateLimits::new(
        &config.rate_limits,
        |rule| {
            let buckets = match registry.buckets.get(&rule.name) {
                Some(b) if b.quota() == rule.quota && b.max_keys() == rule.max_keys => Arc::clone(b),
                _ => Arc::new(LocalBuckets::new(rule.quota, rule.max_keys)),
            };
            kept.insert(Arc::clone(&rule.name), Arc::clone(&buckets));
            buckets
        },
        store,
    );
    registry.buckets = kept;
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn config(servers: &str) -> Config {
        config_with(servers, "")
    }

    fn config_with(servers: &str, extra: &str) -> Config {
        Config::from_toml(&format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{servers}]\n{extra}"
        ))
        .unwrap()
    }

    /// A server that answers every request on a connection with `ok`, keeping the connection.
    async fn keepalive_server() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        got.drain(..end);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connections that ran in tasks of their own outlive a sweep that finds their pool calm if a
    /// request found it crowded since the previous sweep (traffic in bursts keeps them), and are
    /// closed by the next sweep if none did.
    #[tokio::test]
    async fn the_sweep_keeps_apart_connections_between_bursts() {
        let addr = keepalive_server().await;
        let rt = Runtime::new(config(&format!(r#"{{ name = "a", addr = "{addr}" }}"#)));
        let snap = rt.snapshot();
        let (pool, server) = (&snap.pools[0], &snap.pools[0].upstreams[0]);
        let settings = crate::upstream::lease::ConnSettings {
            connect: std::time::Duration::from_secs(5),
            idle: std::time::Duration::from_secs(60),
            idle_per_server: 8,
            apart: true,
        };
        let request = || async {
            let (mut head, body) =
                http::Request::get("/").body(crate::proxy::body::RequestBody::empty()).unwrap().into_parts();
            let (resp, lease) =
                crate::upstream::lease::send(rt.conn_limits(), server, settings, &mut head, body, false)
                    .await
                    .unwrap();
            let mut body =
                crate::proxy::body::ResponseBody::stream(resp.into_body(), std::time::Duration::from_secs(5));
            body.drive(lease.unwrap());
            http_body_util::BodyExt::collect(body).await.unwrap();
        };
        for burst in 1..=3 {
            // A request that finds the pool crowded (a threshold of 0 always does), as a burst's would.
            assert!(pool.take_apart(0));
            request().await;
            assert_eq!(server.stats.conns.apart_count(), 1, "burst {burst}");
            // The calm between bursts: the pool is below half its threshold when the sweep looks.
            rt.sweep_conns();
            assert_eq!(server.stats.conns.apart_count(), 1, "kept after burst {burst}");
        }
        rt.sweep_conns();
        assert_eq!(server.stats.conns.idle_count(), 0, "closed once a whole pass saw no crowd");
    }

    #[test]
    fn apply_keeps_state_of_unchanged_servers() {
        let rt = Runtime::new(config(
            r#"{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2" }"#,
        ));
        let before = rt.snapshot();
        let guard = before.pools[0].begin(&before.pools[0].upstreams[0]).unwrap();
        let after = rt.apply(config(r#"{ name = "a", addr = "127.0.0.1:1", weight = 5 }"#));
        assert_eq!(after.generation, 2);
        assert_eq!(after.pools[0].upstreams[0].stats.in_flight(), 1, "same stats re-attached by name");
        drop(guard);
        assert_eq!(after.pools[0].upstreams[0].stats.in_flight(), 0);
        assert_eq!(rt.lock().servers.len(), 1, "removed server's state is dropped");
        after.pools[0].upstreams[0].stats.health.set_ejected(true);
        let moved = rt.apply(config(r#"{ name = "a", addr = "127.0.0.1:3", weight = 5 }"#));
        assert!(!moved.pools[0].upstreams[0].stats.health.is_ejected(), "a new address starts afresh");
    }

    #[test]
    fn overrides_outlive_reloads_and_address_changes_until_their_server_leaves() {
        use crate::control::AdminState;
        let two = r#"{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2" }"#;
        let rt = Runtime::new(config(two));
        let drain = Change { state: Some(AdminState::Drain), weight: None };
        assert_eq!(rt.set_override("nope", "a", drain), Err(Unknown::Pool));
        assert_eq!(rt.set_override("web", "zz", drain), Err(Unknown::Server));
        rt.set_override("web", "a", drain).unwrap();
        assert_eq!(rt.snapshot().generation, 1, "a state change needs no rebuild");
        assert!(!rt.snapshot().pools[0].upstreams[0].is_ready());
        assert!(rt.snapshot().pools[0].upstreams[0].keeps_sessions(), "drain keeps sticky sessions");
        let over = rt.set_override("web", "b", Change { state: None, weight: Some(Some(7)) }).unwrap();
        assert_eq!(over.weight, Some(7));
        let snap = rt.snapshot();
        assert_eq!((snap.generation, snap.pools[0].upstreams[1].weight), (2, 7), "a weight change rebuilds");

        // A reload that moves a and reweights b in the file keeps both overrides.
        let moved = rt.apply(config(
            r#"{ name = "a", addr = "127.0.0.1:3" }, { name = "b", addr = "127.0.0.1:2", weight = 2 }"#,
        ));
        let (a, b) = (&moved.pools[0].upstreams[0], &moved.pools[0].upstreams[1]);
        assert_eq!((a.stats.admin.get(), a.is_ready(), b.weight), (AdminState::Drain, false, 7));

        // Gone with its server: back without it.
        rt.apply(config(r#"{ name = "b", addr = "127.0.0.1:2" }"#));
        let back = rt.apply(config(two));
        assert_eq!(back.pools[0].upstreams[0].stats.admin.get(), AdminState::Ready);
        assert_eq!(rt.overrides().len(), 1, "b's override stays");
        rt.set_override("web", "b", Change { state: Some(AdminState::Ready), weight: Some(None) }).unwrap();
        assert!(rt.overrides().is_empty(), "cleared overrides are not kept");
        assert_eq!(rt.snapshot().pools[0].upstreams[1].weight, 1);
    }

    #[tokio::test]
    async fn servers_added_or_raised_from_weight_zero_slow_start_and_others_do_not() {
        let slow = "slow_start = \"10s\"\n";
        let rt = Runtime::new(config_with(
            r#"{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2", weight = 0 }"#,
            slow,
        ));
        let warmup = |snap: &Snapshot, i: usize| snap.pools[0].upstreams[i].stats.health.warmup();
        assert_eq!(warmup(&rt.snapshot(), 0), health::FULL, "nothing slow-starts at start");
        let next = rt.apply(config_with(
            r#"{ name = "a", addr = "127.0.0.1:1", weight = 3 }, { name = "b", addr = "127.0.0.1:2" },
               { name = "c", addr = "127.0.0.1:3" }"#,
            slow,
        ));
        assert_eq!(warmup(&next, 0), health::FULL, "a reweighted server keeps its share");
        assert!(warmup(&next, 1) < health::FULL, "b came back from weight 0");
        assert!(warmup(&next, 2) < health::FULL, "c is new");
    }

    #[test]
    fn the_retry_budget_allows_a_share_of_requests_in_flight_and_a_floor() {
        let rt = Runtime::new(config_with(
            r#"{ name = "a", addr = "127.0.0.1:1" }"#,
            "[pools.web.retry]\nbudget_percent = 20\nbudget_min = 1\n",
        ));
        let snap = rt.snapshot();
        let pool = &snap.pools[0];
        let first = pool.retry_slot().expect("the floor allows one");
        assert!(pool.retry_slot().is_none(), "no requests in flight: only the floor");
        let load: Vec<_> = (0..10).map(|_| pool.begin(&pool.upstreams[0]).unwrap()).collect();
        let second = pool.retry_slot().expect("20% of 10 in flight is 2");
        assert!(pool.retry_slot().is_none());
        drop((first, second, load));
        assert_eq!(pool.stats.retries.load(Ordering::Relaxed), 0, "slots are given back");
    }

    #[test]
    fn health_state_survives_a_reload_and_removed_checks_release_it() {
        let checked = "[pools.web.health]\ntype = \"tcp\"\ninitial = \"down\"\n";
        let rt = Runtime::new(config_with(r#"{ name = "a", addr = "127.0.0.1:1" }"#, checked));
        assert!(!rt.snapshot().pools[0].upstreams[0].is_ready(), "starts down until checks pass");
        rt.snapshot().pools[0].upstreams[0].stats.health.set_ejected(true);
        let next = rt.apply(config_with(r#"{ name = "a", addr = "127.0.0.1:1", weight = 2 }"#, checked));
        let a = &next.pools[0].upstreams[0];
        assert!(a.stats.health.is_down() && a.stats.health.is_ejected(), "same server, same state");
        // A pool whose checks were removed ignores their last verdict.
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio.block_on(async {
            rt.start_health_checks();
            let last = rt.apply(config(r#"{ name = "a", addr = "127.0.0.1:1" }"#));
            let a = &last.pools[0].upstreams[0];
            a.stats.health.set_ejected(false);
            assert!(a.stats.health.is_down() && a.is_ready(), "a DOWN verdict without checks does not count");
            rt.stop_health_checks();
        });
    }
}
