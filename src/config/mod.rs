//! `lb.toml`: parse, then validate into types.
//!
//! [`Config::from_toml`] is the single entry point (tests use it without a filesystem). It reads the
//! TOML into a spanned tree, deserializes the raw shape while collecting every unknown key, then
//! validates every value. All problems are reported together, each naming its key path and line.
//! See docs/configuration.md for every key and its default.

mod cache;
mod duration;
mod edge;
mod error_pages;
mod health;
mod locate;
mod rate_limit;
mod raw;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::parse as parse_duration;
pub use error_pages::{ErrorPage, ErrorPages, MAX_PAGE_BYTES};
pub use health::{CheckKind, FailureKinds, HealthCheck, HttpCheck, Passive, PoolLimits, Retry, StatusSet};
#[cfg(test)]
pub(crate) use validate::order_routes;

/// Largest accepted server weight, in the config and as a runtime override (HAProxy allows 256; a
/// little headroom for ratios).
pub const MAX_WEIGHT: u32 = 1000;

/// A validated configuration. Every field holds its final type and default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Addresses to accept client connections on. At least one.
    pub listeners: Vec<ListenerConfig>,
    /// Timeouts; see [`Timeouts`] for each default.
    pub timeouts: Timeouts,
    /// Size and count limits; see [`Limits`] for each default.
    pub limits: Limits,
    /// HTTP protocol options.
    pub http: HttpOptions,
    /// Upstream pools, sorted by name.
    pub pools: Vec<PoolConfig>,
    /// Routes in the order they are tried (most specific first); see [`RouteConfig`].
    pub routes: Vec<RouteConfig>,
    /// Secret that signs sticky-session cookies; `None` means lb generates one at start.
    pub sticky_secret: Option<Secret>,
    /// The admin listener (metrics, health, status); `None` when disabled.
    /// Default `127.0.0.1:9901`: loopback only unless configured otherwise.
    pub admin: Option<SocketAddr>,
    /// Bearer token that mutating admin requests (`POST /reload`, `POST /pools/...`) must carry
    /// (`admin.token` or `admin.token_file`). Default none: then only loopback admin addresses are
    /// accepted, and mutating requests need no token.
    pub admin_token: Option<Secret>,
    /// Access log format. Default off.
    pub access_log: AccessLog,
    /// How lb notices edits of its config file.
    pub reload: ReloadConfig,
    /// `[client_address]`: whose `X-Forwarded-For` or `Forwarded` names the client. Default: nobody's.
    pub client_address: crate::edge::client_addr::ClientAddress,
    /// `[caches.NAME]`, by name.
    pub caches: Vec<crate::cache::CacheSettings>,
    /// `[[rate_limits]]`, in config order.
    pub rate_limits: Vec<crate::ratelimit::RateLimitRule>,
    /// `[redis]`: where rules with `store = "redis"` keep their buckets.
    pub redis: Option<crate::ratelimit::redis::RedisConfig>,
    /// Runtime worker threads (`workers`); `0`, the default, means one per core lb may run on. Read
    /// at start only.
    pub workers: usize,
    /// `[error_pages]`: bodies of lb's own error answers, by status.
    pub error_pages: ErrorPages,
    /// SHA-256 of the file's text and of the TLS files it names (not of secret files, whose content
    /// may be guessable):
    /// tells configs apart in metrics, `/status` and the reload watcher (an event that left the file
    /// as it runs is ignored).
    pub digest: Digest,
}

/// `[reload]`: reloading on file changes. SIGHUP and `POST /reload` always work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Watch the config file's directory and reload when the file changes. Default true.
    pub watch: bool,
    /// Quiet time after the last change event before reloading (editors write in bursts). Default
    /// 200ms.
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self { watch: true, debounce: Duration::from_millis(200) }
    }
}

