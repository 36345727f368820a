//! Rate limiting at the balancer: named rules, each matching some requests (routes that name it,
//! host, path prefix, methods), counting them by a key (client address, header, cookie, query
//! parameter, path, or the route as a whole) in GCRA buckets that live in the process
//! ([`gcra::LocalBuckets`]) or in Redis for a whole fleet ([`redis::RedisStore`]). Over the limit, a
//! request is answered 429 with `Retry-After` and `RateLimit` fields and never reaches a server.
//! docs/rate-limiting.md is the operator's view.

pub mod gcra;
pub mod redis;

use crate::config::{HashKey, HostMatch};
use gcra::{LocalBuckets, Quota, Verdict};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use metrics::{Counter, Histogram};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What a rule counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// A request key, as consistent hashing reads it (`client_ip`, `header:NAME`, `cookie:NAME`,
    /// `query:NAME`, `path`).
    Request(HashKey),
    /// `route`: every request of the route, together.
    Route,
}

/// Which rate-limit fields answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (IETF httpapi draft).
    Draft,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    Legacy,
    /// Both.
    Both,
    /// None (a 429 still says `Retry-After`).
    None,
}

/// What a Redis rule does when Redis gives no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Let the request through.
    Allow,
    /// Answer 429.
    Deny,
    /// Decide with this instance's own buckets for the rule.
    Local,
}

/// Where a rule's buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In this process.
    Local,
    /// In Redis (`[redis]`), shared by every instance.
    Redis(OnRedisError),
}

/// One `[[rate_limits]]` rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRule {
    /// Its name: in metrics, logs, Redis keys and the `RateLimit` fields; buckets survive reloads by it.
    pub name: Arc<str>,
    /// `count` requests per `period`, as configured.
    pub count: u32,
    /// The rate's period.
    pub period: Duration,
    /// The GCRA quota: the rate and the burst.
    pub quota: Quota,
    /// What it counts by.
    pub key: LimitKey,
    /// Where its buckets live.
    pub store: Store,
    /// Only requests for this host (`None`: any).
    pub host: Option<HostMatch>,
    /// Only requests under this path prefix.
    pub path_prefix: Option<String>,
    /// Only these methods (empty: any).
    pub methods: Vec<Method>,
    /// Which fields answers carry.
    pub headers: HeaderStyle,
    /// Most keys held in the process (local buckets, and the `local` fallback).
    pub max_keys: usize,
    /// IPv6 client addresses count by this prefix (default 64: one site).
    pub ipv6_prefix: u8,
    /// Some route names it in `rate_limits`: it applies on those routes only.
    pub by_route: bool,
}

impl fmt::Display for RateLimitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            LimitKey::Route => "route".to_owned(),
            LimitKey::Request(HashKey::ClientIp) => "client_ip".to_owned(),
            LimitKey::Request(HashKey::Path) => "path".to_owned(),
            LimitKey::Request(HashKey::Header(h)) => format!("header:{h}"),
            LimitKey::Request(HashKey::Cookie(c)) => format!("cookie:{c}"),
            LimitKey::Request(HashKey::Query(q)) => format!("query:{q}"),
        };
        let store = match self.store {
            Store::Local => "local".to_owned(),
            Store::Redis(e) => format!("redis, on error {}", format!("{e:?}").to_lowercase()),
        };
        write!(
            f,
            "{}: {}/{:?} burst {} by {key} ({store})",
            self.name, self.count, self.period, self.quota.burst
        )?;
        if let Some(h) = &self.host {
            match h {
                HostMatch::Exact(h) => write!(f, " host {h}")?,
                HostMatch::Suffix(s) => write!(f, " host *{s}")?,
            }
        }
        if let Some(p) = &self.path_prefix {
            write!(f, " path {p}")?;
        }
        if !self.methods.is_empty() {
            let m: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            write!(f, " methods {}", m.join(","))?;
        }
        if self.by_route {
            f.write_str(" on its routes")?;
        }
        Ok(())
    }
}

/// One rule as a snapshot runs it: its config, its buckets (kept across reloads by name) and its
/// metric handles.
#[derive(Debug)]
pub struct ActiveRule {
    /// The rule.
    pub rule: RateLimitRule,
    /// Its in-process buckets (for `local` rules, and the fallback of `redis` ones).
    pub local: Arc<LocalBuckets>,
    redis: Option<Arc<redis::RedisStore>>,
    allowed: Counter,
    limited: Counter,
    latency: Histogram,
    /// `(timeout, error, breaker)` counters.
    redis_errors: [Counter; 3],
}

