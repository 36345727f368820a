//! Response caching (`[caches.NAME]`, named by routes with `cache = "NAME"`): what may be stored and
//! reused follows RFC 9111 for a shared cache (the `http-cache-semantics` crate judges storability,
//! freshness, `Vary` and revalidation), plus what it lacks: `stale-while-revalidate` and
//! `stale-if-error` (RFC 5861), a default lifetime for responses the origin says nothing about,
//! and lb's own rules for cookies.
//!
//! Objects live in memory, bounded by bytes (headers and body counted) with TinyLFU admission and
//! eviction (`moka`). A store is kept across reloads by its name while its settings stay the same.
//! The request path that uses it is `proxy::cache`; the body recorder that fills it is [`fill`].

pub mod fill;
pub mod shared;
pub mod status;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// One `[caches.NAME]` section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// The section's name: routes name it, metrics and the admin purge use it.
    pub name: Arc<str>,
    /// Bytes the cache may hold, headers and bodies counted.
    pub max_size: u64,
    /// Largest object stored; a larger response is passed through and not stored.
    pub max_object_size: u64,
    /// Lifetime of a storable response that states none (no `max-age`, `s-maxage` or `Expires`);
    /// `None` (the default): only what RFC 9111 allows (heuristics on `Last-Modified`).
    pub default_ttl: Option<Duration>,
    /// `HEAD` is answered from stored `GET` responses (`methods` names it).
    pub head: bool,
    /// Store responses that carry `Set-Cookie` (the cookie itself is never stored).
    pub allow_set_cookie: bool,
    /// How long a request waits for another one fetching the same object (request coalescing)
    /// before it goes upstream itself.
    pub lock_timeout: Duration,
    /// Objects are shared with other instances through `[redis]` ([`shared`]).
    pub redis: bool,
}

/// At most this many variants (`Vary`) per URL: a response that varies on a field every client
/// sends differently must not fill the cache with copies of one URL.
const MAX_VARIANTS: usize = 8;

/// Bytes counted per object beyond its body and header bytes (the policy, the key, bookkeeping).
const OBJECT_OVERHEAD: u64 = 512;

/// The longest lifetime or stale window taken from a response (ten years): larger values, up to
/// 2^64 seconds, would overflow the clock.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The largest `Age` taken from a response; a larger one is replaced by it (the crate adds to it).
const MAX_AGE_FIELD: u64 = 10 * 365 * 86_400;

/// A stored response.
#[derive(Debug)]
pub struct Object {
    /// RFC 9111's judgement of the stored request and response.
    pub policy: CachePolicy,
    /// The response's status.
    pub status: StatusCode,
    /// Its fields as stored (without hop-by-hop fields and `Set-Cookie`).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Until when it may be served without asking the origin.
    pub fresh_until: SystemTime,
    /// Its lifetime is the cache's `default_ttl` (the origin stated none).
    pub from_default: bool,
    /// `stale-while-revalidate`: how long after `fresh_until` it may be served while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error`: how long after `fresh_until` it may be served when the origin fails.
    pub stale_if_error: Duration,
    /// `must-revalidate` / `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
    /// Bytes counted against the cache's size.
    pub weight: u64,
}

impl Object {
    /// Builds the stored object for `request` and the response head `(status, headers)` (already
    /// stripped of hop-by-hop fields and `Set-Cookie`), with `body`.
    pub fn new(
        policy: CachePolicy,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        now: SystemTime,
        default_ttl: Option<Duration>,
    ) -> Self {
        let directives = status::Directives::of(&headers);
        let from_default = default_ttl.is_some() && !directives.explicit_expiry && !directives.no_cache;
        let ttl = match default_ttl {
            // `no-cache`: every reuse needs the origin's word, whatever the default.
            _ if directives.no_cache => Duration::ZERO,
            Some(ttl) if from_default => ttl,
            _ => policy.time_to_live(now),
        };
        let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        let weight = OBJECT_OVERHEAD + 2 * header_bytes as u64 + body.len() as u64;
        Self {
            policy,
            status,
            headers,
            body,
            // An absurd lifetime (`max-age` near 2^64) must not overflow the clock.
            fresh_until: now.checked_add(ttl.min(MAX_LIFETIME)).unwrap_or(now),
            from_default,
            stale_while_revalidate: directives.stale_while_revalidate.min(MAX_LIFETIME),
            stale_if_error: directives.stale_if_error.min(MAX_LIFETIME),
            // A shared cache treats `s-maxage` as `proxy-revalidate` (RFC 9111 section 5.2.2.10),
            // and `no-cache` forbids reuse without the origin.
            must_revalidate: directives.must_revalidate || directives.s_maxage || directives.no_cache,
            weight,
        }
    }

