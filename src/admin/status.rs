//! The `/status` document: the running config, its pools and servers with their live state,
//! operator overrides and traffic counters, and certificate expiry dates. The console page polls it
//! and differences two readings for rates and percentiles (see [`crate::traffic`]).

use crate::control::Override;
use crate::runtime::Snapshot;
use crate::upstream::{Upstream, UpstreamKey};
use std::collections::HashMap;

/// What a `/status` request asks for: `?pool=NAME` keeps one pool, `?summary` counts each pool's
/// servers instead of listing them (10,000 servers list as about 1.3 MB).
#[derive(Debug, Default)]
pub struct StatusQuery<'a> {
    /// Only this pool.
    pub pool: Option<&'a str>,
    /// Counts instead of server lists.
    pub summary: bool,
}

impl<'a> StatusQuery<'a> {
    /// From a URI query such as `pool=web&summary`; unknown parameters are ignored.
    pub fn parse(query: Option<&'a str>) -> Self {
        let mut q = Self::default();
        for param in query.unwrap_or("").split('&') {
            match param.split_once('=') {
                Some(("pool", name)) => q.pool = Some(name),
                None if param == "summary" => q.summary = true,
                Some(("summary", v)) => q.summary = v != "false" && v != "0",
                _ => {}
            }
        }
        q
    }
}

/// The whole `/status` document (without overrides: see [`status_with`]).
pub fn status(snap: &Snapshot) -> serde_json::Value {
    status_of(snap, &StatusQuery::default())
}

/// The `/status` document, or the part of it `query` asks for (without overrides).
pub fn status_of(snap: &Snapshot, query: &StatusQuery<'_>) -> serde_json::Value {
    status_with(snap, query, &HashMap::new())
}

/// The `/status` document, or the part of it `query` asks for, showing the operator `overrides`.
pub fn status_with(
    snap: &Snapshot,
    query: &StatusQuery<'_>,
    overrides: &HashMap<UpstreamKey, Override>,
) -> serde_json::Value {
    let now_ms = now_ms();
    let pools: Vec<_> = snap
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| query.pool.is_none_or(|name| *p.name == *name))
        .map(|(i, p)| {
            // Snapshot pools are in config order: look by index first, so 10,000 pools stay linear.
            let config = snap.config.pools.get(i).filter(|c| *c.name == *p.name);
            let config = config.or_else(|| snap.config.pools.iter().find(|c| *c.name == *p.name));
            let strategy = config.map(|c| c.strategy.name());
            let queued = p.stats.queued.load(std::sync::atomic::Ordering::Relaxed);
            let ejected = p.stats.ejected.load(std::sync::atomic::Ordering::Relaxed);
            if query.summary {
                return serde_json::json!({
                    "name": &*p.name,
                    "strategy": strategy,
                    "queued": queued,
                    "ejected": ejected,
                    "servers": p.upstreams.len(),
                    "ready": p.upstreams.iter().filter(|u| u.is_ready()).count(),
                    "in_flight": p.upstreams.iter().map(|u| u.stats.in_flight()).sum::<usize>(),
                });
            }
            let servers: Vec<_> = p
                .upstreams
                .iter()
                .enumerate()
                .map(|(j, u)| {
                    let named = |s: &&crate::config::ServerConfig| *s.name == *u.key.name;
                    let configured = config
                        .and_then(|c| c.servers.get(j).filter(named).or_else(|| c.servers.iter().find(named)))
                        .map_or(u.weight, |s| s.weight);
                    server(u, configured, p.is_backup(j), overrides.get(&u.key), now_ms)
                })
                .collect();
            serde_json::json!({
                "name": &*p.name,
                "strategy": strategy,
                "queued": queued,
                "ejected": ejected,
                "backups_in_use": p.backups_in_use(),
                "servers": servers,
            })
        })
        .collect();
    let certificates: Vec<_> = snap
        .config
        .listeners
        .iter()
        .flat_map(|l| {
            l.tls.iter().flat_map(|t| &t.certificates).map(move |c| {
                serde_json::json!({
                    "listener": l.addr,
                    "file": c.cert_path,
                    "names": c.names,
                    "not_after_unix": c.not_after,
                })
            })
        })
        .collect();
    let rate_limits: Vec<serde_json::Value> = snap
        .rate_limits
        .rules
        .iter()
        .map(|a| {
            let r = &a.rule;
            serde_json::json!({
                "name": &*r.name,
                "rule": r.to_string(),
                "count": r.count,
                "period_s": r.period.as_secs(),
                "burst": r.quota.burst,
                "store": if matches!(r.store, crate::ratelimit::Store::Redis(_)) { "redis" } else { "local" },
                "local_keys": a.local.keys(),
            })
        })
        .collect();
    serde_json::json!({
        "generation": snap.generation,
        "pid": std::process::id(),
        "now_unix_ms": now_ms,
        "config": { "generation": snap.generation, "hash": snap.config.digest.to_string() },
        "latency_bounds_ms": crate::traffic::BOUNDS_MS,
        "certificates": certificates,
        "pools": pools,
        "rate_limits": rate_limits,
    })
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// One server's entry. Figures under `traffic` are cumulative: difference two readings.
fn server(
    u: &Upstream,
    configured_weight: u32,
    backup: bool,
    over: Option<&Override>,
    now_ms: u64,
) -> serde_json::Value {
    let health = &u.stats.health;
    let ejected_ms_left = health.is_ejected().then(|| health.ejected_until_ms().saturating_sub(now_ms));
    let traffic = u.stats.traffic.read();
    serde_json::json!({
        "name": &*u.key.name,
        "addr": u.addr,
        "weight": u.weight,
        "configured_weight": configured_weight,
        "backup": backup,
        "ready": u.is_ready(),
        "state": display_state(u),
        "admin": u.stats.admin.get().as_str(),
        "override": over.map(|o| serde_json::json!({
            "state": o.state.map(|s| s.as_str()),
            "weight": o.weight,
        })),
        "health": health_state(u),
        "last_check": health.last_check().as_str(),
        "ejected_ms_left": ejected_ms_left,
        "warmup_permille": health.warmup(),
        "in_flight": u.stats.in_flight(),
        "traffic": {
            "answered": traffic.answered,
            "errors_5xx": traffic.errors,
            "latency": traffic.latency,
        },
    })
}

/// The one word the console shows first: `maint`, `drain` (the operator's say), then `down`,
/// `ejected`, `warming` (health), else `up`.
fn display_state(u: &Upstream) -> &'static str {
    use crate::control::AdminState;
    match u.stats.admin.get() {
        AdminState::Maint => return "maint",
        AdminState::Drain => return "drain",
        AdminState::Ready => {}
    }
    let health = &u.stats.health;
    if u.checked && health.is_down() {
        "down"
    } else if health.is_ejected() {
        "ejected"
    } else if u.weight == 0 {
        "drain"
    } else if health.warmup() < crate::health::FULL {
        "warming"
    } else {
        "up"
    }
}

/// `up`, `down` (active checks fail), `ejected` (passive checks) or `down+ejected`.
fn health_state(u: &Upstream) -> &'static str {
    match (u.checked && u.stats.health.is_down(), u.stats.health.is_ejected()) {
        (false, false) => "up",
        (true, false) => "down",
        (false, true) => "ejected",
        (true, true) => "down+ejected",
    }
}
