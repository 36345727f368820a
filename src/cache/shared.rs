//! The shared tier of a cache (`redis = true`): objects also kept in `[redis]`, so that a fleet of
//! lb instances fills one cache. The process's own cache stays in front: Redis is asked only on a
//! local miss, and what it returns is kept locally too. Writes are made in the background after an
//! object is stored locally. A Redis failure (error, timeout, open breaker) is a miss: the
//! instance goes on with its own cache alone.
//!
//! One object per URL is shared (the latest stored variant); a request that its `Vary` does not
//! select is a miss. Each Redis key is `lb:cache:NAME:` followed by the URL key, with a lifetime
//! that covers the object's freshness, its stale windows, and (when it can be revalidated) ten
//! minutes more.

use super::Object;
use crate::ratelimit::redis::{Failure, RedisStore};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Leads every encoded object: the format's version.
const MAGIC: &[u8; 4] = b"LBC1";

/// How long an object that can be revalidated stays in Redis after its stale windows.
const REVALIDATE_KEEP: Duration = Duration::from_secs(600);

/// Upper bound of one `SCAN` walk for a prefix purge (keys visited per call, calls).
const SCAN_COUNT: usize = 1000;
const SCAN_CALLS: usize = 10_000;

/// What an object carries besides its body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    policy: http_cache_semantics::CachePolicy,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    fresh_until_ms: u64,
    stale_while_revalidate_s: u64,
    stale_if_error_s: u64,
    must_revalidate: bool,
    body_len: u64,
}

/// The shared tier of one cache.
pub struct Shared {
    redis: Arc<RedisStore>,
    prefix: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("prefix", &self.prefix).finish()
    }
}

impl Shared {
    /// The tier of the cache `name` in `redis`.
    pub fn new(redis: Arc<RedisStore>, name: &str) -> Self {
        Self { redis, prefix: format!("lb:cache:{name}:") }
    }

    /// The Redis store it uses (a reload keeps a cache only with the same one).
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.redis
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The object stored for `key`, if Redis has one and answers in time.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, Failure> {
        let redis_key = self.redis_key(key);
        let bytes: Option<Vec<u8>> = self
            .redis
            .run(hash(key), "cache read", |mut conn| async move {
                redis::cmd("GET").arg(&redis_key).query_async(&mut conn).await
            })
            .await?;
        Ok(bytes.and_then(|b| decode(&b)))
    }

    /// Stores `object` for `key`, in the background; `now` is the cache's time.
    pub fn put(self: &Arc<Self>, key: &str, object: &Object, now: SystemTime) {
        let Some(encoded) = encode(object) else { return };
        let mut keep = object
            .fresh_until
            .duration_since(now)
            .unwrap_or_default()
            .saturating_add(object.stale_while_revalidate.max(object.stale_if_error));
        if object.has_validator() {
            keep = keep.saturating_add(REVALIDATE_KEEP);
        }
        let millis = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1000);
        let mut set = redis::cmd("SET");
        set.arg(self.redis_key(key)).arg(encoded).arg("PX").arg(millis);
        self.in_background(key, "cache write", set);
    }

    /// Removes `key` (a URL purge or an unsafe method), in the background.
    pub fn delete(self: &Arc<Self>, key: &str) {
        let mut del = redis::cmd("DEL");
        del.arg(self.redis_key(key));
        self.in_background(key, "cache delete", del);
    }

    /// Removes `key` and waits for Redis to confirm it: an operator's purge is over when it answers.
    pub async fn delete_now(&self, key: &str) -> Result<(), Failure> {
        let stored = self.redis_key(key);
        self.redis
            .run(hash(key), "cache purge", |mut conn| async move {
                redis::cmd("DEL").arg(&stored).query_async::<()>(&mut conn).await
            })
            .await
    }

    /// Runs `command` on `key`'s node in a task of its own: the request that caused it does not
    /// wait, and a failure only opens the node's breaker (`what` names it in the log).
    fn in_background(self: &Arc<Self>, key: &str, what: &'static str, command: redis::Cmd) {
        let (this, hash) = (Arc::clone(self), hash(key));
        tokio::spawn(async move {
            let _ = this
                .redis
                .run(hash, what, |mut conn| async move { command.query_async::<()>(&mut conn).await })
                .await;
        });
    }

    /// Removes every key that starts with `prefix` on every node (`SCAN` with a pattern, bounded).
    pub async fn purge_prefix(&self, prefix: &str) -> Result<u64, Failure> {
        let pattern = format!("{}*", glob_escape(&self.redis_key(prefix)));
        let mut removed = 0;
        // One walk per node: keys are spread over them by URL.
        for node in 0..self.redis.nodes() {
            let pattern = pattern.clone();
            removed += self
                .redis
                .run(node_hash(node, self.redis.nodes()), "cache purge", |mut conn| async move {
                    let mut cursor = 0u64;
                    let mut removed = 0u64;
                    for _ in 0..SCAN_CALLS {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT)
                            .query_async(&mut conn)
                            .await?;
                        if !keys.is_empty() {
                            removed += redis::cmd("DEL").arg(&keys).query_async::<u64>(&mut conn).await?;
                        }
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                    Ok(removed)
                })
                .await?;
        }
        Ok(removed)
    }
}

