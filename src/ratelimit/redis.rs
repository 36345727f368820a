//! Buckets shared by a fleet, in Redis: one atomic script per decision, on the Redis server's clock
//! (so the instances' clocks never matter), over a connection that reconnects by itself. Keys are
//! spread over the configured nodes by a jump consistent hash of the bucket's key. After a failure
//! (error or timeout) a node's breaker opens for a while: decisions skip Redis at once instead of
//! paying a timeout each, and the rule's `on_redis_error` decides.

use super::gcra::{Quota, Verdict};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The GCRA of `gcra.rs` in Lua. KEYS[1]: the bucket; ARGV[1]: the emission interval in µs;
/// ARGV[2]: the burst. Returns {allowed (0/1), remaining, µs until reset or retry}. Redis 5+
/// replicates a script's effects, so reading `TIME` before writing is allowed.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > capacity then
  return {0, 0, ahead - capacity}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((capacity - ahead) / interval), ahead}
";

/// `[redis]`: where shared buckets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `host:port` of each node; keys are spread over them.
    pub nodes: Vec<String>,
    /// Longest wait for one decision (connecting included).
    pub timeout: Duration,
    /// How long a node is skipped after a failure.
    pub breaker: Duration,
}

/// Why Redis gave no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// An error: refused connection, reset, or an error reply.
    Error,
    /// The node failed recently; not asked.
    Breaker,
}

impl Failure {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Error => "error",
            Self::Breaker => "breaker",
        }
    }
}

/// The nodes of one `[redis]` config, shared by its rules and kept across reloads.
pub struct RedisStore {
    config: RedisConfig,
    nodes: Vec<Node>,
    script: redis::Script,
    clock: tokio::time::Instant,
}

struct Node {
    addr: String,
    /// Made on first use, inside the runtime; it reconnects by itself afterwards.
    conn: OnceLock<Result<ConnectionManager, String>>,
    /// Nanoseconds on `clock` until which the node is skipped; 0: closed.
    open_until: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("config", &self.config).finish()
    }
}

impl RedisStore {
    /// A store for `config`; no connection is made until a decision needs one.
    pub fn new(config: RedisConfig) -> Self {
        let nodes = config
            .nodes
            .iter()
            .map(|addr| Node { addr: addr.clone(), conn: OnceLock::new(), open_until: AtomicU64::new(0) })
            .collect();
        Self { config, nodes, script: redis::Script::new(SCRIPT), clock: tokio::time::Instant::now() }
    }

    /// The config it was made for.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one request from the bucket `key` (whose hash is `hash`) under `quota`.
    pub async fn take(&self, key: &str, hash: u64, quota: Quota) -> Result<Verdict, Failure> {
        let interval_us = u64::try_from(quota.interval.as_micros()).unwrap_or(u64::MAX).max(1);
        let script = &self.script;
        let (allowed, remaining, micros): (i64, i64, i64) = self
            .run(hash, "rate-limit decision", |mut conn| async move {
                script.key(key).arg(interval_us).arg(quota.burst.max(1)).invoke_async(&mut conn).await
            })
            .await?;
        let time = Duration::from_micros(u64::try_from(micros).unwrap_or(0));
        Ok(if allowed == 1 {
            Verdict::Allow { remaining: u32::try_from(remaining).unwrap_or(0), reset: time }
        } else {
            Verdict::Deny { retry_after: time }
        })
    }

    /// Runs `op` on the connection of the node `hash` picks, within the timeout and behind the
    /// node's breaker (`what` names it in logs). Rate limits and the caches' shared tier share this.
    pub async fn run<T, F, Fut>(&self, hash: u64, what: &'static str, op: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let node = &self.nodes[jump(hash, self.nodes.len())];
        if self.now() < node.open_until.load(Ordering::Relaxed) {
            return Err(Failure::Breaker);
        }
        let result = tokio::time::timeout(self.config.timeout, async {
            let conn = self.connection(node)?;
            op(conn).await
        })
        .await;
        let outcome = match result {
            Ok(Ok(v)) => return Ok(v),
            // The connection's own timers (set to the same timeout) may fire first.
            Ok(Err(e)) if e.is_timeout() => Failure::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(node = %node.addr, error = %e, "redis {what} failed");
                Failure::Error
            }
            Err(_) => Failure::Timeout,
        };
        let until =
            self.now().saturating_add(u64::try_from(self.config.breaker.as_nanos()).unwrap_or(u64::MAX));
        if node.open_until.swap(until, Ordering::Relaxed) <= self.now() {
            tracing::warn!(
                node = %node.addr,
                failure = outcome.label(),
                skip = ?self.config.breaker,
                "redis unavailable: rate-limit rules fall back to their on_redis_error, caches to this process alone"
            );
        }
        Err(outcome)
    }

    /// The node's connection, made on first use; it reconnects by itself afterwards.
    fn connection(&self, node: &Node) -> redis::RedisResult<ConnectionManager> {
        let conn = node.conn.get_or_init(|| {
            let client = redis::Client::open(format!("redis://{}/", node.addr)).map_err(|e| e.to_string())?;
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.config.timeout))
                .set_response_timeout(Some(self.config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            ConnectionManager::new_lazy_with_config(client, settings).map_err(|e| e.to_string())
        });
        match conn {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(redis::RedisError::from((redis::ErrorKind::Client, "connect", e.clone()))),
        }
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }
}

/// Jump consistent hash (Lamping and Veach): a stable node for `key` among `n`; adding a node moves
/// only the keys that go to it.
pub fn jump(mut key: u64, n: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b.max(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "Redis" that accepts connections and never answers, as a stopped one does.
    async fn silent() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_redis_costs_one_timeout_then_the_breaker_answers_at_once() {
        let timeout = Duration::from_millis(100);
        let store = RedisStore::new(RedisConfig {
            nodes: vec![silent().await],
            timeout,
            breaker: Duration::from_secs(1),
        });
        let quota = Quota { interval: Duration::from_millis(100), burst: 1 };
        let start = tokio::time::Instant::now();
        assert_eq!(store.take("k", 1, quota).await, Err(Failure::Timeout));
        assert_eq!(start.elapsed(), timeout, "held exactly as long as the timeout");
        let again = tokio::time::Instant::now();
        assert_eq!(store.take("k", 1, quota).await, Err(Failure::Breaker));
        assert_eq!(again.elapsed(), Duration::ZERO, "the breaker answers without waiting");
        // Once the breaker lapses, Redis is asked again (and here times out again).
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = tokio::time::Instant::now();
        assert_eq!(store.take("k", 1, quota).await, Err(Failure::Timeout));
        assert_eq!(later.elapsed(), timeout);
    }

    #[test]
    fn jump_hash_is_stable_and_moves_little() {
        let keys: Vec<u64> = (0..10_000u64).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let three: Vec<usize> = keys.iter().map(|&k| jump(k, 3)).collect();
        assert!(three.iter().all(|&n| n < 3));
        let four: Vec<usize> = keys.iter().map(|&k| jump(k, 4)).collect();
        let moved = three.iter().zip(&four).filter(|(a, b)| a != b).count();
        // A quarter of the keys move to the new node, and only there.
        assert!((2000..3000).contains(&moved), "{moved}");
        assert!(three.iter().zip(&four).all(|(a, b)| a == b || *b == 3));
        assert_eq!(jump(12345, 1), 0);
    }
}
