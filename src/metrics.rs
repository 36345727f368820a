//! Prometheus metrics: every name is a constant here, described at start, with bounded labels
//! (listener, pool, server, status class, outcome; never a path or a client address).
//!
//! Adding a metric: 1. a `pub const` name below; 2. its `describe_*` line in [`describe`]; 3. a row in
//! docs/observability.md. Hot-path counters are registered once per snapshot ([`ServerMetrics`]) so a
//! request only increments handles; gauges that mirror live state (in flight, ready, generation) are
//! set at scrape time from the atomics, costing the request path nothing.

use crate::upstream::UpstreamStats;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;

/// Requests answered, by pool, server and status class (`1xx`..`5xx`).
pub const REQUESTS: &str = "lb_requests_total";
/// Time from receiving a request to the end of its response body, by pool.
pub const REQUEST_DURATION: &str = "lb_request_duration_seconds";
/// Time from sending a request upstream to its response head, by pool and server.
pub const UPSTREAM_TTFB: &str = "lb_upstream_response_seconds";
/// Requests in flight per server (mirrors the in-flight guards).
pub const UPSTREAM_IN_FLIGHT: &str = "lb_upstream_in_flight";
/// 1 if a server may take new requests, else 0.
pub const UPSTREAM_READY: &str = "lb_upstream_ready";
/// Open upstream connections, by configured server address.
pub const UPSTREAM_CONNECTIONS: &str = "lb_upstream_connections";
/// Failed attempts to reach a server, by kind: `connect`, `timeout`, `reset`, `limit`, `invalid`.
pub const UPSTREAM_ERRORS: &str = "lb_upstream_errors_total";
/// Retries of failed attempts on another server, by pool.
pub const RETRIES: &str = "lb_retries_total";
/// Retries not made because the pool's retry budget was spent, by pool.
pub const RETRIES_REFUSED: &str = "lb_retries_refused_total";
/// Active health checks by pool, server and result (`pass`, `fail`).
pub const HEALTH_CHECKS: &str = "lb_health_checks_total";
/// Health state changes by pool, server, new state (`up`, `down`) and cause (`check`, `passive`).
pub const HEALTH_CHANGES: &str = "lb_health_changes_total";
/// A server's admin state set by an operator: 0 `ready`, 1 `drain`, 2 `maint`.
pub const UPSTREAM_ADMIN_STATE: &str = "lb_upstream_admin_state";
/// A server's weight in force: the configured one, or an operator's override.
pub const UPSTREAM_WEIGHT: &str = "lb_upstream_weight";
/// 1 while an operator's override (state or weight) is in force for a server.
pub const UPSTREAM_OVERRIDDEN: &str = "lb_upstream_override";
/// 1 if a server passes its health checks and is not ejected, else 0.
pub const UPSTREAM_HEALTHY: &str = "lb_upstream_healthy";
/// Requests waiting in a pool's queue for a server below its limits.
pub const QUEUED: &str = "lb_pool_queued";
/// Queued requests answered 503, by pool and reason (`full`, `timeout`).
pub const QUEUE_REJECTED: &str = "lb_queue_rejected_total";
/// Request body bytes received from clients, by pool.
pub const RECEIVED_BYTES: &str = "lb_received_bytes_total";
/// Memory reserved by request buffers now, process-wide (bounded by `limits.request_buffer_total`).
pub const REQUEST_BUFFER_BYTES: &str = "lb_request_buffer_bytes";
/// Response body bytes sent to clients, by pool.
pub const SENT_BYTES: &str = "lb_sent_bytes_total";
/// Open client connections, by listener.
pub const OPEN_CONNECTIONS: &str = "lb_open_connections";
/// Requests in progress, by listener.
pub const LISTENER_IN_FLIGHT: &str = "lb_listener_in_flight";
/// Client connections waiting for their next request holding no request state, by listener.
pub const IDLE_CONNECTIONS: &str = "lb_idle_connections";
/// Client connections accepted, by listener.
pub const CONNECTIONS: &str = "lb_connections_total";
/// Counter: client connections closed as soon as accepted, by listener and reason (`per_client`).
pub const CONNECTIONS_REFUSED: &str = "lb_connections_refused_total";
/// Configuration loads by outcome (`ok`, `error`).
pub const CONFIG_RELOADS: &str = "lb_config_reloads_total";
/// Generation of the running configuration (1 at start, +1 per applied reload).
pub const CONFIG_GENERATION: &str = "lb_config_generation";
/// First 48 bits of the running configuration's SHA-256 (the hash `/status` shows in hex).
pub const CONFIG_HASH: &str = "lb_config_hash";
/// 1 if the last reload worked, 0 if it was refused.
pub const CONFIG_LAST_RELOAD_OK: &str = "lb_config_last_reload_successful";
/// Unix time of the last reload that worked.
pub const CONFIG_LAST_RELOAD_TIME: &str = "lb_config_last_reload_success_timestamp_seconds";
/// TLS handshakes on client connections, by listener and result (`ok` or why it failed).
pub const TLS_HANDSHAKES: &str = "lb_tls_handshakes_total";
/// When each listener certificate expires (Unix time of its notAfter).
pub const CERT_EXPIRY: &str = "lb_tls_certificate_expiry_timestamp_seconds";
/// PROXY protocol headers on client connections, by listener and result (`ok` or why refused).
pub const PROXY_HEADERS: &str = "lb_proxy_protocol_headers_total";
/// Rate-limit decisions, by rule and result (`allowed`, `limited`).
pub const RATE_LIMIT_DECISIONS: &str = "lb_rate_limit_decisions_total";
/// Rate-limit decisions Redis did not answer, by rule and reason (`timeout`, `error`, `breaker`).
pub const RATE_LIMIT_REDIS_ERRORS: &str = "lb_rate_limit_redis_errors_total";
/// Time to take a rate-limit decision, by rule and store (`local`, `redis`).
pub const RATE_LIMIT_DECISION_SECONDS: &str = "lb_rate_limit_decision_seconds";
/// Cached-route requests, by cache and result (`hit`, `miss`, `stale`, `revalidated`, `bypass`,
/// `collapsed`).
pub const CACHE_REQUESTS: &str = "lb_cache_requests_total";
/// Objects stored, by cache.
pub const CACHE_STORED: &str = "lb_cache_stored_total";
/// Objects evicted to stay within `max_size`, by cache.
pub const CACHE_EVICTIONS: &str = "lb_cache_evictions_total";
/// Bytes stored, by cache (headers and bodies).
pub const CACHE_BYTES: &str = "lb_cache_bytes";
/// Access-log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED: &str = "lb_access_log_dropped_total";

