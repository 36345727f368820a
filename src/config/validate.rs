//! Raw shape -> typed [`Config`], collecting every problem instead of stopping at the first.

use super::health;
use super::raw::{
    RawAdmin, RawConfig, RawHttp, RawLimits, RawListener, RawPool, RawPoolTimeouts, RawRoute, RawSize,
    RawSticky, RawStickySecret, RawTimeouts,
};
use super::{
    duration, AccessLog, Config, Digest, HashConfig, HashFallback, HashKey, HostMatch, HttpOptions, Issue,
    Limits, ListenerConfig, PoolConfig, PoolTimeouts, ReloadConfig, RouteConfig, SameSite, Secret,
    ServerConfig, StickyConfig, StrategyKind, Timeouts, UnderscoreHeaders,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

const MAX_WEIGHT: i64 = super::MAX_WEIGHT as i64;

pub(super) struct Issues<'a>(&'a mut Vec<Issue>);

impl Issues<'_> {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue { path: path.into(), line: None, message: message.into() });
    }
}

pub(super) fn validate(raw: RawConfig, issues: &mut Vec<Issue>) -> Config {
    let mut out = Issues(issues);
    let listeners = listeners(&raw, &mut out);
    let timeouts = timeouts(&raw.timeouts, &mut out);
    let limits = limits(&raw.limits, &mut out);
    let http = http(&raw.http, &mut out);
    let pools: Vec<PoolConfig> = raw.pools.iter().map(|(name, p)| pool(name, p, &mut out)).collect();
    let redis = super::rate_limit::redis(raw.redis.as_ref(), &mut out);
    let mut rate_limits = super::rate_limit::rules(&raw.rate_limits, redis.as_ref(), &mut out);
    let caches = super::cache::caches(&raw.caches, redis.is_some(), &mut out);
    let routes = routes(&raw.routes, &pools, &rate_limits, &caches, &mut out);
    // A rule that a route names applies on its routes only.
    for i in routes.iter().filter_map(|r| r.policy.as_ref()).flat_map(|p| p.rate_limits.iter()) {
        if let Some(rule) = rate_limits.get_mut(*i) {
            rule.by_route = true;
        }
    }
    tls_per_address(&pools, &mut out);
    let sticky_secret = sticky_secret(&raw.sticky, &mut out);
    let admin = admin(&raw.admin, &listeners, &mut out);
    let admin_token = admin_token(&raw.admin, admin, &mut out);
    let access_log = match raw.log.access.as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("text") => AccessLog::Text,
        Some("json") => AccessLog::Json,
        Some(other) => {
            out.push("log.access", format!("{other:?}: expected \"off\", \"text\" or \"json\""));
            AccessLog::Off
        }
    };
    let d = ReloadConfig::default();
    let reload = ReloadConfig {
        watch: raw.reload.watch.unwrap_or(d.watch),
        debounce: positive("reload.debounce", raw.reload.debounce.as_deref(), d.debounce, &mut out),
    };
    let workers = count("workers", raw.workers, (0, 1024), 0, &mut out);
    let client_address = super::edge::client_address(&raw.client_address, &mut out);
    Config {
        listeners,
        workers,
        timeouts,
        limits,
        http,
        pools,
        routes,
        sticky_secret,
        admin,
        admin_token,
        access_log,
        reload,
        client_address,
        rate_limits,
        redis,
        caches,
        error_pages: super::error_pages::error_pages(&raw.error_pages, &mut out),
        digest: Digest::default(),
    }
}

