//! A pool's resilience options: active health checks, passive ejection, slow start, retries and
//! circuit-breaking limits. Types first, then their validation. docs/health.md explains each.

use super::duration;
use super::raw::{RawHealth, RawPassive, RawPool, RawPoolLimits, RawRetry};
use super::validate::{count, positive, Issues};
use std::time::Duration;

/// Active health checks of a pool: `[pools.NAME.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// What a check does. Default HTTP.
    pub kind: CheckKind,
    /// Time between two checks of one server. Default 2s (HAProxy's `inter`).
    pub interval: Duration,
    /// How long one check may take. Default 1s.
    pub timeout: Duration,
    /// Consecutive passes that bring a down server up. Default 2 (HAProxy's `rise`).
    pub rise: u32,
    /// Consecutive failures that take an up server down. Default 3 (HAProxy's `fall`).
    pub fall: u32,
    /// Whether a server starts up (optimistic, default) or down until it passes `rise` checks.
    pub start_up: bool,
}

/// One kind of check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `type = "tcp"`: a TCP connect that succeeds within the timeout passes.
    Tcp,
    /// `type = "http"`: a request on a fresh connection whose status falls in `expect` passes.
    Http(HttpCheck),
    /// `type = "grpc"`: the gRPC health-checking protocol (`grpc.health.v1.Health/Check`) over
    /// HTTP/2 on a fresh connection; an answer `SERVING` for `grpc_service` (default `""`, the
    /// whole server) passes.
    Grpc {
        /// `grpc_service`: the service asked about.
        service: String,
    },
}

/// An HTTP check request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// `method`: GET (default), HEAD or OPTIONS.
    pub method: http::Method,
    /// `path`: origin-form target. Default `/`.
    pub path: String,
    /// `host`: the Host header. Default: the server's address.
    pub host: Option<String>,
    /// `expect`: accepted status ranges, e.g. `["200-399"]` (default) or `["200", "204"]`.
    pub expect: Vec<(u16, u16)>,
}