/// A config's SHA-256, shown as its first 12 hex digits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub(crate) fn of(parts: &[&[u8]]) -> Self {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// The first 48 bits as a number: exact in a float, so a metric can carry it.
    pub fn short(&self) -> u64 {
        self.0[..6].iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.short())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Access log format: `[log] access = "off" | "text" | "json"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// No access log (default: logging every request costs CPU).
    #[default]
    Off,
    /// One line per request, close to the combined log format.
    Text,
    /// One JSON object per request.
    Json,
}

/// Key material that must not appear in logs: `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A pool's sticky-session cookie: `sticky = { cookie = "...", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// Cookie name. Default `lb_<pool name>`, so pools on one domain never overwrite each other's.
    pub cookie: String,
    /// `Path` attribute. Default `/`.
    pub path: String,
    /// `Domain` attribute. Default none (host-only cookie).
    pub domain: Option<String>,
    /// `Max-Age` in seconds. Default none: a session cookie, gone when the browser closes.
    pub max_age: Option<u64>,
    /// `HttpOnly`. Default true: scripts cannot read the cookie.
    pub http_only: bool,
    /// `Secure`. Default: on for clients on a TLS listener, off on plain HTTP listeners.
    pub secure: Option<bool>,
    /// `SameSite`. Default `Lax`.
    pub same_site: SameSite,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `Strict`.
    Strict,
    /// `Lax` (default).
    Lax,
    /// `None`: requires `secure = true`, as browsers do.
    None,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `0.0.0.0:8080`. Port 0 picks a free port (used by tests).
    pub addr: SocketAddr,
    /// TLS termination (`[listeners.tls]`); `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `redirect_https = true`: every request is answered 308 to the same URL over https on this
    /// port (`https_port`, default 443), and nothing is proxied.
    pub redirect_https: Option<u16>,
    /// `proxy_protocol = true`: every connection starts with a PROXY protocol header (v1 or v2) that
    /// names the client, and only peers in these ranges (`proxy_protocol_from`) may connect.
    pub proxy_protocol: Option<crate::edge::cidr::CidrList>,
    /// `freebind = true`: bind even when the address is not (yet) on this host (`IP_FREEBIND`), as a
    /// keepalived backup does for the virtual IP it may take over.
    pub freebind: bool,
}

/// A listener's TLS: certificates by SNI, optional client certificates, optional HSTS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Certificate chains with their keys; the first is the default (no or unknown SNI name).
    pub certificates: Vec<crate::tls::load::LoadedCert>,
    /// Client certificates verified against this CA (mTLS); `None`: none asked for.
    pub client_ca: Option<ClientCa>,
    /// `Strict-Transport-Security` value added to every response; `None` (default): not sent.
    pub hsts: Option<http::HeaderValue>,
}

/// The CA that signs acceptable client certificates.
#[derive(Clone)]
pub struct ClientCa {
    /// The CA file, as configured.
    pub path: String,
    /// Its certificates.
    pub roots: std::sync::Arc<rustls::RootCertStore>,
    /// `client_auth = "required"` (default): a client without a certificate is refused;
    /// `"optional"`: it is let in, a client with a bad certificate is still refused.
    pub required: bool,
    /// SHA-256 of the file.
    pub digest: [u8; 32],
}

impl PartialEq for ClientCa {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, self.required, self.digest) == (&other.path, other.required, other.digest)
    }
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa").field("path", &self.path).field("required", &self.required).finish()
    }
}

/// Every timeout lb applies. Defaults follow what nginx, HAProxy and Envoy ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to an upstream server. Default 5s (HAProxy's documented `timeout connect`).
    pub connect: Duration,
    /// From the end of sending the request upstream to receiving response headers, and then the
    /// longest pause between two reads of the response body. Default 60s (nginx `proxy_read_timeout`).
    pub response: Duration,
    /// From the first byte of a request head to its end. Default 10s (HAProxy `timeout http-request`).
    pub client_header: Duration,
    /// Idle time allowed on a client connection between requests. Default 75s (nginx
    /// `keepalive_timeout`).
    pub keepalive: Duration,
    /// The longest pause allowed while a client sends a request body; longer is answered 408.
    /// Default 60s (nginx `client_body_timeout`).
    pub client_body: Duration,
    /// How long a write to a client may stay blocked (the client stopped reading). Default 60s (nginx
    /// `send_timeout`).
    pub client_send: Duration,
    /// Idle time allowed on an upgraded (WebSocket) tunnel in both directions. Default 1h (HAProxy
    /// `timeout tunnel` as documented).
    pub tunnel_idle: Duration,
    /// How long an idle pooled upstream connection is kept. Default 60s.
    pub upstream_idle: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default 30s.
    pub drain: Duration,
    /// The window over which `limits.min_body_rate` is measured: a request body that arrives slower
    /// than that rate over this much of the client's time is answered 408. Default 10s.
    pub body_rate_window: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            client_header: Duration::from_secs(10),
            keepalive: Duration::from_secs(75),
            client_body: Duration::from_secs(60),
            client_send: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
            upstream_idle: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            body_rate_window: Duration::from_secs(10),
        }
    }
}