fn listeners(raw: &RawConfig, out: &mut Issues<'_>) -> Vec<ListenerConfig> {
    if raw.listeners.is_empty() {
        out.push(
            "listeners",
            "at least one listener is required, e.g. [[listeners]] addr = \"0.0.0.0:8080\"",
        );
    }
    let mut result: Vec<ListenerConfig> = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let path = format!("listeners[{i}].addr");
        let Some(text) = &l.addr else {
            out.push(path, "is required");
            continue;
        };
        match text.parse::<SocketAddr>() {
            Ok(addr) if result.iter().any(|earlier| overlaps(earlier.addr, addr)) => {
                out.push(path, format!("{addr} overlaps an earlier listener (same port, covering address)"));
            }
            Ok(addr) => {
                let base = format!("listeners[{i}]");
                let tls = l.tls.as_ref().map(|t| super::tls::listener(&format!("{base}.tls"), t, out));
                let redirect_https = redirect(&base, l, tls.is_some(), out);
                let proxy_protocol = super::edge::proxy_protocol(&base, l, out);
                let freebind = l.freebind.unwrap_or(false);
                result.push(ListenerConfig {
                    addr,
                    tls: tls.flatten(),
                    redirect_https,
                    proxy_protocol,
                    freebind,
                });
            }
            Err(_) => out.push(path, format!("{text:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")")),
        }
    }
    result
}

/// Connections to one address are pooled together, so every pool that reaches it over TLS must do
/// so with the same settings (CA, name, client certificate, ALPN).
fn tls_per_address(pools: &[PoolConfig], out: &mut Issues<'_>) {
    let mut seen: std::collections::HashMap<&str, (&str, &super::UpstreamTls)> =
        std::collections::HashMap::new();
    for pool in pools {
        let Some(tls) = &pool.tls else { continue };
        for s in &pool.servers {
            match seen.get(s.addr.as_str()) {
                Some((other, theirs)) if *theirs != tls => out.push(
                    format!("pools.{}.tls", pool.name),
                    format!(
                        "{} is also reached over TLS by pool {other} with other settings; use the same",
                        s.addr
                    ),
                ),
                Some(_) => {}
                None => {
                    seen.insert(&s.addr, (&pool.name, tls));
                }
            }
        }
    }
}

/// `redirect_https` / `https_port`: the https port requests are sent to, if redirecting.
fn redirect(base: &str, l: &RawListener, tls: bool, out: &mut Issues<'_>) -> Option<u16> {
    let port = l.https_port.map(|p| count(&format!("{base}.https_port"), Some(p), (1, 65535), 443, out));
    match (l.redirect_https, port) {
        (Some(true), _) if tls => {
            out.push(
                format!("{base}.redirect_https"),
                "a TLS listener cannot redirect to https: it is https",
            );
            None
        }
        (Some(true), port) => Some(u16::try_from(port.unwrap_or(443)).unwrap_or(443)),
        (_, Some(_)) => {
            out.push(format!("{base}.https_port"), "only used with redirect_https = true");
            None
        }
        _ => None,
    }
}

fn timeouts(raw: &RawTimeouts, out: &mut Issues<'_>) -> Timeouts {
    let d = Timeouts::default();
    let mut get = |key: &str, value: &Option<String>, default: Duration| {
        positive(&format!("timeouts.{key}"), value.as_deref(), default, out)
    };
    Timeouts {
        connect: get("connect", &raw.connect, d.connect),
        response: get("response", &raw.response, d.response),
        client_header: get("client_header", &raw.client_header, d.client_header),
        keepalive: get("keepalive", &raw.keepalive, d.keepalive),
        client_body: get("client_body", &raw.client_body, d.client_body),
        client_send: get("client_send", &raw.client_send, d.client_send),
        tunnel_idle: get("tunnel_idle", &raw.tunnel_idle, d.tunnel_idle),
        upstream_idle: get("upstream_idle", &raw.upstream_idle, d.upstream_idle),
        drain: get("drain", &raw.drain, d.drain),
        body_rate_window: get("body_rate_window", &raw.body_rate_window, d.body_rate_window),
    }
}

fn pool_timeouts(base: &str, raw: Option<&RawPoolTimeouts>, out: &mut Issues<'_>) -> PoolTimeouts {
    let Some(raw) = raw else { return PoolTimeouts::default() };
    let mut get = |key: &str, value: &Option<String>| {
        let path = format!("{base}.timeouts.{key}");
        value.as_deref().map(|v| positive(&path, Some(v), Duration::ZERO, out)).filter(|d| !d.is_zero())
    };
    PoolTimeouts { connect: get("connect", &raw.connect), response: get("response", &raw.response) }
}