    /// Counts `bytes` more against the cache's size (the request fields its policy keeps).
    pub fn counting(mut self, bytes: usize) -> Self {
        self.weight += bytes as u64;
        self
    }

    /// `If-None-Match` / `If-Modified-Since` from its validators.
    pub fn validators(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        if let Some(etag) = self.headers.get(http::header::ETAG) {
            out.insert(http::header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(http::header::LAST_MODIFIED) {
            out.insert(http::header::IF_MODIFIED_SINCE, modified.clone());
        }
        out
    }

    /// How long it has been stale at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.fresh_until).unwrap_or_default()
    }

    /// Whether it is fresh at `now`.
    pub fn fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until
    }

    /// Whether it may be served stale while a refresh runs, at `now`.
    pub fn within_swr(&self, now: SystemTime) -> bool {
        !self.must_revalidate && !self.fresh(now) && self.staleness(now) < self.stale_while_revalidate
    }

    /// Whether it may be served stale because the origin failed, at `now`.
    pub fn within_sie(&self, now: SystemTime) -> bool {
        !self.must_revalidate && self.staleness(now) < self.stale_if_error
    }

    /// The head to answer with at `now`: the stored one with its `Age`.
    pub fn head(&self, now: SystemTime) -> (StatusCode, HeaderMap) {
        let mut headers = self.headers.clone();
        let age = self.policy.age(now).as_secs();
        if let Ok(v) = http::HeaderValue::from_str(&age.to_string()) {
            headers.insert(http::header::AGE, v);
        }
        (self.status, headers)
    }

    /// Whether it has a validator to revalidate with.
    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }
}

/// The variants stored for one URL.
#[derive(Debug, Default)]
struct Entry {
    variants: Vec<Arc<Object>>,
}