impl HttpCheck {
    /// Whether `status` passes.
    pub fn accepts(&self, status: u16) -> bool {
        self.expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Passive health checks (outlier detection) from live traffic: `[pools.NAME.passive]`. On by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive failures that eject a server. Default 5 (Envoy's `consecutive_5xx`).
    pub consecutive: u32,
    /// Which outcomes count as failures. Default connect failures and timeouts.
    pub on: FailureKinds,
    /// First ejection time; each further ejection doubles it. Default 30s (Envoy).
    pub base_ejection: Duration,
    /// Longest ejection. Default 5m.
    pub max_ejection: Duration,
    /// Most servers of a pool ejected at once, as a percentage of the pool (rounded down). Default 50.
    pub max_ejected_percent: u32,
}

impl Default for Passive {
    fn default() -> Self {
        Self {
            consecutive: 5,
            on: FailureKinds { connect: true, timeout: true, reset: false, status_5xx: false },
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The outcomes passive checks count: `on = ["connect", "timeout", "reset", "5xx"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureKinds {
    /// Connection refused or connect timeout.
    pub connect: bool,
    /// No response head within `timeouts.response`.
    pub timeout: bool,
    /// The connection broke before a response head arrived.
    pub reset: bool,
    /// A response with status 500..=599.
    pub status_5xx: bool,
}

/// Retries: `[pools.NAME.retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Most retries per request (after the first try). Default 2; 0 disables retries.
    pub attempts: u32,
    /// Retries in progress may be at most this percentage of the pool's requests in flight. Default 20
    /// (Envoy's retry budget).
    pub budget_percent: u32,
    /// Retries in progress always allowed, whatever the budget says. Default 3 (Envoy).
    pub budget_min: u32,
    /// Response statuses after which an idempotent request whose body can be sent again is retried
    /// on another server (HAProxy's `retry-on 503`, nginx's `proxy_next_upstream http_503`). Default
    /// none.
    pub on_status: StatusSet,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 2, budget_percent: 20, budget_min: 3, on_status: StatusSet::default() }
    }
}

/// A set of 4xx and 5xx statuses, as bits: `Copy`, and a lookup is one shift.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 4]);

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(&self, status: http::StatusCode) -> bool {
        let Some(i) = status.as_u16().checked_sub(400).map(usize::from) else { return false };
        self.0.get(i / 64).is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    fn insert(&mut self, status: u16) {
        let i = usize::from(status - 400);
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (400..600).filter(|s| self.0[usize::from(s - 400) / 64] & (1 << (usize::from(s - 400) % 64)) != 0)
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Circuit breaking: `[pools.NAME.limits]`. Server entries may override the per-server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most requests in flight on one server. Default none.
    pub max_requests: Option<usize>,
    /// Most open connections to one server. Default none.
    pub max_connections: Option<usize>,
    /// Most requests waiting for a server below its limits. Default 100.
    pub queue: usize,
    /// Longest wait in that queue before a 503. Default 5s (HAProxy's `timeout queue` falls back to
    /// `timeout connect`, whose default this is).
    pub queue_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { max_requests: None, max_connections: None, queue: 100, queue_timeout: Duration::from_secs(5) }
    }
}

/// Validates the health-related keys of a pool.
pub(super) fn health(base: &str, raw: &RawHealth, out: &mut Issues<'_>) -> HealthCheck {
    let key = |k: &str| format!("{base}.health.{k}");
    let interval = positive(&key("interval"), raw.interval.as_deref(), Duration::from_secs(2), out);
    let timeout = positive(&key("timeout"), raw.timeout.as_deref(), Duration::from_secs(1), out);
    let rise = count(&key("rise"), raw.rise, (1, 100), 2, out);
    let fall = count(&key("fall"), raw.fall, (1, 100), 3, out);
    let start_up = match raw.initial.as_deref() {
        None | Some("up") => true,
        Some("down") => false,
        Some(other) => {
            out.push(key("initial"), format!("{other:?}: expected \"up\" or \"down\""));
            true
        }
    };
    let kind = match raw.r#type.as_deref() {
        None | Some("http") => CheckKind::Http(http_check(base, raw, out)),
        Some(kind @ ("tcp" | "grpc")) => {
            for (k, set) in [("method", raw.method.is_some()), ("path", raw.path.is_some())]
                .into_iter()
                .chain([("host", raw.host.is_some()), ("expect", raw.expect.is_some())])
            {
                if set {
                    out.push(key(k), "only applies to type = \"http\"");
                }
            }
            match kind {
                "grpc" => CheckKind::Grpc { service: raw.grpc_service.clone().unwrap_or_default() },
                _ => CheckKind::Tcp,
            }
        }
        Some(other) => {
            out.push(key("type"), format!("{other:?}: expected \"http\", \"tcp\" or \"grpc\""));
            CheckKind::Tcp
        }
    };
    if raw.grpc_service.is_some() && !matches!(kind, CheckKind::Grpc { .. }) {
        out.push(key("grpc_service"), "only applies to type = \"grpc\"");
    }
    HealthCheck { kind, interval, timeout, rise, fall, start_up }
}

fn http_check(base: &str, raw: &RawHealth, out: &mut Issues<'_>) -> HttpCheck {
    let key = |k: &str| format!("{base}.health.{k}");
    let method = match raw.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("GET") => http::Method::GET,
        Some("HEAD") => http::Method::HEAD,
        Some("OPTIONS") => http::Method::OPTIONS,
        Some(other) => {
            out.push(key("method"), format!("{other:?}: expected \"GET\", \"HEAD\" or \"OPTIONS\""));
            http::Method::GET
        }
    };
    let path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        out.push(key("path"), format!("{path:?} must be a path starting with '/'"));
    }
    if let Some(host) = &raw.host {
        if http::HeaderValue::from_str(host).is_err() || host.is_empty() || host.contains(' ') {
            out.push(key("host"), format!("{host:?} is not a valid Host value"));
        }
    }
    let expect = match &raw.expect {
        None => vec![(200, 399)],
        Some(list) if list.is_empty() => {
            out.push(key("expect"), "must list at least one status or range, e.g. [\"200-399\"]");
            vec![(200, 399)]
        }
        Some(list) => list
            .iter()
            .filter_map(|text| status_range(text).map_err(|e| out.push(key("expect"), e)).ok())
            .collect(),
    };
    HttpCheck { method, path, host: raw.host.clone(), expect }
}

/// `"200"` or `"200-399"`, within 100..=599.
fn status_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|v| (100..=599).contains(v));
    let range = match text.split_once('-') {
        None => parse(text).map(|v| (v, v)),
        Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(lo, hi)| lo <= hi),
    };
    range.ok_or_else(|| format!("{text:?} is not a status (100-599) or a range like \"200-399\""))
}

/// Validates `[pools.NAME.passive]`.
pub(super) fn passive(base: &str, raw: Option<&RawPassive>, out: &mut Issues<'_>) -> Option<Passive> {
    let d = Passive::default();
    let Some(raw) = raw else { return Some(d) };
    let key = |k: &str| format!("{base}.passive.{k}");
    let consecutive = count(&key("consecutive"), raw.consecutive, (1, 1000), d.consecutive, out);
    let on = match &raw.on {
        None => d.on,
        Some(list) if list.is_empty() => {
            out.push(key("on"), "must list at least one of \"connect\", \"timeout\", \"reset\", \"5xx\" (or set enabled = false)");
            d.on
        }
        Some(list) => {
            let mut kinds = FailureKinds { connect: false, timeout: false, reset: false, status_5xx: false };
            for item in list {
                match item.as_str() {
                    "connect" => kinds.connect = true,
                    "timeout" => kinds.timeout = true,
                    "reset" => kinds.reset = true,
                    "5xx" => kinds.status_5xx = true,
                    other => out.push(
                        key("on"),
                        format!("{other:?}: expected \"connect\", \"timeout\", \"reset\" or \"5xx\""),
                    ),
                }
            }
            kinds
        }
    };
    let base_ejection = positive(&key("base_ejection"), raw.base_ejection.as_deref(), d.base_ejection, out);
    let max_ejection = positive(&key("max_ejection"), raw.max_ejection.as_deref(), d.max_ejection, out);
    if max_ejection < base_ejection {
        out.push(key("max_ejection"), "must not be shorter than base_ejection");
    }
    let max_ejected_percent =
        count(&key("max_ejected_percent"), raw.max_ejected_percent, (0, 100), d.max_ejected_percent, out);
    let passive = Passive { consecutive, on, base_ejection, max_ejection, max_ejected_percent };
    let others = raw.consecutive.is_some()
        || raw.on.is_some()
        || raw.base_ejection.is_some()
        || raw.max_ejection.is_some()
        || raw.max_ejected_percent.is_some();
    if raw.enabled == Some(false) && others {
        out.push(key("enabled"), "is false, so the other passive keys would have no effect: remove them");
    }
    (raw.enabled != Some(false)).then_some(passive)
}