/// A duration greater than zero, or `default` when absent (or wrong, with an issue).
pub(super) fn positive(path: &str, value: Option<&str>, default: Duration, out: &mut Issues<'_>) -> Duration {
    let Some(text) = value else { return default };
    match duration::parse(text) {
        Ok(d) if d.is_zero() => {
            out.push(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            out.push(path, e);
            default
        }
    }
}

/// A whole number within `min..=max`, or `default` when absent (or out of range, with an issue).
pub(super) fn count<T: TryFrom<i64> + Copy>(
    path: &str,
    value: Option<i64>,
    (min, max): (i64, i64),
    default: T,
    out: &mut Issues<'_>,
) -> T {
    match value {
        None => default,
        Some(v) if (min..=max).contains(&v) => T::try_from(v).unwrap_or(default),
        Some(v) => {
            out.push(path, format!("{v} is out of range {min}..={max}"));
            default
        }
    }
}

fn limits(raw: &RawLimits, out: &mut Issues<'_>) -> Limits {
    let d = Limits::default();
    let mut get = |key: &str, value: Option<i64>, range: (i64, i64), default: usize| {
        count(&format!("limits.{key}"), value, range, default, out)
    };
    Limits {
        max_header_bytes: get("max_header_bytes", raw.max_header_bytes, (8192, 1 << 20), d.max_header_bytes),
        max_headers: get("max_headers", raw.max_headers, (1, 1000), d.max_headers),
        max_connections: get("max_connections", raw.max_connections, (1, 1_000_000), d.max_connections),
        max_connections_per_client: get(
            "max_connections_per_client",
            raw.max_connections_per_client,
            (0, 1_000_000),
            d.max_connections_per_client,
        ),
        upstream_idle_per_server: get(
            "upstream_idle_per_server",
            raw.upstream_idle_per_server,
            (0, 100_000),
            d.upstream_idle_per_server,
        ),
        upstream_tasks_above: get(
            "upstream_tasks_above",
            raw.upstream_tasks_above,
            (0, 1_000_000),
            d.upstream_tasks_above,
        ),
        h2_max_streams: count(
            "limits.h2_max_streams",
            raw.h2_max_streams,
            (1, 65_535),
            d.h2_max_streams,
            out,
        ),
        max_body_size: size(
            "limits.max_body_size",
            raw.max_body_size.as_ref(),
            u64::MAX,
            d.max_body_size,
            out,
        ),
        request_buffer: size(
            "limits.request_buffer",
            raw.request_buffer.as_ref(),
            MAX_REQUEST_BUFFER,
            d.request_buffer as u64,
            out,
        ) as usize,
        request_buffer_total: size(
            "limits.request_buffer_total",
            raw.request_buffer_total.as_ref(),
            MAX_REQUEST_BUFFER_TOTAL,
            d.request_buffer_total as u64,
            out,
        ) as usize,
        min_body_rate: size(
            "limits.min_body_rate",
            raw.min_body_rate.as_ref(),
            1 << 30,
            d.min_body_rate,
            out,
        ),
    }
}

/// Largest `limits.request_buffer` (64 MiB): a buffer is memory held per upload, not a file store.
const MAX_REQUEST_BUFFER: u64 = 64 << 20;
/// Largest `limits.request_buffer_total` (16 GiB).
const MAX_REQUEST_BUFFER_TOTAL: u64 = 16 << 30;

/// A byte count (a whole number, or a string with a unit) up to `max`, or `default` when absent (or
/// wrong, with an issue).
pub(super) fn size(path: &str, value: Option<&RawSize>, max: u64, default: u64, out: &mut Issues<'_>) -> u64 {
    match value.map(parse_size) {
        None => default,
        Some(Ok(n)) if n <= max => n,
        Some(Ok(n)) => {
            out.push(path, format!("{n} is out of range 0..={max}"));
            default
        }
        Some(Err(e)) => {
            out.push(path, e);
            default
        }
    }
}

/// `1048576`, `"1048576"`, `"64KiB"`, `"64k"`, `"100MiB"`, `"1m"`, `"2GiB"`: units are powers of 1024
/// (as nginx reads `k`, `m`, `g`); `KB`, `MB`, `GB` are accepted as the same.
fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(n) => return u64::try_from(*n).map_err(|_| format!("{n} must not be negative")),
        RawSize::Text(t) => t.trim(),
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} is not a size; expected e.g. 65536, \"64KiB\" or \"100MiB\"")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size; expected e.g. 65536, \"64KiB\" or \"100MiB\""))
}