/// A snapshot's rules.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Every rule, in config order.
    pub rules: Box<[ActiveRule]>,
    /// Rules that apply whatever the route (those no route names).
    global: Box<[usize]>,
}

/// What the request path needs to know about one request: what it matched and how to count it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's address (after the PROXY protocol and trusted forwarded headers).
    pub client: SocketAddr,
    /// The request head.
    pub parts: &'a http::request::Parts,
    /// Its host, without port.
    pub host: Option<&'a str>,
    /// Its route.
    pub route: &'a crate::config::RouteConfig,
}

/// The fields for an answer: one rule's state after this request.
#[derive(Debug, Clone)]
pub struct LimitHeaders {
    style: HeaderStyle,
    name: Arc<str>,
    count: u32,
    window: u64,
    remaining: u32,
    /// Seconds until the bucket is full (allowed) or the next request is allowed (limited).
    reset: u64,
}

/// A request over a rule's limit.
#[derive(Debug, Clone)]
pub struct Limited {
    /// The rule.
    pub rule: Arc<str>,
    /// Whole seconds until a request is allowed again (at least 1).
    pub retry_after: u64,
    /// The rule's fields.
    pub headers: LimitHeaders,
}

impl RateLimits {
    /// Builds the rules of a snapshot; `buckets` gives each rule's buckets (kept across reloads)
    /// and `store` the Redis store of `[redis]`.
    pub fn new(
        rules: &[RateLimitRule],
        mut buckets: impl FnMut(&RateLimitRule) -> Arc<LocalBuckets>,
        store: Option<Arc<redis::RedisStore>>,
    ) -> Self {
        let global = rules.iter().enumerate().filter(|(_, r)| !r.by_route).map(|(i, _)| i).collect();
        let rules = rules
            .iter()
            .map(|rule| {
                let label = rule.name.to_string();
                let decision = |result: &'static str| {
                    metrics::counter!(crate::metrics::RATE_LIMIT_DECISIONS, "rule" => label.clone(), "result" => result)
                };
                let error = |reason: &'static str| {
                    metrics::counter!(crate::metrics::RATE_LIMIT_REDIS_ERRORS, "rule" => label.clone(), "reason" => reason)
                };
                let store_label = if matches!(rule.store, Store::Redis(_)) { "redis" } else { "local" };
                ActiveRule {
                    local: buckets(rule),
                    redis: matches!(rule.store, Store::Redis(_)).then(|| store.clone()).flatten(),
                    allowed: decision("allowed"),
                    limited: decision("limited"),
                    latency: metrics::histogram!(
                        crate::metrics::RATE_LIMIT_DECISION_SECONDS,
                        "rule" => label.clone(),
                        "store" => store_label
                    ),
                    redis_errors: [error("timeout"), error("error"), error("breaker")],
                    rule: rule.clone(),
                }
            })
            .collect();
        Self { rules, global }
    }

    /// No rules at all: the request path skips rate limiting.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Counts `req` in every rule that applies: the global ones, then `route_rules` (indices of the
    /// rules its route names). The first rule over its limit refuses it; else the fields of the
    /// rule with the fewest requests left go on the answer.
    pub async fn check(
        &self,
        req: Request<'_>,
        route_rules: &[usize],
    ) -> Result<Option<LimitHeaders>, Limited> {
        let mut tightest: Option<LimitHeaders> = None;
        for &i in self.global.iter().chain(route_rules) {
            let Some(active) = self.rules.get(i) else { continue };
            if !active.matches(&req) {
                continue;
            }
            let Some(hash) = active.key_hash(&req) else { continue };
            let start = std::time::Instant::now();
            let verdict = active.decide(hash).await;
            active.latency.record(start.elapsed().as_secs_f64());
            match verdict {
                Some(Verdict::Deny { retry_after }) => {
                    active.limited.increment(1);
                    let headers = active.headers(0, retry_after);
                    return Err(Limited {
                        rule: Arc::clone(&active.rule.name),
                        retry_after: headers.reset.max(1),
                        headers,
                    });
                }
                Some(Verdict::Allow { remaining, reset }) => {
                    active.allowed.increment(1);
                    if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(active.headers(remaining, reset));
                    }
                }
                // Redis failed and the rule allows: no fields, since nothing was counted.
                None => active.allowed.increment(1),
            }
        }
        Ok(tightest.filter(|h| h.style != HeaderStyle::None))
    }
}

