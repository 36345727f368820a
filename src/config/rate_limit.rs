//! Validation of `[[rate_limits]]` and `[redis]`.

use super::raw::{RawRateLimit, RawRedis};
use super::validate::{check_authority, host_match, parse_hash_key, path_prefix, positive, Issues};
use crate::ratelimit::gcra::Quota;
use crate::ratelimit::redis::RedisConfig;
use crate::ratelimit::{HeaderStyle, LimitKey, OnRedisError, RateLimitRule, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Default keys held per rule in the process.
const DEFAULT_MAX_KEYS: usize = 100_000;

pub(super) fn redis(raw: Option<&RawRedis>, out: &mut Issues<'_>) -> Option<RedisConfig> {
    let raw = raw?;
    let nodes = raw.nodes.clone().unwrap_or_default();
    if nodes.is_empty() {
        out.push("redis.nodes", "at least one \"host:port\" is required, e.g. [\"127.0.0.1:6379\"]");
    }
    for (i, n) in nodes.iter().enumerate() {
        if let Err(e) = check_authority(n) {
            out.push(format!("redis.nodes[{i}]"), e);
        }
    }
    Some(RedisConfig {
        nodes,
        timeout: positive("redis.timeout", raw.timeout.as_deref(), Duration::from_millis(50), out),
        breaker: positive("redis.breaker", raw.breaker.as_deref(), Duration::from_secs(1), out),
    })
}

/// `"10/s"`, `"600/m"`, `"1000/h"`, `"86400/d"`, or a number of requests per second.
fn rate(text: &str) -> Result<(u32, Duration), String> {
    let (count, unit) = text.split_once('/').unwrap_or((text, "s"));
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d, e.g. \"10/s\" or \"600/m\"")),
    };
    match count.trim().parse::<u32>() {
        Ok(0) => Err(format!("{text:?}: the rate must be at least 1 request per period")),
        Ok(n) => Ok((n, period)),
        Err(_) => Err(format!("{text:?}: expected a whole number of requests, e.g. \"10/s\"")),
    }
}

pub(super) fn rules(
    raw: &[RawRateLimit],
    redis: Option<&RedisConfig>,
    out: &mut Issues<'_>,
) -> Vec<RateLimitRule> {
    let mut names = HashSet::new();
    let mut result = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = format!("rate_limits[{i}]");
        let name = match r.name.as_deref() {
            None => {
                out.push(format!("{path}.name"), "is required: it names the rule in metrics, logs and Redis");
                continue;
            }
            Some(n)
                if n.is_empty()
                    || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                out.push(format!("{path}.name"), format!("{n:?}: use letters, digits, '-' and '_'"));
                continue;
            }
            Some(n) if !names.insert(n.to_owned()) => {
                out.push(format!("{path}.name"), format!("{n:?} names an earlier rule too"));
                continue;
            }
            Some(n) => n,
        };
        let (count, period) = match r.rate.as_ref().map(|v| match v {
            super::raw::RawRate::Number(n) => u32::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(|n| (n, Duration::from_secs(1)))
                .ok_or_else(|| format!("{n}: the rate must be at least 1 request per second")),
            super::raw::RawRate::Text(t) => rate(t),
        }) {
            None => {
                out.push(format!("{path}.rate"), "is required, e.g. \"10/s\"");
                continue;
            }
            Some(Err(e)) => {
                out.push(format!("{path}.rate"), e);
                continue;
            }
            Some(Ok(r)) => r,
        };
        let burst = match r.burst {
            None => count,
            Some(b) if (1..=1_000_000).contains(&b) => b as u32,
            Some(b) => {
                out.push(format!("{path}.burst"), format!("{b} is out of range 1..=1000000"));
                continue;
            }
        };
        let key = match r.key.as_deref().unwrap_or("client_ip") {
            "route" => LimitKey::Route,
            text => match parse_hash_key(text) {
                Ok(k) => LimitKey::Request(k),
                Err(e) => {
                    out.push(format!("{path}.key"), format!("{e}, or \"route\""));
                    continue;
                }
            },
        };
        let on_error = match r.on_redis_error.as_deref() {
            None | Some("local") => OnRedisError::Local,
            Some("allow") => OnRedisError::Allow,
            Some("deny") => OnRedisError::Deny,
            Some(other) => {
                out.push(
                    format!("{path}.on_redis_error"),
                    format!("{other:?}: expected \"allow\", \"deny\" or \"local\""),
                );
                OnRedisError::Local
            }
        };
        let store = match r.store.as_deref() {
            None | Some("local") => {
                if r.on_redis_error.is_some() {
                    out.push(format!("{path}.on_redis_error"), "only used with store = \"redis\"");
                }
                Store::Local
            }
            Some("redis") => {
                if redis.is_none() {
                    out.push(
                        format!("{path}.store"),
                        "\"redis\" needs a [redis] section with nodes = [\"host:port\"]",
                    );
                }
                Store::Redis(on_error)
            }
            Some(other) => {
                out.push(format!("{path}.store"), format!("{other:?}: expected \"local\" or \"redis\""));
                continue;
            }
        };
        let headers = match r.headers.as_deref() {
            None | Some("draft") => HeaderStyle::Draft,
            Some("legacy") => HeaderStyle::Legacy,
            Some("both") => HeaderStyle::Both,
            Some("none") => HeaderStyle::None,
            Some(other) => {
                out.push(
                    format!("{path}.headers"),
                    format!("{other:?}: expected \"draft\", \"legacy\", \"both\" or \"none\""),
                );
                HeaderStyle::Draft
            }
        };
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().flatten().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => out.push(format!("{path}.methods[{j}]"), format!("{m:?} is not a method")),
            }
        }
        let max_keys = match r.max_keys {
            None => DEFAULT_MAX_KEYS,
            Some(n) if (16..=100_000_000).contains(&n) => n as usize,
            Some(n) => {
                out.push(format!("{path}.max_keys"), format!("{n} is out of range 16..=100000000"));
                DEFAULT_MAX_KEYS
            }
        };
        let ipv6_prefix = match r.ipv6_prefix {
            None => 64,
            Some(n) if (0..=128).contains(&n) => n as u8,
            Some(n) => {
                out.push(format!("{path}.ipv6_prefix"), format!("{n} is out of range 0..=128"));
                64
            }
        };
        result.push(RateLimitRule {
            name: Arc::from(name),
            count,
            period,
            quota: Quota { interval: period / count, burst },
            key,
            store,
            host: r.host.as_deref().and_then(|h| host_match(h, &format!("{path}.host"), out)),
            path_prefix: r
                .path_prefix
                .as_deref()
                .and_then(|p| path_prefix(p, &format!("{path}.path_prefix"), out)),
            methods,
            headers,
            max_keys,
            ipv6_prefix,
            by_route: false,
        });
    }
    result
}