fn http(raw: &RawHttp, out: &mut Issues<'_>) -> HttpOptions {
    let underscore_headers = match raw.underscore_headers.as_deref() {
        None | Some("drop") => UnderscoreHeaders::Drop,
        Some("reject") => UnderscoreHeaders::Reject,
        Some("pass") => UnderscoreHeaders::Pass,
        Some(other) => {
            out.push(
                "http.underscore_headers",
                format!("unknown value {other:?}; expected one of \"drop\", \"reject\", \"pass\""),
            );
            UnderscoreHeaders::Drop
        }
    };
    let Some(tokens) = &raw.upgrades else {
        return HttpOptions { underscore_headers, ..HttpOptions::default() };
    };
    let mut upgrades = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let lower = token.to_ascii_lowercase();
        let path = format!("http.upgrades[{i}]");
        if lower == "h2c" {
            out.push(path, "\"h2c\" is never forwarded: lb speaks HTTP/2 to clients itself");
        } else if lower.is_empty() || !lower.bytes().all(is_token_byte) {
            out.push(path, format!("{token:?} is not an HTTP token"));
        } else {
            upgrades.push(lower);
        }
    }
    HttpOptions { upgrades, underscore_headers }
}

/// RFC 9110 `tchar`, minus '/' so that protocol versions ("websocket/13") are not accepted by accident.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn pool(name: &str, raw: &RawPool, out: &mut Issues<'_>) -> PoolConfig {
    let base = format!("pools.{name}");
    if !is_name(name) {
        out.push(&base, "pool names may use only letters, digits, '_' and '-'");
    }
    let strategy = match raw.strategy.as_deref() {
        None => StrategyKind::RoundRobin,
        Some(s) => StrategyKind::parse(s).unwrap_or_else(|| {
            out.push(
                format!("{base}.strategy"),
                format!("unknown strategy {s:?}; expected one of {:?}", StrategyKind::NAMES),
            );
            StrategyKind::RoundRobin
        }),
    };
    let mut names = HashSet::new();
    let mut servers = Vec::new();
    if raw.servers.len() > MAX_SERVERS {
        out.push(
            format!("{base}.servers"),
            format!("{} servers; at most {MAX_SERVERS} per pool", raw.servers.len()),
        );
    }
    for (i, s) in raw.servers.iter().enumerate().take(MAX_SERVERS) {
        let path = format!("{base}.servers[{i}]");
        let Some(addr) = &s.addr else {
            out.push(format!("{path}.addr"), "is required (\"host:port\")");
            continue;
        };
        if let Err(e) = check_authority(addr) {
            out.push(format!("{path}.addr"), e);
        }
        let name = s.name.clone().unwrap_or_else(|| addr.clone());
        if s.name.is_some() && name.trim().is_empty() {
            out.push(format!("{path}.name"), "must not be empty");
        }
        if !names.insert(name.clone()) {
            out.push(format!("{path}.name"), format!("{name:?} is used by an earlier server in this pool"));
        }
        let weight = match s.weight {
            None => 1,
            Some(w) if (0..=MAX_WEIGHT).contains(&w) => u32::try_from(w).unwrap_or(1),
            Some(w) => {
                out.push(format!("{path}.weight"), format!("{w} is out of range 0..={MAX_WEIGHT}"));
                1
            }
        };
        let max_requests = health::per_server(&format!("{path}.max_requests"), s.max_requests, out);
        let max_connections = health::per_server(&format!("{path}.max_connections"), s.max_connections, out);
        let backup = s.backup.unwrap_or(false);
        servers.push(ServerConfig {
            name,
            addr: addr.clone(),
            weight,
            max_requests,
            max_connections,
            backup,
        });
    }
    let hash = hash_options(&base, strategy, raw, out);
    let seed = match (raw.seed, strategy) {
        (None, _) => None,
        (Some(seed), StrategyKind::Random | StrategyKind::P2c) => Some(seed as u64),
        (Some(_), _) => {
            out.push(format!("{base}.seed"), "only applies to strategy \"random\" or \"p2c\"");
            None
        }
    };
    let sticky = raw.sticky.as_ref().map(|st| sticky(&base, name, st, out));
    let pool = PoolConfig {
        name: name.to_owned(),
        strategy,
        servers,
        hash,
        seed,
        sticky,
        health: raw.health.as_ref().map(|h| health::health(&base, h, out)),
        passive: health::passive(&base, raw.passive.as_ref(), out),
        slow_start: health::slow_start(&base, raw, out),
        retry: health::retry(&base, raw.retry.as_ref(), out),
        limits: health::limits(&base, raw.limits.as_ref(), out),
        tls: raw.tls.as_ref().and_then(|t| super::tls::upstream(&format!("{base}.tls"), t, out)),
        timeouts: pool_timeouts(&base, raw.timeouts.as_ref(), out),
    };
    health::check_combination(&base, raw, &pool, out);
    if let Some(tls) = pool.tls.as_ref().filter(|t| t.server_name.is_none()) {
        for (i, s) in pool.servers.iter().enumerate() {
            if let Err(e) = super::tls::verifiable_host(&s.addr) {
                out.push(format!("{base}.servers[{i}].addr"), format!("{e}; set {base}.tls.server_name"));
            }
        }
        let _ = tls;
    }
    pool
}