impl ActiveRule {
    fn matches(&self, req: &Request<'_>) -> bool {
        let r = &self.rule;
        if !r.methods.is_empty() && !r.methods.contains(&req.parts.method) {
            return false;
        }
        // As a route matches.
        use crate::router::{host_matches, prefix_matches, strip_port};
        prefix_matches(r.path_prefix.as_deref(), req.parts.uri.path())
            && host_matches(r.host.as_ref(), req.host.map(strip_port))
    }

    fn key_hash(&self, req: &Request<'_>) -> Option<u64> {
        match &self.rule.key {
            // By what the route matches, not its place in the file: a reload that reorders routes,
            // or another instance with other routes, keeps each route's bucket.
            LimitKey::Route => {
                let host = match &req.route.host {
                    None => "",
                    Some(HostMatch::Exact(h)) => h.as_str(),
                    Some(HostMatch::Suffix(s)) => s.as_str(),
                };
                let wildcard = u64::from(matches!(req.route.host, Some(HostMatch::Suffix(_))));
                let prefix = req.route.path_prefix.as_deref().unwrap_or("");
                let hash = crate::balance::hash_key::hash_key_bytes;
                Some(hash(host.as_bytes()).rotate_left(1) ^ hash(prefix.as_bytes()) ^ wildcard)
            }
            LimitKey::Request(HashKey::ClientIp) => {
                let ip = group(req.client.ip(), self.rule.ipv6_prefix);
                Some(crate::balance::hash_key::client_ip(SocketAddr::new(ip, 0)))
            }
            LimitKey::Request(key) => crate::balance::hash_key::extract(key, req.client, req.parts),
        }
    }

    /// The verdict for the bucket `hash`, or `None` when Redis failed and the rule lets the request
    /// through uncounted.
    async fn decide(&self, hash: u64) -> Option<Verdict> {
        let (Store::Redis(on_error), Some(store)) = (self.rule.store, &self.redis) else {
            return Some(self.local.take(hash));
        };
        let key = format!("lb:rl:{}:{hash:016x}", self.rule.name);
        match store.take(&key, hash, self.rule.quota).await {
            Ok(v) => Some(v),
            Err(failure) => {
                let i = match failure {
                    redis::Failure::Timeout => 0,
                    redis::Failure::Error => 1,
                    redis::Failure::Breaker => 2,
                };
                self.redis_errors[i].increment(1);
                match on_error {
                    OnRedisError::Allow => None,
                    OnRedisError::Deny => Some(Verdict::Deny { retry_after: store.config().breaker }),
                    OnRedisError::Local => Some(self.local.take(hash)),
                }
            }
        }
    }

    fn headers(&self, remaining: u32, reset: Duration) -> LimitHeaders {
        LimitHeaders {
            style: self.rule.headers,
            name: Arc::clone(&self.rule.name),
            count: self.rule.count,
            window: self.rule.period.as_secs().max(1),
            remaining,
            reset: reset.as_secs() + u64::from(reset.subsec_nanos() > 0),
        }
    }
}

/// An IPv6 address cut to its first `prefix` bits (a site gets one bucket, not 2^64); IPv4 as is.
fn group(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if prefix < 128 => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        other => other,
    }
}

impl LimitHeaders {
    /// Adds the fields to an answer's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let number = |n: u64| HeaderValue::from(n);
        if matches!(self.style, HeaderStyle::Draft | HeaderStyle::Both) {
            let policy = format!("\"{}\";q={};w={}", self.name, self.count, self.window);
            let state = format!("\"{}\";r={};t={}", self.name, self.remaining, self.reset);
            if let (Ok(p), Ok(s)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state)) {
                headers.insert(HeaderName::from_static("ratelimit-policy"), p);
                headers.insert(HeaderName::from_static("ratelimit"), s);
            }
        }
        if matches!(self.style, HeaderStyle::Legacy | HeaderStyle::Both) {
            headers.insert(HeaderName::from_static("x-ratelimit-limit"), number(u64::from(self.count)));
            headers
                .insert(HeaderName::from_static("x-ratelimit-remaining"), number(u64::from(self.remaining)));
            headers.insert(HeaderName::from_static("x-ratelimit-reset"), number(self.reset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_site() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(group(a, 64), group(b, 64));
        assert_ne!(group(a, 64), group(other, 64));
        assert_ne!(group(a, 128), group(b, 128));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(group(v4, 64), v4);
        assert_eq!(group("::ffff:192.0.2.1".parse().unwrap(), 64), v4);
    }
}