/// Histogram buckets for a proxy: sub-millisecond to a minute.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the process-wide Prometheus recorder and describes every metric. Call once, and before
/// building the [`crate::runtime::Runtime`]: handles registered earlier go to the no-op recorder.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| e.to_string())?
        // A local decision takes well under a microsecond, a Redis one a round trip.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RATE_LIMIT_DECISION_SECONDS.to_owned()),
            &[0.000_001, 0.000_01, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

/// Describes every metric (help text and unit).
pub fn describe() {
    describe_counter!(REQUESTS, "Requests answered, by pool, server and status class.");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Request start to end of response body.");
    describe_histogram!(UPSTREAM_TTFB, Unit::Seconds, "Request sent upstream to response head received.");
    describe_gauge!(UPSTREAM_IN_FLIGHT, "Requests in flight per server.");
    describe_gauge!(UPSTREAM_READY, "1 if the server may take new requests.");
    describe_gauge!(UPSTREAM_CONNECTIONS, "Open upstream connections, by server address.");
    describe_counter!(UPSTREAM_ERRORS, "Failed attempts to reach a server, by kind.");
    describe_counter!(RETRIES, "Retries of failed attempts on another server.");
    describe_counter!(RETRIES_REFUSED, "Retries not made because the retry budget was spent.");
    describe_counter!(HEALTH_CHECKS, "Active health checks by result.");
    describe_counter!(HEALTH_CHANGES, "Health state changes by new state and cause.");
    describe_gauge!(UPSTREAM_ADMIN_STATE, "Admin state set by an operator: 0 ready, 1 drain, 2 maint.");
    describe_gauge!(UPSTREAM_WEIGHT, "Weight in force (configured, or an operator's override).");
    describe_gauge!(UPSTREAM_OVERRIDDEN, "1 while an operator's override is in force for the server.");
    describe_gauge!(UPSTREAM_HEALTHY, "1 if the server passes health checks and is not ejected.");
    describe_gauge!(QUEUED, "Requests waiting for a server below its limits.");
    describe_counter!(QUEUE_REJECTED, "Queued requests answered 503, by reason.");
    describe_counter!(RECEIVED_BYTES, Unit::Bytes, "Request body bytes received from clients.");
    describe_gauge!(REQUEST_BUFFER_BYTES, Unit::Bytes, "Memory reserved by request buffers now.");
    describe_counter!(SENT_BYTES, Unit::Bytes, "Response body bytes sent to clients.");
    describe_gauge!(OPEN_CONNECTIONS, "Open client connections.");
    describe_counter!(CONNECTIONS, "Client connections accepted.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed as soon as accepted (reason per_client: limits.max_connections_per_client)."
    );
    describe_gauge!(LISTENER_IN_FLIGHT, "Requests in progress, by listener.");
    describe_gauge!(
        IDLE_CONNECTIONS,
        "Client connections idle long enough to hold no request state, by listener."
    );
    describe_counter!(CONFIG_RELOADS, "Configuration loads by outcome.");
    describe_gauge!(CONFIG_GENERATION, "Generation of the running configuration.");
    describe_gauge!(CONFIG_HASH, "First 48 bits of the running configuration's SHA-256.");
    describe_gauge!(CONFIG_LAST_RELOAD_OK, "1 if the last reload worked, 0 if it was refused.");
    describe_gauge!(CONFIG_LAST_RELOAD_TIME, Unit::Seconds, "Unix time of the last reload that worked.");
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes by listener and result (ok, or why they failed).");
    describe_gauge!(CERT_EXPIRY, Unit::Seconds, "Unix time when each listener certificate expires.");
    describe_counter!(PROXY_HEADERS, "PROXY protocol headers by listener and result (ok, or why refused).");
    describe_counter!(RATE_LIMIT_DECISIONS, "Rate-limit decisions by rule and result (allowed, limited).");
    describe_counter!(
        RATE_LIMIT_REDIS_ERRORS,
        "Rate-limit decisions Redis did not answer, by rule and reason (timeout, error, breaker)."
    );
    describe_histogram!(
        RATE_LIMIT_DECISION_SECONDS,
        Unit::Seconds,
        "Time to take a rate-limit decision, by rule and store (local, redis)."
    );
    describe_counter!(ACCESS_LOG_DROPPED, "Access-log lines dropped because the writer fell behind.");
    describe_counter!(
        CACHE_REQUESTS,
        "Cached-route requests by cache and result (hit, miss, stale, revalidated, bypass, collapsed)."
    );
    describe_counter!(CACHE_STORED, "Objects stored, by cache.");
    describe_counter!(CACHE_EVICTIONS, "Objects evicted to stay within max_size, by cache.");
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes stored, by cache (headers and bodies).");
}

/// The status classes, as labels.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `status`'s place in [`CLASSES`] (below 100 counts as 1xx, above 599 as 5xx).
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One server's hot-path metric handles, registered when a snapshot is built. Each also feeds the
/// server's console counters ([`crate::traffic`]), which outlive snapshots.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    requests: [Counter; 5],
    /// Upstream time to response head.
    pub ttfb: ResponseTime,
    stats: Arc<UpstreamStats>,
}