/// A server address is `host:port`: an IP literal or a DNS name, a port, nothing else.
pub(super) fn check_authority(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    if addr.contains("://") || addr.contains('/') || addr.contains('@') {
        return Err(format!("{addr:?} must be \"host:port\" without scheme, path or credentials"));
    }
    let authority: http::uri::Authority =
        addr.parse().map_err(|_| format!("{addr:?} is not a valid \"host:port\""))?;
    match authority.port_u16() {
        Some(p) if p != 0 && !authority.host().is_empty() => Ok(()),
        _ => Err(format!("{addr:?} needs a host and a non-zero port, e.g. \"10.0.0.5:8080\"")),
    }
}

fn routes(
    raw: &[RawRoute],
    pools: &[PoolConfig],
    rules: &[crate::ratelimit::RateLimitRule],
    caches: &[crate::cache::CacheSettings],
    out: &mut Issues<'_>,
) -> Vec<RouteConfig> {
    if pools.is_empty() {
        out.push("pools", "at least one pool is required, e.g. [pools.web] with servers");
        return Vec::new();
    }
    if raw.is_empty() {
        if pools.len() > 1 {
            out.push("routes", "required when more than one pool is defined: which pool gets which request?");
        }
        return vec![RouteConfig {
            host: None,
            path_prefix: None,
            pool: 0,
            max_body_size: None,
            policy: None,
            cache: None,
        }];
    }
    let mut seen = HashSet::new();
    let mut result = Vec::new();
    // By name, so that many routes over many pools stay linear.
    let mut by_name = std::collections::HashMap::new();
    for (index, pool) in pools.iter().enumerate() {
        by_name.entry(pool.name.as_str()).or_insert(index);
    }
    for (i, r) in raw.iter().enumerate() {
        let path = format!("routes[{i}]");
        let host = r.host.as_deref().and_then(|h| host_match(h, &format!("{path}.host"), out));
        let prefix =
            r.path_prefix.as_deref().and_then(|p| path_prefix(p, &format!("{path}.path_prefix"), out));
        let policy = super::edge::policy(&path, r, prefix.as_deref(), rules, out);
        let pool = match &r.pool {
            None if super::edge::redirects(r) => super::NO_POOL,
            None => {
                out.push(format!("{path}.pool"), "is required");
                continue;
            }
            Some(name) => match by_name.get(name.as_str()) {
                Some(&index) => index,
                None => {
                    out.push(format!("{path}.pool"), format!("unknown pool {name:?}"));
                    continue;
                }
            },
        };
        let max_body_size = r
            .max_body_size
            .as_ref()
            .map(|v| size(&format!("{path}.max_body_size"), Some(v), u64::MAX, 0, out));
        let cache = r.cache.as_ref().and_then(|name| {
            let found = caches.iter().position(|c| &*c.name == name.as_str());
            if found.is_none() {
                out.push(
                    format!("{path}.cache"),
                    format!("unknown cache {name:?}: define it as [caches.{name}]"),
                );
            }
            found
        });
        let route = RouteConfig { host, path_prefix: prefix, pool, max_body_size, policy, cache };
        if !seen.insert((route.host.clone(), route.path_prefix.clone())) {
            out.push(path, "matches the same host and path prefix as an earlier route");
            continue;
        }
        result.push(route);
    }
    order_routes(&mut result);
    result
}

