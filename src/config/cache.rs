//! Validation of `[caches.NAME]`.

use super::raw::RawCache;
use super::validate::{positive, size, Issues};
use crate::cache::CacheSettings;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Default `max_size`: 64 MiB.
const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// Default `max_object_size`: 1 MiB.
const DEFAULT_MAX_OBJECT: u64 = 1 << 20;
/// Default `lock_timeout`, as nginx's `proxy_cache_lock_timeout`.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn caches(
    raw: &BTreeMap<String, RawCache>,
    has_redis: bool,
    out: &mut Issues<'_>,
) -> Vec<CacheSettings> {
    raw.iter()
        .map(|(name, c)| {
            let path = format!("caches.{name}");
            let max_size =
                size(&format!("{path}.max_size"), c.max_size.as_ref(), u64::MAX, DEFAULT_MAX_SIZE, out);
            let max_object_size = size(
                &format!("{path}.max_object_size"),
                c.max_object_size.as_ref(),
                u64::MAX,
                DEFAULT_MAX_OBJECT,
                out,
            );
            if max_object_size > max_size {
                out.push(
                    format!("{path}.max_object_size"),
                    format!("{max_object_size} is larger than max_size ({max_size})"),
                );
            }
            if max_object_size > u64::from(u32::MAX / 2) {
                out.push(format!("{path}.max_object_size"), "must be at most 2 GiB");
            }
            let default_ttl = c
                .default_ttl
                .as_deref()
                .filter(|t| !matches!(*t, "off" | "0" | "0s"))
                .map(|t| positive(&format!("{path}.default_ttl"), Some(t), Duration::ZERO, out))
                .filter(|d| !d.is_zero());
            let methods = c.methods.clone().unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]);
            let mut head = false;
            for (i, m) in methods.iter().enumerate() {
                match m.as_str() {
                    "GET" => {}
                    "HEAD" => head = true,
                    other => out.push(
                        format!("{path}.methods[{i}]"),
                        format!("{other:?}: only GET and HEAD are cached"),
                    ),
                }
            }
            if !methods.iter().any(|m| m == "GET") {
                out.push(
                    format!("{path}.methods"),
                    "must include \"GET\" (HEAD is answered from stored GETs)",
                );
            }
            let redis = c.redis.unwrap_or(false);
            if redis && !has_redis {
                out.push(format!("{path}.redis"), "needs a [redis] section with its nodes");
            }
            CacheSettings {
                redis,
                name: Arc::from(name.as_str()),
                max_size,
                max_object_size,
                default_ttl,
                head,
                allow_set_cookie: c.allow_set_cookie.unwrap_or(false),
                lock_timeout: positive(
                    &format!("{path}.lock_timeout"),
                    c.lock_timeout.as_deref(),
                    DEFAULT_LOCK_TIMEOUT,
                    out,
                ),
            }
        })
        .collect()
}