/// Size and count limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes; larger gets 431. Default 32768
    /// (nginx's 4 x 8k `large_client_header_buffers`); minimum 8192.
    pub max_header_bytes: usize,
    /// Most request header fields; more gets 431. Default 100 (Envoy's `max_headers_count`).
    pub max_headers: usize,
    /// Most concurrent client connections across all listeners; further connections wait in the
    /// kernel's accept queue. Default 10000.
    pub max_connections: usize,
    /// Most concurrent connections from one client address (IPv6: one /64); more are closed as
    /// soon as accepted. `0`: no limit, the default (nginx and HAProxy set none either).
    pub max_connections_per_client: usize,
    /// Most idle keep-alive connections kept per upstream server. Default 64.
    pub upstream_idle_per_server: usize,
    /// Requests in flight in a pool, per runtime worker, above which each upstream HTTP/1.1
    /// connection taken for an HTTP/1 client's request runs in a task of its own instead of the
    /// request's (fair service with many connections; see `upstream::lease`). `0`: always. Default
    /// 256 (a worker's local run queue).
    pub upstream_tasks_above: usize,
    /// Most concurrent streams per HTTP/2 client connection. Default 128 (nginx).
    pub h2_max_streams: u32,
    /// Largest request body in bytes (the payload, after chunked framing is removed); larger gets
    /// 413. `0`: no limit. Default 100 MiB; routes may set their own. See docs/http.md.
    pub max_body_size: u64,
    /// Request bodies up to this many bytes are read whole before a server is chosen (nginx's
    /// `proxy_request_buffering`, bounded). `0`: never buffer. Default 64 KiB.
    pub request_buffer: usize,
    /// Most bytes held in request buffers at once, across all requests; beyond it bodies stream
    /// unbuffered. Default 32 MiB.
    pub request_buffer_total: usize,
    /// Slowest request body accepted, in bytes per second over `timeouts.body_rate_window`; slower
    /// is answered 408. `0`: no minimum. Default 256 (Kestrel's `MinRequestBodyDataRate` is 240).
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_connections_per_client: 0,
            upstream_idle_per_server: 64,
            upstream_tasks_above: 256,
            h2_max_streams: 128,
            max_body_size: 100 << 20,
            request_buffer: 64 << 10,
            request_buffer_total: 32 << 20,
            min_body_rate: 256,
        }
    }
}

/// HTTP protocol options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// `Upgrade` tokens that are tunnelled (lowercase). Default `["websocket"]`. `h2c` is never allowed.
    pub upgrades: Vec<String>,
    /// What happens to request header fields whose name contains `_`. Default: dropped.
    pub underscore_headers: UnderscoreHeaders,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { upgrades: vec!["websocket".to_owned()], underscore_headers: UnderscoreHeaders::Drop }
    }
}

/// `http.underscore_headers`: request fields named with `_` (`X_Forwarded_For`) become the same
/// CGI-style variable as their `-` twin in many application stacks, so they can spoof a header lb
/// sets. nginx drops them by default (`underscores_in_headers off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// `"drop"`: removed before forwarding (default).
    Drop,
    /// `"reject"`: the request is answered 400.
    Reject,
    /// `"pass"`: forwarded as they came.
    Pass,
}