/// The hash that places `key` on a node.
fn hash(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// A hash that the jump hash places on `node` of `n` (found by trying: jump hashing has no inverse).
fn node_hash(node: usize, n: usize) -> u64 {
    (0u64..).find(|h| crate::ratelimit::redis::jump(*h, n) == node).unwrap_or(0)
}

/// `pattern` with Redis's glob characters escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn millis(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0)
}

/// `MAGIC`, the metadata's length (4 bytes, big-endian), the metadata as JSON, then the body.
fn encode(object: &Object) -> Option<Vec<u8>> {
    let meta = Meta {
        policy: object.policy.clone(),
        status: object.status.as_u16(),
        headers: object.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        fresh_until_ms: millis(object.fresh_until),
        stale_while_revalidate_s: object.stale_while_revalidate.as_secs(),
        stale_if_error_s: object.stale_if_error.as_secs(),
        must_revalidate: object.must_revalidate,
        body_len: object.body.len() as u64,
    };
    let meta = serde_json::to_vec(&meta).ok()?;
    let len = u32::try_from(meta.len()).ok()?;
    let mut out = Vec::with_capacity(8 + meta.len() + object.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&object.body);
    Some(out)
}

/// The object `encode` wrote; `None` for anything else (another version, a damaged value).
fn decode(bytes: &[u8]) -> Option<Object> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (meta, body) = rest.split_at(len);
    let meta: Meta = serde_json::from_slice(meta).ok()?;
    if body.len() as u64 != meta.body_len {
        return None;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &meta.headers {
        headers.append(HeaderName::try_from(name.as_str()).ok()?, HeaderValue::from_bytes(value).ok()?);
    }
    let mut object = Object::new(
        meta.policy,
        StatusCode::from_u16(meta.status).ok()?,
        headers,
        Bytes::copy_from_slice(body),
        SystemTime::UNIX_EPOCH,
        None,
    );
    object.fresh_until = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.fresh_until_ms);
    object.stale_while_revalidate = Duration::from_secs(meta.stale_while_revalidate_s);
    object.stale_if_error = Duration::from_secs(meta.stale_if_error_s);
    object.must_revalidate = meta.must_revalidate;
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_survives_encoding_and_damage_is_refused() {
        let mut req = http::Request::get("/a").header("host", "h").body(()).unwrap().into_parts().0;
        req.uri = "/a".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=60, stale-if-error=5"));
        headers.insert("x-bin", HeaderValue::from_bytes(b"\xfe\xff").unwrap());
        let mut resp = http::Response::new(());
        *resp.headers_mut() = headers.clone();
        let policy = http_cache_semantics::CachePolicy::new(&req, &resp);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let object = Object::new(policy, StatusCode::OK, headers, Bytes::from_static(b"\x00body"), now, None);
        let bytes = encode(&object).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!((back.status, &back.headers, &back.body), (object.status, &object.headers, &object.body));
        assert_eq!(back.fresh_until, object.fresh_until);
        assert_eq!(back.stale_if_error, Duration::from_secs(5));
        assert!(decode(&bytes[..bytes.len() - 1]).is_none(), "a short body is refused");
        assert!(decode(b"LBC1\x00\x00\x10\x00{}").is_none());
        assert!(decode(b"something else").is_none());
    }

    #[test]
    fn prefixes_are_escaped_for_scan() {
        assert_eq!(glob_escape("http://h/a*b?[c]\\"), "http://h/a\\*b\\?\\[c\\]\\\\");
    }
}