impl ServerMetrics {
    /// Registers (or finds, after a reload) the handles of `server` in `pool`, whose live state is
    /// `stats`.
    pub fn new(pool: &str, server: &str, stats: &Arc<UpstreamStats>) -> Self {
        let labels = |class: &'static str| counter!(REQUESTS, "pool" => pool.to_owned(), "server" => server.to_owned(), "class" => class);
        Self {
            requests: CLASSES.map(labels),
            ttfb: ResponseTime {
                histogram: histogram!(UPSTREAM_TTFB, "pool" => pool.to_owned(), "server" => server.to_owned()),
                stats: Arc::clone(stats),
            },
            stats: Arc::clone(stats),
        }
    }

    /// Counts one answered request.
    pub fn answered(&self, status: u16) {
        self.requests[class_index(status)].increment(1);
        self.stats.traffic.answered(status);
    }
}

/// A server's upstream response time: the Prometheus histogram and the console's buckets.
#[derive(Debug, Clone)]
pub struct ResponseTime {
    histogram: Histogram,
    stats: Arc<UpstreamStats>,
}

impl ResponseTime {
    /// Records one response time, in seconds.
    pub fn record(&self, secs: f64) {
        self.histogram.record(secs);
        self.stats.traffic.responded(secs);
    }
}

/// One pool's hot-path metric handles.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// Request duration.
    pub duration: Histogram,
    /// Request body bytes.
    pub received: Counter,
    /// Response body bytes.
    pub sent: Counter,
    /// Retries.
    pub retries: Counter,
    /// Retries refused by the budget.
    pub retries_refused: Counter,
    /// Answers that reached no server of this pool.
    pub unserved: Arc<Unserved>,
}