/// Sorts routes most specific first: exact host, then longer wildcard, then any host; within that,
/// longer prefix. The sort is stable. The router's index answers as a scan in this order would.
pub(crate) fn order_routes(routes: &mut [RouteConfig]) {
    routes.sort_by_key(|r| {
        let host_rank = match &r.host {
            Some(HostMatch::Exact(_)) => (0, 0),
            Some(HostMatch::Suffix(s)) => (1, usize::MAX - s.len()),
            None => (2, 0),
        };
        (host_rank, usize::MAX - r.path_prefix.as_ref().map_or(0, String::len))
    });
}

pub(super) fn host_match(host: &str, path: &str, out: &mut Issues<'_>) -> Option<HostMatch> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        out.push(
            path,
            format!("{host:?} is not a host name (write \"example.com\" or \"*.example.com\", no port)"),
        );
        return None;
    }
    Some(if suffix { HostMatch::Suffix(format!(".{name}")) } else { HostMatch::Exact(lower) })
}

pub(super) fn path_prefix(prefix: &str, path: &str, out: &mut Issues<'_>) -> Option<String> {
    if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
        out.push(path, format!("{prefix:?} must start with '/' and hold no query, fragment or space"));
        return None;
    }
    // "/api/" and "/api" mean the same thing: match on segment boundaries.
    let trimmed = prefix.trim_end_matches('/');
    Some(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() })
}

/// Default ring points per unit of weight (nginx's ketama uses 160 per server).
const DEFAULT_VNODES: u32 = 160;