/// Validates `[pools.NAME.retry]`.
pub(super) fn retry(base: &str, raw: Option<&RawRetry>, out: &mut Issues<'_>) -> Retry {
    let d = Retry::default();
    let Some(raw) = raw else { return d };
    let key = |k: &str| format!("{base}.retry.{k}");
    Retry {
        attempts: count(&key("attempts"), raw.attempts, (0, 10), d.attempts, out),
        budget_percent: count(&key("budget_percent"), raw.budget_percent, (0, 100), d.budget_percent, out),
        budget_min: count(&key("budget_min"), raw.budget_min, (0, 10_000), d.budget_min, out),
        on_status: statuses(&key("on_status"), raw.on_status.as_deref().unwrap_or_default(), out),
    }
}

/// `on_status`: 4xx and 5xx statuses only; a 2xx or 3xx answer is not a failure to retry.
fn statuses(path: &str, raw: &[i64], out: &mut Issues<'_>) -> StatusSet {
    let mut set = StatusSet::default();
    for &s in raw {
        match u16::try_from(s) {
            Ok(s) if (400..600).contains(&s) => set.insert(s),
            _ => out.push(path, format!("{s} is not a 4xx or 5xx status")),
        }
    }
    set
}

/// Validates `[pools.NAME.limits]`.
pub(super) fn limits(base: &str, raw: Option<&RawPoolLimits>, out: &mut Issues<'_>) -> PoolLimits {
    let d = PoolLimits::default();
    let Some(raw) = raw else { return d };
    let key = |k: &str| format!("{base}.limits.{k}");
    PoolLimits {
        max_requests: per_server(&key("max_requests"), raw.max_requests, out),
        max_connections: per_server(&key("max_connections"), raw.max_connections, out),
        queue: count(&key("queue"), raw.queue, (0, 1_000_000), d.queue, out),
        queue_timeout: positive(&key("queue_timeout"), raw.queue_timeout.as_deref(), d.queue_timeout, out),
    }
}

/// A per-server limit: 1..=1_000_000, or none.
pub(super) fn per_server(path: &str, value: Option<i64>, out: &mut Issues<'_>) -> Option<usize> {
    let v = value?;
    if (1..=1_000_000).contains(&v) {
        return usize::try_from(v).ok();
    }
    out.push(path, format!("{v} is out of range 1..=1000000"));
    None
}

/// Reports options that could never take effect in this pool: a queue without limits to wait for,
/// a slow start with nothing that takes servers out and lets them back.
pub(super) fn check_combination(base: &str, raw: &RawPool, pool: &super::PoolConfig, out: &mut Issues<'_>) {
    let limited = pool.limits.max_requests.is_some()
        || pool.limits.max_connections.is_some()
        || pool.servers.iter().any(|s| s.max_requests.is_some() || s.max_connections.is_some());
    if let Some(limits) = &raw.limits {
        for (key, set) in
            [("queue", limits.queue.is_some()), ("queue_timeout", limits.queue_timeout.is_some())]
        {
            if set && !limited {
                out.push(format!("{base}.limits.{key}"), "only applies with max_requests or max_connections");
            }
        }
    }
    let grpc = pool.health.as_ref().is_some_and(|h| matches!(h.kind, CheckKind::Grpc { .. }));
    if grpc && pool.tls.as_ref().is_some_and(|t| !t.http2) {
        out.push(
            format!("{base}.health.type"),
            "\"grpc\" needs HTTP/2 to the servers: set http2 = true in the pool's [tls]",
        );
    }
    if pool.slow_start.is_some() && pool.health.is_none() && pool.passive.is_none() {
        out.push(
            format!("{base}.slow_start"),
            "has no effect without [health] checks or passive ejection: servers never come back",
        );
    }
}

/// Validates `slow_start`: a duration, `"0s"` (default) meaning off.
pub(super) fn slow_start(base: &str, raw: &RawPool, out: &mut Issues<'_>) -> Option<Duration> {
    let text = raw.slow_start.as_deref()?;
    match duration::parse(text) {
        Ok(d) if d.is_zero() => None,
        Ok(d) => Some(d),
        Err(e) => {
            out.push(format!("{base}.slow_start"), e);
            None
        }
    }
}