impl PoolMetrics {
    /// Registers (or finds) the handles of `pool`.
    pub fn new(pool: &str) -> Self {
        Self {
            duration: histogram!(REQUEST_DURATION, "pool" => pool.to_owned()),
            received: counter!(RECEIVED_BYTES, "pool" => pool.to_owned()),
            sent: counter!(SENT_BYTES, "pool" => pool.to_owned()),
            retries: counter!(RETRIES, "pool" => pool.to_owned()),
            retries_refused: counter!(RETRIES_REFUSED, "pool" => pool.to_owned()),
            unserved: Arc::default(),
        }
    }
}

/// The counters of answers that reached no server (no route, no ready server, refused request) for
/// one pool, or for requests no pool took (`pool="none"`). Each is registered at its first use, so
/// no empty series appear, and then reused: a flood of refused requests allocates no label strings.
#[derive(Debug, Default)]
pub struct Unserved {
    by_class: [std::sync::OnceLock<Counter>; 5],
}

impl Unserved {
    /// Counts one answer with `status` under `pool` (`"none"` outside any pool).
    pub fn answered(&self, pool: &str, status: u16) {
        let (i, class) = (class_index(status), CLASSES[class_index(status)]);
        self.by_class[i]
            .get_or_init(
                || counter!(REQUESTS, "pool" => pool.to_owned(), "server" => "none", "class" => class),
            )
            .increment(1);
    }
}