fn hash_options(
    base: &str,
    strategy: StrategyKind,
    raw: &RawPool,
    out: &mut Issues<'_>,
) -> Option<HashConfig> {
    if strategy != StrategyKind::ConsistentHash {
        let given = [
            ("hash_key", raw.hash_key.is_some()),
            ("hash_fallback", raw.hash_fallback.is_some()),
            ("hash_balance_factor", raw.hash_balance_factor.is_some()),
            ("hash_vnodes", raw.hash_vnodes.is_some()),
        ];
        for (key, _) in given.iter().filter(|(_, set)| *set) {
            out.push(format!("{base}.{key}"), "only applies to strategy \"consistent_hash\"");
        }
        return None;
    }
    let key = match raw.hash_key.as_deref() {
        None => {
            out.push(
                format!("{base}.hash_key"),
                format!("strategy \"consistent_hash\" requires it: {KEY_FORMS}"),
            );
            HashKey::ClientIp
        }
        Some(text) => parse_hash_key(text).unwrap_or_else(|e| {
            out.push(format!("{base}.hash_key"), e);
            HashKey::ClientIp
        }),
    };
    let fallback = match raw.hash_fallback.as_deref() {
        None | Some("round_robin") => HashFallback::RoundRobin,
        Some("client_ip") => HashFallback::ClientIp,
        Some(other) => {
            out.push(
                format!("{base}.hash_fallback"),
                format!("unknown fallback {other:?}; expected \"round_robin\" or \"client_ip\""),
            );
            HashFallback::RoundRobin
        }
    };
    let balance_factor = match raw.hash_balance_factor {
        Some(f) if !(1.0..=100.0).contains(&f) => {
            out.push(
                format!("{base}.hash_balance_factor"),
                format!("{f} is out of range 1.0..=100.0 (e.g. 1.25)"),
            );
            None
        }
        other => other,
    };
    let vnodes = match raw.hash_vnodes {
        None => DEFAULT_VNODES,
        Some(v) if (1..=1000).contains(&v) => u32::try_from(v).unwrap_or(DEFAULT_VNODES),
        Some(v) => {
            out.push(format!("{base}.hash_vnodes"), format!("{v} is out of range 1..=1000"));
            DEFAULT_VNODES
        }
    };
    Some(HashConfig { key, fallback, balance_factor, vnodes })
}

const KEY_FORMS: &str = "\"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"";

pub(super) fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    let named = |kind: &str, name: &str| -> Result<String, String> {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("{text:?}: the {kind} name must be a non-empty token"));
        }
        Ok(name.to_owned())
    };
    match text.split_once(':') {
        None if text == "client_ip" => Ok(HashKey::ClientIp),
        None if text == "path" => Ok(HashKey::Path),
        Some(("header", name)) => {
            let name = named("header", name)?;
            http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{text:?}: not a valid header name"))
        }
        Some(("cookie", name)) => named("cookie", name).map(HashKey::Cookie),
        Some(("query", name)) => named("query parameter", name).map(HashKey::Query),
        _ => Err(format!("unknown key {text:?}; expected {KEY_FORMS}")),
    }
}

/// Shortest accepted sticky secret: 16 bytes (128 bits).
const MIN_SECRET: usize = 16;
/// Most servers in one pool: bounds every per-pool structure (hash rings, weight tables).
const MAX_SERVERS: usize = 10_000;
/// Largest key file read: a key is a few dozen bytes, and a path to a device or a huge file must not
/// make validation hang or eat memory.
const MAX_SECRET_FILE: u64 = 4096;

/// Reads a regular file of at most `max` bytes.
fn read_small_file(path: &str, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Checked before opening: opening a FIFO would block until a writer appears.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn sticky_secret(raw: &RawStickySecret, out: &mut Issues<'_>) -> Option<Secret> {
    let bytes = match (&raw.secret, &raw.secret_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            out.push("sticky.secret_file", "set either sticky.secret or sticky.secret_file, not both");
            return None;
        }
        (Some(secret), None) => secret.as_bytes().to_vec(),
        (None, Some(path)) => match read_small_file(path, MAX_SECRET_FILE) {
            Ok(bytes) => bytes.trim_ascii().to_vec(),
            Err(e) => {
                out.push("sticky.secret_file", format!("cannot read {path}: {e}"));
                return None;
            }
        },
    };
    if bytes.len() < MIN_SECRET {
        let key = if raw.secret.is_some() { "sticky.secret" } else { "sticky.secret_file" };
        out.push(key, format!("is {} bytes; use at least {MIN_SECRET} random bytes", bytes.len()));
        return None;
    }
    Some(Secret(bytes))
}