/// A named group of upstream servers and the strategy that chooses among them.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name, the key under `[pools]`.
    pub name: String,
    /// How a server is chosen. Default round robin.
    pub strategy: StrategyKind,
    /// The servers, in file order. May be empty (every request then gets 503).
    pub servers: Vec<ServerConfig>,
    /// Consistent-hash options; present exactly when `strategy = "consistent_hash"`.
    pub hash: Option<HashConfig>,
    /// Seed for `random` and `p2c`. Default: drawn at start. Set it to make choices repeatable.
    pub seed: Option<u64>,
    /// Sticky sessions by cookie; `None` (default) disables them.
    pub sticky: Option<StickyConfig>,
    /// Active health checks; `None` (default) runs none.
    pub health: Option<HealthCheck>,
    /// Passive ejection from live traffic; on by default, `None` when `enabled = false`.
    pub passive: Option<Passive>,
    /// How long a server that comes back takes to reach its full weight. Default none (at once).
    pub slow_start: Option<Duration>,
    /// Retries of failed attempts.
    pub retry: Retry,
    /// Circuit-breaking limits and the queue in front of them.
    pub limits: PoolLimits,
    /// TLS to the servers (`[pools.NAME.tls]`); `None` (default): plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// `[pools.NAME.timeouts]`: this pool's own upstream timeouts, instead of `[timeouts]`'s.
    pub timeouts: PoolTimeouts,
}

/// A pool's own upstream timeouts (HAProxy's `timeout connect` and `timeout server` in a backend,
/// nginx's `proxy_connect_timeout` and `proxy_read_timeout`): `None` takes `[timeouts]`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// Instead of `timeouts.connect`.
    pub connect: Option<Duration>,
    /// Instead of `timeouts.response`.
    pub response: Option<Duration>,
}

/// TLS from lb to a pool's servers.
#[derive(Clone)]
pub struct UpstreamTls {
    /// CA file the servers' certificates are verified against; `None`: the system's roots.
    pub ca: Option<String>,
    /// Name sent as SNI and verified; `None`: each server's host from its `addr`.
    pub server_name: Option<String>,
    /// Offer HTTP/2 by ALPN (needed for gRPC); HTTP/1.1 stays offered.
    pub http2: bool,
    /// The ready rustls client config (roots, client certificate, ALPN).
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// Files read, with their SHA-256.
    pub files: Vec<(String, [u8; 32])>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        (&self.ca, &self.server_name, self.http2, &self.files)
            == (&other.ca, &other.server_name, other.http2, &other.files)
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

/// The balancing strategies `strategy = "..."` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    /// `round_robin`: each ready server in turn, weights ignored.
    RoundRobin,
    /// `weighted`: smooth weighted round robin (nginx's algorithm): exact shares, interleaved.
    Weighted,
    /// `least_conn`: fewest in-flight requests relative to weight.
    LeastConn,
    /// `random`: weighted random.
    Random,
    /// `p2c`: the less loaded (in-flight relative to weight) of two random servers.
    P2c,
    /// `consistent_hash`: a hash ring over a request key, optionally with bounded load.
    ConsistentHash,
}

impl StrategyKind {
    /// Every accepted spelling, for error messages.
    pub const NAMES: &'static [&'static str] =
        &["round_robin", "weighted", "least_conn", "random", "p2c", "consistent_hash"];

    /// The name `strategy = "..."` spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::LeastConn => "least_conn",
            Self::Random => "random",
            Self::P2c => "p2c",
            Self::ConsistentHash => "consistent_hash",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "round_robin" => Some(Self::RoundRobin),
            "weighted" => Some(Self::Weighted),
            "least_conn" => Some(Self::LeastConn),
            "random" => Some(Self::Random),
            "p2c" => Some(Self::P2c),
            "consistent_hash" => Some(Self::ConsistentHash),
            _ => None,
        }
    }
}

/// Consistent-hash options of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    /// What part of the request is hashed.
    pub key: HashKey,
    /// What happens when the request has no such key. Default round robin.
    pub fallback: HashFallback,
    /// Bounded load: no server takes more than `factor` x the average in-flight load; overflow walks
    /// the ring. `None` (default) disables it. At least 1.0; HAProxy and Envoy suggest 1.25.
    pub balance_factor: Option<f64>,
    /// Ring points per unit of weight. Default 160 (nginx's ketama points per server).
    pub vnodes: u32,
}