impl Entry {
    fn weight(&self) -> u32 {
        let total: u64 = self.variants.iter().map(|o| o.weight).sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// What a lookup found for a request.
#[derive(Debug)]
pub enum Found {
    /// A fresh object: serve it.
    Fresh(Arc<Object>),
    /// A stored object for this request that may not be served without the origin (or only under
    /// `stale-while-revalidate` / `stale-if-error`); `validators` are the conditional fields
    /// (`If-None-Match`, `If-Modified-Since`) to revalidate it with.
    Stale {
        /// The stored object.
        object: Arc<Object>,
        /// `If-None-Match` / `If-Modified-Since` for the origin.
        validators: HeaderMap,
    },
    /// Nothing stored for it.
    Miss,
}

/// Metric handles of one cache.
#[derive(Debug)]
pub struct CacheMetrics {
    /// Served fresh from the cache.
    pub hit: metrics::Counter,
    /// Nothing usable stored: forwarded (revalidations included).
    pub miss: metrics::Counter,
    /// Served stale (`stale-while-revalidate`, `stale-if-error`).
    pub stale: metrics::Counter,
    /// Revalidated by a 304.
    pub revalidated: metrics::Counter,
    /// Not looked up (method, `no-store`).
    pub bypass: metrics::Counter,
    /// Served after waiting for another request's fetch.
    pub collapsed: metrics::Counter,
    /// Served from the shared tier (another instance stored it).
    pub shared: metrics::Counter,
    /// Objects stored.
    pub stored: metrics::Counter,
    /// Objects evicted for room.
    pub evictions: metrics::Counter,
    /// Bytes stored.
    pub bytes: metrics::Gauge,
}

impl CacheMetrics {
    fn new(name: &Arc<str>) -> Self {
        let result = |r: &'static str| metrics::counter!(crate::metrics::CACHE_REQUESTS, "cache" => name.to_string(), "result" => r);
        Self {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            revalidated: result("revalidated"),
            bypass: result("bypass"),
            collapsed: result("collapsed"),
            shared: result("shared"),
            stored: metrics::counter!(crate::metrics::CACHE_STORED, "cache" => name.to_string()),
            evictions: metrics::counter!(crate::metrics::CACHE_EVICTIONS, "cache" => name.to_string()),
            bytes: metrics::gauge!(crate::metrics::CACHE_BYTES, "cache" => name.to_string()),
        }
    }
}

/// One named cache: its objects, the fetches in progress, its clock and metrics.
pub struct Store {
    /// Its `[caches.NAME]` section.
    pub settings: CacheSettings,
    objects: moka::sync::Cache<String, Arc<Entry>>,
    /// Keys being fetched from the origin now, each with the signal its waiters watch.
    fetching: Mutex<HashMap<String, watch::Receiver<()>>>,
    clock: Clock,
    /// The tier shared through Redis, when `redis = true`.
    pub shared: Option<Arc<shared::Shared>>,
    /// Its metric handles.
    pub metrics: Arc<CacheMetrics>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Wall-clock time as the cache sees it: the wall clock when the store was made, advanced by tokio's
/// clock (so a test on tokio's paused clock moves the cache's time too).
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall: SystemTime,
    mono: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self { wall: SystemTime::now(), mono: tokio::time::Instant::now() }
    }

    fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}

/// The options RFC 9111 is applied with: a shared cache; no heuristic lifetime beyond the RFC's.
fn options() -> CacheOptions {
    CacheOptions { shared: true, ..CacheOptions::default() }
}

impl Store {
    /// An empty cache with `settings`, sharing its objects through `redis` when it is given.
    pub fn new(settings: CacheSettings, redis: Option<Arc<crate::ratelimit::redis::RedisStore>>) -> Self {
        let shared = redis.map(|r| Arc::new(shared::Shared::new(r, &settings.name)));
        let metrics = Arc::new(CacheMetrics::new(&settings.name));
        let evicted = Arc::clone(&metrics);
        let objects = moka::sync::Cache::builder()
            .max_capacity(settings.max_size)
            .weigher(|_key: &String, entry: &Arc<Entry>| entry.weight())
            .support_invalidation_closures()
            .eviction_listener(move |_key, _entry: Arc<Entry>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.evictions.increment(1);
                }
            })
            .build();
        Self { settings, objects, fetching: Mutex::new(HashMap::new()), clock: Clock::new(), shared, metrics }
    }

    /// The cache's time now.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// What is stored for `key` that suits `request` (the client's head, see [`policy_request`]).
    pub fn lookup(&self, key: &str, request: &http::request::Parts) -> Found {
        let Some(entry) = self.objects.get(key) else { return Found::Miss };
        let now = self.now();
        for object in &entry.variants {
            let stale = || Found::Stale { object: Arc::clone(object), validators: object.validators() };
            match object.policy.before_request(request, now) {
                // Fresh, or stale and the client's `max-stale` accepts it (never when the object
                // must be revalidated: `must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`).
                BeforeRequest::Fresh(_) if object.fresh(now) || !object.must_revalidate => {
                    return Found::Fresh(Arc::clone(object));
                }
                BeforeRequest::Fresh(_) => return stale(),
                BeforeRequest::Stale { matches: true, .. } => {
                    // `default_ttl` makes fresh what RFC 9111 alone calls stale, unless the client
                    // asks for a newer answer (`no-cache`, `max-age`, `min-fresh`).
                    if object.from_default
                        && object.fresh(now)
                        && !status::RequestDirectives::of(&request.headers).wants_newer
                    {
                        return Found::Fresh(Arc::clone(object));
                    }
                    return stale();
                }
                BeforeRequest::Stale { matches: false, .. } => {}
            }
        }
        Found::Miss
    }

    /// Stores `object` for `key`, replacing a variant the same requests would select; `share`:
    /// also in the shared tier (not for what came from it).
    pub fn insert(&self, key: &str, request: &http::request::Parts, object: Object, share: bool) {
        if object.body.len() as u64 > self.settings.max_object_size {
            return;
        }
        if let Some(shared) = self.shared.as_ref().filter(|_| share) {
            shared.put(key, &object, self.now());
        }
        let object = Arc::new(object);
        let mut variants = vec![Arc::clone(&object)];
        if let Some(old) = self.objects.get(key) {
            let now = self.now();
            variants.extend(
                old.variants
                    .iter()
                    .filter(|o| {
                        !matches!(
                            o.policy.before_request(request, now),
                            BeforeRequest::Fresh(_) | BeforeRequest::Stale { matches: true, .. }
                        )
                    })
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        let entry = Arc::new(Entry { variants });
        self.metrics.stored.increment(1);
        self.objects.insert(key.to_owned(), entry);
    }

    /// Removes every variant stored for `key`, here and in the shared tier.
    pub fn invalidate(&self, key: &str) {
        self.objects.invalidate(key);
        if let Some(shared) = &self.shared {
            shared.delete(key);
        }
    }

    /// Removes every variant stored for `key`, here and in the shared tier, and waits for the shared
    /// tier to confirm (an error when Redis did not answer): for the admin API's purge, whose answer
    /// must mean the object is gone everywhere. The request path uses [`Self::invalidate`].
    pub async fn purge_url(&self, key: &str) -> Result<(), crate::ratelimit::redis::Failure> {
        self.objects.invalidate(key);
        match &self.shared {
            Some(shared) => shared.delete_now(key).await,
            None => Ok(()),
        }
    }

    /// Removes every object whose key starts with `prefix`, here and in the shared tier (an error
    /// when Redis did not answer).
    pub async fn purge_prefix(&self, prefix: &str) -> Result<(), crate::ratelimit::redis::Failure> {
        let owned = prefix.to_owned();
        // Only fails when closures are not enabled, which `new` does.
        let _ = self.objects.invalidate_entries_if(move |key, _| key.starts_with(&owned));
        self.objects.run_pending_tasks();
        match &self.shared {
            Some(shared) => shared.purge_prefix(prefix).await.map(drop),
            None => Ok(()),
        }
    }

    /// URLs and bytes stored now (pending evictions done first); sets the byte gauge.
    pub fn usage(&self) -> (u64, u64) {
        self.objects.run_pending_tasks();
        let (urls, bytes) = (self.objects.entry_count(), self.objects.weighted_size());
        self.metrics.bytes.set(bytes as f64);
        (urls, bytes)
    }

    /// Becomes the one request fetching `key`, or returns the signal of the one that is.
    pub fn fetch(self: &Arc<Self>, key: &str) -> Result<Fetching, watch::Receiver<()>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = fetching.get(key) {
            if rx.has_changed().is_ok() {
                return Err(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(());
        fetching.insert(key.to_owned(), rx);
        Ok(Fetching { store: Arc::clone(self), key: key.to_owned(), _done: tx })
    }

    /// Whether someone is fetching `key` now.
    pub fn is_fetching(&self, key: &str) -> bool {
        let fetching = self.fetching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fetching.get(key).is_some_and(|rx| rx.has_changed().is_ok())
    }

    /// RFC 9111's judgement of a response `(status, headers)` to `request`, received now, as it is
    /// kept with an object: the request reduced to what reuse needs (see [`kept_request`]).
    pub fn policy_for(
        &self,
        request: &http::request::Parts,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> CachePolicy {
        judge(&kept_request(request, headers), status, headers, self.now())
    }

    /// The policy for a response to `request`: `None` when RFC 9111 or lb's rules forbid storing
    /// it. `headers` are the response's fields as they will be stored (a too large `Age` is
    /// clamped here).
    pub fn storable(
        &self,
        request: &http::request::Parts,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Option<CachePolicy> {
        if request.method != Method::GET || status == StatusCode::PARTIAL_CONTENT {
            return None;
        }
        if headers.contains_key(http::header::SET_COOKIE) && !self.settings.allow_set_cookie {
            return None;
        }
        if headers.get_all(http::header::VARY).iter().any(|v| v.to_str().is_ok_and(|v| v.contains('*'))) {
            return None;
        }
        if let Some(len) = content_length(headers) {
            if len > self.settings.max_object_size {
                return None;
            }
        }
        if let Some(age) = headers.get(http::header::AGE) {
            let sane =
                age.to_str().ok().and_then(|a| a.trim().parse::<u64>().ok()).map(|a| a.min(MAX_AGE_FIELD));
            match sane {
                Some(a) => {
                    headers.insert(http::header::AGE, a.into());
                }
                None => {
                    headers.remove(http::header::AGE);
                }
            }
        }
        let now = self.now();
        // Judged without the cookie, as it is stored (the crate would never let it stay fresh),
        // and against the whole request (`Authorization` decides whether it may be stored).
        headers.remove(http::header::SET_COOKIE);
        if !judge(request, status, headers, now).is_storable() {
            return None;
        }
        let policy = self.policy_for(request, status, headers);
        // Stored only if it can be reused: fresh for a while, or revalidated cheaply.
        let directives = status::Directives::of(headers);
        let useful = !policy.time_to_live(now).is_zero()
            || self.settings.default_ttl.is_some()
            || !directives.stale_while_revalidate.is_zero()
            || !directives.stale_if_error.is_zero()
            || headers.contains_key(http::header::ETAG)
            || headers.contains_key(http::header::LAST_MODIFIED);
        useful.then_some(policy)
    }
}

fn judge(
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> CachePolicy {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    CachePolicy::new_options(request, &response, now, options())
}

/// The request as an object keeps it: method, target, `Host` and the fields the response's `Vary`
/// names. The client's other fields (its cookies and credentials among them) are not kept, in
/// memory or in Redis.
pub fn kept_request(request: &http::request::Parts, response: &HeaderMap) -> http::request::Parts {
    let mut kept = http::Request::new(()).into_parts().0;
    kept.method = request.method.clone();
    kept.uri = request.uri.clone();
    if let Some(host) = request.headers.get(http::header::HOST) {
        kept.headers.insert(http::header::HOST, host.clone());
    }
    for vary in response.get_all(http::header::VARY) {
        let Ok(vary) = vary.to_str() else { continue };
        for name in vary.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Ok(name) = http::HeaderName::try_from(name) else { continue };
            for value in request.headers.get_all(&name) {
                kept.headers.append(name.clone(), value.clone());
            }
        }
    }
    kept
}

/// Bytes of the request fields an object's policy keeps (counted in its weight).
pub fn kept_bytes(request: &http::request::Parts, response: &HeaderMap) -> usize {
    kept_request(request, response).headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

/// While held, the request holding it is the one fetching its key; dropping it (stored or not)
/// wakes the requests waiting for it.
pub struct Fetching {
    store: Arc<Store>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        let mut fetching = self.store.fetching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fetching.remove(&self.key);
    }
}

/// The request as the cache judges it: method, origin-form target and the client's fields with
/// `Host` set to the request's host (HTTP/2 carries it in `:authority`).
pub fn policy_request(
    parts: &http::request::Parts,
    host: Option<&http::HeaderValue>,
) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = http::Uri::try_from(target).unwrap_or_else(|_| http::Uri::from_static("/"));
    // One value per field: `Vary` is matched on a field's first value only (by the crate), and
    // HTTP/2 clients split `Cookie` into crumbs, so a field sent several times is joined first.
    let headers = req.headers_mut();
    for name in parts.headers.keys() {
        let mut values = parts.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let rest: Vec<_> = values.collect();
        if rest.is_empty() {
            headers.insert(name.clone(), first.clone());
            continue;
        }
        let separator: &[u8] = if name == http::header::COOKIE { b"; " } else { b", " };
        let mut joined = first.as_bytes().to_vec();
        for v in rest {
            joined.extend_from_slice(separator);
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
            headers.insert(name.clone(), v);
        }
    }
    if let Some(host) = host {
        headers.insert(http::header::HOST, host.clone());
    }
    req.into_parts().0
}

/// The cache key of an absolute URL (`http://host[:port]/path?query`), as [`key`] makes it for the
/// request of that URL; `None` if it is not one.
pub fn key_of_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let tls = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let mut parts = http::Request::new(()).into_parts().0;
    parts.uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse().ok()?;
    Some(key(tls, Some(uri.host()?), &parts))
}

/// The cache key of a request: scheme, host and target.
pub fn key(tls: bool, host: Option<&str>, parts: &http::request::Parts) -> String {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}{target}", host.unwrap_or("").to_ascii_lowercase())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests;