fn sticky(base: &str, pool: &str, raw: &RawSticky, out: &mut Issues<'_>) -> StickyConfig {
    let path = |key: &str| format!("{base}.sticky.{key}");
    let cookie = raw.cookie.clone().unwrap_or_else(|| format!("lb_{pool}"));
    if cookie.is_empty() || !cookie.bytes().all(is_token_byte) {
        out.push(
            path("cookie"),
            format!("{cookie:?} is not a valid cookie name (letters, digits, '-', '_', ...)"),
        );
    }
    let cookie_path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
    if !cookie_path.starts_with('/') || !cookie_path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        out.push(path("path"), format!("{cookie_path:?} must start with '/' and hold no spaces or ';'"));
    }
    if let Some(domain) = &raw.domain {
        let ok =
            !domain.is_empty() && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            out.push(path("domain"), format!("{domain:?} is not a domain name"));
        }
    }
    let max_age = raw.max_age.as_deref().and_then(|text| match duration::parse(text) {
        Ok(d) if d.as_secs() == 0 => {
            out.push(path("max_age"), "must be at least 1s (omit it for a session cookie)");
            None
        }
        Ok(d) => Some(d.as_secs()),
        Err(e) => {
            out.push(path("max_age"), e);
            None
        }
    });
    let same_site = match raw.same_site.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("lax") => SameSite::Lax,
        Some("strict") => SameSite::Strict,
        Some("none") => SameSite::None,
        Some(other) => {
            out.push(path("same_site"), format!("{other:?}: expected \"lax\", \"strict\" or \"none\""));
            SameSite::Lax
        }
    };
    if same_site == SameSite::None && raw.secure != Some(true) {
        out.push(path("same_site"), "\"none\" requires secure = true (browsers drop such cookies otherwise)");
    }
    StickyConfig {
        cookie,
        path: cookie_path,
        domain: raw.domain.clone(),
        max_age,
        http_only: raw.http_only.unwrap_or(true),
        secure: raw.secure,
        same_site,
    }
}

/// Whether two listening addresses would collide at bind: the same non-zero port, and the same IP or
/// one that covers the other (`0.0.0.0` covers IPv4; `[::]` covers everything on Linux's default
/// dual-stack sockets).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Default admin address: loopback only, so metrics and status are never public unless configured.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

fn admin(raw: &RawAdmin, listeners: &[ListenerConfig], out: &mut Issues<'_>) -> Option<SocketAddr> {
    if raw.enabled == Some(false) {
        return None;
    }
    let text = raw.addr.as_deref().unwrap_or(DEFAULT_ADMIN);
    match text.parse::<SocketAddr>() {
        Ok(addr) if listeners.iter().any(|l| overlaps(l.addr, addr)) => {
            out.push("admin.addr", format!("{addr} overlaps a proxy listener"));
            None
        }
        Ok(addr) => Some(addr),
        Err(_) => {
            out.push("admin.addr", format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:9901\")"));
            None
        }
    }
}

/// Shortest accepted admin token: 16 bytes, as for the sticky secret.
const MIN_TOKEN: usize = 16;

/// `admin.token` or `admin.token_file`: required when the admin listener is not on loopback.
fn admin_token(raw: &RawAdmin, addr: Option<SocketAddr>, out: &mut Issues<'_>) -> Option<Secret> {
    let (key, bytes) = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            out.push("admin.token_file", "set either admin.token or admin.token_file, not both");
            return None;
        }
        (Some(token), None) => ("admin.token", token.as_bytes().to_vec()),
        (None, Some(path)) => match read_small_file(path, MAX_SECRET_FILE) {
            Ok(bytes) => ("admin.token_file", bytes.trim_ascii().to_vec()),
            Err(e) => {
                out.push("admin.token_file", format!("cannot read {path}: {e}"));
                return None;
            }
        },
        (None, None) => {
            if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                out.push(
                    "admin.token",
                    format!(
                        "required when admin.addr ({addr}) is not a loopback address: set admin.token or \
                         admin.token_file, or listen on 127.0.0.1"
                    ),
                );
            }
            return None;
        }
    };
    // Never echo the token itself: only what is wrong with it.
    if bytes.len() < MIN_TOKEN {
        out.push(key, format!("is {} bytes; use at least {MIN_TOKEN} random characters", bytes.len()));
        return None;
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        out.push(key, "may hold only visible ASCII characters (it travels in an HTTP header)");
        return None;
    }
    Some(Secret(bytes))
}