/// The request part a consistent-hash pool hashes: `hash_key = "..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `"client_ip"`: the client's address.
    ClientIp,
    /// `"header:NAME"`: the first value of a request header.
    Header(http::HeaderName),
    /// `"cookie:NAME"`: the value of a cookie.
    Cookie(String),
    /// `"path"`: the request path (without query).
    Path,
    /// `"query:NAME"`: the raw value of a query parameter.
    Query(String),
}

/// What a consistent-hash pool does with a request that lacks its key: `hash_fallback = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFallback {
    /// `"round_robin"` (default): spread such requests over the ready servers in turn.
    RoundRobin,
    /// `"client_ip"`: hash the client's address instead.
    ClientIp,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Stable identity within its pool (state survives reloads by this name). Default: `addr`.
    pub name: String,
    /// `host:port` to connect to; a host name is resolved on each new connection.
    pub addr: String,
    /// Relative weight, 0..=1000. Default 1. 0 drains the server: it gets no new requests, and its
    /// consistent-hash keys move to the other servers.
    pub weight: u32,
    /// Most requests in flight on this server; overrides the pool's `limits.max_requests`.
    pub max_requests: Option<usize>,
    /// Most open connections to this server; overrides the pool's `limits.max_connections`.
    pub max_connections: Option<usize>,
    /// A backup server (nginx's and HAProxy's `backup`): it gets requests only while no other
    /// server of the pool is healthy, or as a retry once they have all been tried. Default false.
    pub backup: bool,
}

/// One routing rule: requests whose Host and path match go to `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match (without port, case-insensitive); `None` matches any host.
    pub host: Option<HostMatch>,
    /// Path prefix to match on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`);
    /// `None` matches any path.
    pub path_prefix: Option<String>,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// `max_body_size` for this route's requests, instead of `limits.max_body_size` (`0`: none).
    pub max_body_size: Option<u64>,
    /// Access lists, auth, redirect, rewrite and header rules; `None` when the route has none.
    pub policy: Option<std::sync::Arc<crate::edge::policy::RoutePolicy>>,
    /// Index into [`Config::caches`] of the cache its responses are kept in.
    pub cache: Option<usize>,
}

/// [`RouteConfig::pool`] of a route that answers a redirect itself and has no pool.
pub const NO_POOL: usize = usize::MAX;

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `example.com`: exactly this host.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored with the leading dot).
    Suffix(String),
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One or more problems, each with its key path and line.
    #[error("{}", render(.0))]
    Invalid(Vec<Issue>),
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Key path such as `pools.web.servers[1].addr`; empty for syntax errors.
    pub path: String,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

fn render(issues: &[Issue]) -> String {
    let mut out = match issues.len() {
        1 => "1 configuration error:".to_owned(),
        n => format!("{n} configuration errors:"),
    };
    for issue in issues {
        out.push_str("\n  ");
        out.push_str(&issue.to_string());
    }
    out
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid(issues) => issues,
            Self::Read { .. } => &[],
        }
    }
}