/// Counts a failed attempt to reach a server.
pub fn upstream_error(pool: &str, server: &str, kind: &'static str) {
    counter!(UPSTREAM_ERRORS, "pool" => pool.to_owned(), "server" => server.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts a health state change.
pub fn health_change(pool: &str, server: &str, to: &'static str, cause: &'static str) {
    counter!(HEALTH_CHANGES, "pool" => pool.to_owned(), "server" => server.to_owned(), "to" => to, "cause" => cause)
        .increment(1);
}

/// The pass and fail counters of one server's health checks.
pub fn check_counters(pool: &str, server: &str) -> (Counter, Counter) {
    let c = |result: &'static str| counter!(HEALTH_CHECKS, "pool" => pool.to_owned(), "server" => server.to_owned(), "result" => result);
    (c("pass"), c("fail"))
}

/// Counts a queued request refused with 503.
pub fn queue_rejected(pool: &str, reason: &'static str) {
    counter!(QUEUE_REJECTED, "pool" => pool.to_owned(), "reason" => reason).increment(1);
}

/// Sets the request-buffer gauge, just before a scrape.
pub fn request_buffers(held: usize) {
    gauge!(REQUEST_BUFFER_BYTES).set(held as f64);
}

/// Sets the gauges that mirror live state, just before a scrape.
pub fn refresh(
    snapshot: &crate::runtime::Snapshot,
    overrides: &std::collections::HashMap<crate::upstream::UpstreamKey, crate::control::Override>,
) {
    gauge!(CONFIG_GENERATION).set(snapshot.generation as f64);
    gauge!(CONFIG_HASH).set(snapshot.config.digest.short() as f64);
    for l in &snapshot.config.listeners {
        for cert in l.tls.iter().flat_map(|t| &t.certificates) {
            gauge!(CERT_EXPIRY, "listener" => l.addr.to_string(), "cert" => cert.cert_path.clone())
                .set(cert.not_after as f64);
        }
    }
    counter!(ACCESS_LOG_DROPPED).absolute(crate::proxy::access_writer::dropped());
    for pool in snapshot.pools.iter() {
        gauge!(QUEUED, "pool" => pool.name.to_string())
            .set(pool.stats.queued.load(std::sync::atomic::Ordering::Relaxed) as f64);
        for u in pool.upstreams.iter() {
            let (p, s) = (u.key.pool.to_string(), u.key.name.to_string());
            gauge!(UPSTREAM_IN_FLIGHT, "pool" => p.clone(), "server" => s.clone())
                .set(u.stats.in_flight() as f64);
            let healthy = if u.stats.health.is_up() { 1.0 } else { 0.0 };
            gauge!(UPSTREAM_HEALTHY, "pool" => p.clone(), "server" => s.clone()).set(healthy);
            gauge!(UPSTREAM_ADMIN_STATE, "pool" => p.clone(), "server" => s.clone())
                .set(f64::from(u.stats.admin.get().code()));
            gauge!(UPSTREAM_WEIGHT, "pool" => p.clone(), "server" => s.clone()).set(f64::from(u.weight));
            let overridden = if overrides.contains_key(&u.key) { 1.0 } else { 0.0 };
            gauge!(UPSTREAM_OVERRIDDEN, "pool" => p.clone(), "server" => s.clone()).set(overridden);
            gauge!(UPSTREAM_READY, "pool" => p, "server" => s).set(if u.is_ready() { 1.0 } else { 0.0 });
        }
    }
}

/// The rendered exposition without the series of servers, pools and upstream addresses that the
/// current snapshot no longer has, so a reload that removes a server removes its series at the next
/// scrape (the exporter can forget a series only when it goes idle, which would also reset live
/// counters that are rarely updated). Lines are dropped whole, never written: the exporter's
/// formatting stays the only one; a metric family left without samples loses its `# HELP`/`# TYPE`
/// lines too. The exporter keeps the removed series' values, so a server added back under the same
/// name continues its counters.
pub fn live_only(text: &str, snapshot: &crate::runtime::Snapshot) -> String {
    use std::collections::HashSet;
    let pools: HashSet<String> = snapshot.pools.iter().map(|p| escape(&p.name)).collect();
    let servers: HashSet<(String, String)> = snapshot
        .pools
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .map(|u| (escape(&u.key.pool), escape(&u.key.name)))
        .collect();
    let addrs: HashSet<String> =
        snapshot.pools.iter().flat_map(|p| p.upstreams.iter()).map(|u| escape(&u.addr)).collect();
    let caches: HashSet<String> = snapshot.caches.iter().map(|c| escape(&c.settings.name)).collect();
    let live = |line: &str| {
        if label(line, "cache").is_some_and(|c| !caches.contains(c)) {
            return false;
        }
        let pool = label(line, "pool");
        let server = label(line, "server");
        if let Some(pool) = pool.filter(|p| *p != "none") {
            if !pools.contains(pool) {
                return false;
            }
            if let Some(server) = server.filter(|s| *s != "none") {
                return servers.contains(&(pool.to_owned(), server.to_owned()));
            }
        }
        label(line, "addr").is_none_or(|addr| addrs.contains(addr))
    };
    let mut out = String::with_capacity(text.len());
    // One family at a time: its comment lines, then its samples; a family is kept only with samples.
    let (mut family, mut comments, mut samples) = ("", String::new(), String::new());
    let flush = |comments: &mut String, samples: &mut String, out: &mut String| {
        if !samples.is_empty() {
            out.push_str(comments);
            out.push_str(samples);
        }
        comments.clear();
        samples.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            // `# HELP name ...` and `# TYPE name ...` introduce the family `name`.
            let name = line.split_whitespace().nth(2).unwrap_or("");
            if name != family {
                flush(&mut comments, &mut samples, &mut out);
                family = name;
            }
            comments.push_str(line);
            comments.push('\n');
        } else if !line.is_empty() && live(line) {
            samples.push_str(line);
            samples.push('\n');
        }
    }
    flush(&mut comments, &mut samples, &mut out);
    out
}

/// A label value as the exporter writes it (backslash, quote and newline escaped).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The (escaped) value of label `name` in one sample line, if it has that label.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find("=\"")?;
        let key = rest[..eq].trim_start_matches(',');
        let value_start = eq + 2;
        // The closing quote is the first one not escaped by a backslash.
        let bytes = rest.as_bytes();
        let mut i = value_start;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let value = rest.get(value_start..i)?;
        if key == name {
            return Some(value);
        }
        rest = rest.get(i + 1..)?;
    }
    None
}

#[cfg(test)]
mod live_tests {
    #[test]
    fn families_without_samples_lose_their_comments() {
        let text =
            "# HELP a A.\n# TYPE a counter\na{pool=\"gone\"} 1\n\n# HELP b B.\n# TYPE b counter\nb 2\n";
        let config = crate::config::Config::from_toml(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
        )
        .unwrap();
        let runtime = crate::runtime::Runtime::new(config);
        let kept = super::live_only(text, &runtime.snapshot());
        assert_eq!(kept, "# HELP b B.\n# TYPE b counter\nb 2\n");
    }

    #[test]
    fn labels_are_read_with_their_escapes() {
        let line = r#"lb_requests_total{class="2xx",pool="we\"b",server="a,b=\"c\""} 3"#;
        assert_eq!(super::label(line, "pool"), Some(r#"we\"b"#));
        assert_eq!(super::label(line, "server"), Some(r#"a,b=\"c\""#));
        assert_eq!(super::label(line, "class"), Some("2xx"));
        assert_eq!(super::label(line, "addr"), None);
        assert_eq!(super::label("lb_config_generation 2", "pool"), None);
    }
}
