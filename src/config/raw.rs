//! The file's shape, exactly as serde reads it. Every field is optional here; `validate` turns these into
//! the typed [`super::Config`] and reports every problem at once. Unknown keys are not rejected by serde
//! (that would stop at the first one) but collected by `serde_ignored` in `super::from_toml`.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub sticky: RawStickySecret,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub client_address: RawClientAddress,
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub caches: BTreeMap<String, RawCache>,
    pub workers: Option<i64>,
    #[serde(default)]
    pub error_pages: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRateLimit {
    pub name: Option<String>,
    pub rate: Option<RawRate>,
    pub burst: Option<i64>,
    pub key: Option<String>,
    pub store: Option<String>,
    pub on_redis_error: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<String>,
    pub max_keys: Option<i64>,
    pub ipv6_prefix: Option<i64>,
}

/// A rate: `"10/s"`, or a number of requests per second.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRate {
    Number(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRedis {
    pub nodes: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub breaker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawClientAddress {
    pub trusted_proxies: Option<Vec<String>>,
    pub header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawReload {
    pub watch: Option<bool>,
    pub debounce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub addr: Option<String>,
    pub enabled: Option<bool>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLog {
    pub access: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawStickySecret {
    pub secret: Option<String>,
    pub secret_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSticky {
    pub cookie: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub max_age: Option<String>,
    pub http_only: Option<bool>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListener {
    pub addr: Option<String>,
    pub tls: Option<RawTls>,
    pub redirect_https: Option<bool>,
    pub https_port: Option<i64>,
    pub proxy_protocol: Option<bool>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub freebind: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTimeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub client_header: Option<String>,
    pub keepalive: Option<String>,
    pub client_body: Option<String>,
    pub client_send: Option<String>,
    pub tunnel_idle: Option<String>,
    pub upstream_idle: Option<String>,
    pub drain: Option<String>,
    pub body_rate_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_client: Option<i64>,
    pub upstream_idle_per_server: Option<i64>,
    pub upstream_tasks_above: Option<i64>,
    pub h2_max_streams: Option<i64>,
    pub max_body_size: Option<RawSize>,
    pub request_buffer: Option<RawSize>,
    pub request_buffer_total: Option<RawSize>,
    pub min_body_rate: Option<RawSize>,
}

/// A byte count: a whole number, or a string with a unit (`"64KiB"`, `"100MiB"`, `"1m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHttp {
    pub upgrades: Option<Vec<String>>,
    pub underscore_headers: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPool {
    pub strategy: Option<String>,
    pub hash_key: Option<String>,
    pub hash_fallback: Option<String>,
    pub hash_balance_factor: Option<f64>,
    pub hash_vnodes: Option<i64>,
    pub seed: Option<i64>,
    pub sticky: Option<RawSticky>,
    pub slow_start: Option<String>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub retry: Option<RawRetry>,
    pub limits: Option<RawPoolLimits>,
    pub tls: Option<RawUpstreamTls>,
    pub timeouts: Option<RawPoolTimeouts>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPoolTimeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawUpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHealth {
    pub r#type: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub initial: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect: Option<Vec<String>>,
    pub grpc_service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPassive {
    pub enabled: Option<bool>,
    pub consecutive: Option<i64>,
    pub on: Option<Vec<String>>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRetry {
    pub attempts: Option<i64>,
    pub budget_percent: Option<i64>,
    pub budget_min: Option<i64>,
    pub on_status: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPoolLimits {
    pub max_requests: Option<i64>,
    pub max_connections: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawServer {
    pub name: Option<String>,
    pub addr: Option<String>,
    pub weight: Option<i64>,
    pub max_requests: Option<i64>,
    pub max_connections: Option<i64>,
    pub backup: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: Option<String>,
    pub max_body_size: Option<RawSize>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub auth: Option<RawAuth>,
    pub redirect: Option<RawRedirect>,
    pub prefix_rewrite: Option<String>,
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
    pub rate_limits: Option<Vec<String>>,
    pub cache: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCache {
    pub max_size: Option<RawSize>,
    pub max_object_size: Option<RawSize>,
    pub default_ttl: Option<String>,
    pub methods: Option<Vec<String>>,
    pub allow_set_cookie: Option<bool>,
    pub lock_timeout: Option<String>,
    pub redis: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAuth {
    pub htpasswd: Option<String>,
    pub realm: Option<String>,
    pub forward: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRedirect {
    pub to: Option<String>,
    pub status: Option<i64>,
    pub keep_path: Option<bool>,
    pub keep_query: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHeaderRules {
    pub set: Option<BTreeMap<String, String>>,
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub client_ca: Option<String>,
    pub client_auth: Option<String>,
    pub hsts: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
}