impl Config {
    /// Every certificate, key and CA file the listeners and pools read, every htpasswd file the
    /// routes read and every error page, with the SHA-256 of its content (a chain and its key share
    /// one).
    pub fn read_files(&self) -> impl Iterator<Item = (&str, [u8; 32])> + '_ {
        let auth = self
            .routes
            .iter()
            .filter_map(|r| r.policy.as_ref()?.auth.as_ref())
            .map(|a| (a.path.as_str(), a.digest));
        let upstream = self
            .pools
            .iter()
            .filter_map(|p| p.tls.as_ref())
            .flat_map(|t| t.files.iter().map(|(p, d)| (p.as_str(), *d)));
        self.listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|tls| {
                let certs = tls
                    .certificates
                    .iter()
                    .flat_map(|c| [(c.cert_path.as_str(), c.digest), (c.key_path.as_str(), c.digest)]);
                certs.chain(tls.client_ca.iter().map(|ca| (ca.path.as_str(), ca.digest)))
            })
            .chain(upstream)
            .chain(auth)
            .chain(self.error_pages.iter().map(|p| (p.path.as_str(), p.digest)))
    }

    /// Whether the file at `path` and every certificate, key, CA and htpasswd file this config read still
    /// hold the bytes they held when it was loaded, so that loading again would give the same
    /// [`Config::digest`]; checked without parsing. Blocking reads; an unreadable file counts as
    /// changed.
    pub fn unchanged_on_disk(&self, path: &Path) -> bool {
        let Ok(text) = std::fs::read(path) else { return false };
        let files: Vec<(&str, [u8; 32])> = self.read_files().collect();
        // Each entry's digest is of its file alone (CA bundles), or of a certificate chain and its
        // key together (listed one after the other with the same digest). Either way, a match
        // means the same bytes.
        let mut i = 0;
        while let Some(&(file, digest)) = files.get(i) {
            let Ok(bytes) = std::fs::read(file) else { return false };
            if Digest::of(&[&bytes]).0 == digest {
                i += 1;
                continue;
            }
            let Some(&(key, _)) = files.get(i + 1).filter(|(_, d)| *d == digest) else { return false };
            let Ok(key_bytes) = std::fs::read(key) else { return false };
            if Digest::of(&[&bytes, &key_bytes]).0 != digest {
                return false;
            }
            i += 2;
        }
        let mut parts: Vec<&[u8]> = vec![&text];
        parts.extend(files.iter().map(|(_, d)| &d[..]));
        Digest::of(&parts) == self.digest
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text, reporting every problem at once.
    pub fn from_toml(src: &str) -> Result<Self, ConfigError> {
        // The parsed tree costs about 1 KB per small table (a `[[routes]]` entry): it is consumed by
        // deserializing, not cloned, and parsed again only to put lines on errors.
        let table = toml::de::DeTable::parse(src).map_err(|e| syntax_issue(src, &e))?;
        let mut unknown = Vec::new();
        let de = toml::de::Deserializer::from(table);
        let raw: raw::RawConfig = serde_ignored::deserialize(de, |path| unknown.push(key_path(&path)))
            .map_err(|e| {
                let mut err = syntax_issue(src, &e);
                if let (ConfigError::Invalid(issues), Some(span)) = (&mut err, e.span()) {
                    let table = toml::de::DeTable::parse(src).ok();
                    let path = table.and_then(|t| locate::path_at(t.get_ref(), span.start));
                    issues.iter_mut().for_each(|i| i.path = path.clone().unwrap_or_default());
                }
                err
            })?;
        let mut issues: Vec<Issue> = unknown
            .into_iter()
            .map(|path| Issue { path, line: None, message: "unknown key".to_owned() })
            .collect();
        let mut config = validate::validate(raw, &mut issues);
        if issues.is_empty() {
            // Certificate, key and CA files count: replacing one is a change to reload.
            let files: Vec<[u8; 32]> = config.read_files().map(|(_, digest)| digest).collect();
            let mut parts: Vec<&[u8]> = vec![src.as_bytes()];
            parts.extend(files.iter().map(|d| &d[..]));
            config.digest = Digest::of(&parts);
            return Ok(config);
        }
        if let Ok(table) = toml::de::DeTable::parse(src) {
            for issue in &mut issues {
                issue.line = issue.line.or_else(|| locate::line_of(src, table.get_ref(), &issue.path));
            }
        }
        issues.sort_by_key(|i| i.line.unwrap_or(0));
        Err(ConfigError::Invalid(issues))
    }
}

/// Renders serde_ignored's path in the same `a.b[0].c` form every other message uses.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// A TOML syntax or type error: serde stops at the first one, so it is reported alone.
fn syntax_issue(src: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| locate::line_at(src, span.start));
    ConfigError::Invalid(vec![Issue { path: String::new(), line, message: e.message().trim().to_owned() }])
}

#[cfg(test)]
mod tests;
