//! One pool as the request path sees it, and what it does at request time: choosing a server
//! (strategy, stickiness, slow start), reserving its in-flight slot (`claim`), waiting in the pool's
//! bounded queue when every server is at its limits, the retry budget, and passive health outcomes.

use crate::balance::rng::Rng;
use crate::balance::{hash_key, PickCtx, Strategy, Upstreams};
use crate::config::{HashConfig, HashFallback, HealthCheck, Passive, PoolLimits, Retry};
use crate::health::{self, passive};
use crate::metrics::PoolMetrics;
use crate::sticky::Sticky;
use crate::upstream::{InFlight, PoolStats, Upstream};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most servers of `tried` a retry looks at among the backups (a request makes at most
/// `retry.attempts` + 1 = 11 tries).
const MAX_TRIED: usize = 16;

/// One pool as of one snapshot: its servers and its built strategy.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// Its servers in config order, the backup servers after all the others.
    pub upstreams: Box<[Arc<Upstream>]>,
    /// How many of `upstreams` come before the backups.
    pub(super) primaries: usize,
    /// The strategy over the servers before the backups, and one over the backups if there are any.
    pub(super) strategy: Box<dyn Strategy>,
    pub(super) backup_strategy: Option<Box<dyn Strategy>>,
    /// What to hash, for consistent-hash pools.
    pub(super) hash: Option<HashConfig>,
    /// Sticky-session cookies, when the pool has them.
    pub(super) sticky: Option<Sticky>,
    /// Metric handles of the pool.
    pub metrics: PoolMetrics,
    /// Live state shared across snapshots (in flight, retries, ejections, queue).
    pub stats: Arc<PoolStats>,
    /// Active health checks, if any.
    pub health: Option<HealthCheck>,
    /// Passive ejection, if on.
    pub passive: Option<Passive>,
    /// Slow start of servers that come back.
    pub slow_start: Option<std::time::Duration>,
    /// Retry policy.
    pub retry: Retry,
    /// Circuit-breaking limits and queue.
    pub limits: PoolLimits,
    /// `timeouts.connect`, or the pool's own.
    pub connect_timeout: std::time::Duration,
    /// `timeouts.response`, or the pool's own.
    pub response_timeout: std::time::Duration,
    /// Whether any server has a request or connection limit (then a full pool queues requests).
    pub(super) limited: bool,
    /// The pool offers HTTP/2 to its servers (`[tls] http2 = true`).
    pub(super) http2: bool,
    /// Draws for slow start when a request has no hash key.
    pub(super) warm_rng: Rng,
}

/// A chosen server for one request.
#[derive(Debug)]
pub struct Choice<'a> {
    /// Index in [`Pool::upstreams`].
    pub index: usize,
    /// The server.
    pub upstream: &'a Arc<Upstream>,
    /// Whether the response sets the pool's sticky cookie (the request had no valid cookie for a
    /// ready server); [`Pool::sticky_cookie`] gives the value.
    pub set_cookie: bool,
}

impl Pool {
    /// Chooses a server for a request: the one its sticky cookie names if that one is ready,
    /// otherwise the strategy's pick (with a cookie to set, for sticky pools). `None`: none is ready.
    pub fn choose(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<Choice<'_>> {
        if let Some(index) = self.sticky.as_ref().and_then(|s| s.lookup(&parts.headers)) {
            // A draining server keeps the sessions bound to it (docs/console.md); a backup keeps
            // them only while it is in use, so that sessions go back once a primary is healthy.
            let in_use = index < self.primaries || self.backups_in_use();
            if let Some(upstream) = self.upstreams.get(index).filter(|u| in_use && u.keeps_sessions()) {
                return Some(Choice { index, upstream, set_cookie: false });
            }
        }
        let index = self.pick_index(client, parts)?;
        self.choice(index)
    }

    /// Chooses a ready server not in `tried` (for a retry), preferring the strategy's choice (for
    /// consistent hashing, the next server on the ring): one of the primaries, else a backup (as
    /// nginx does once a request has tried every primary). Sticky clients get a cookie for the new
    /// server: their session moved.
    pub fn choose_other(
        &self,
        client: SocketAddr,
        parts: &http::request::Parts,
        tried: &[usize],
    ) -> Option<Choice<'_>> {
        let ctx = self.ctx(client, parts);
        let primary = self.strategy.pick_other(&ctx, self.primary_servers(), tried);
        let index = primary.or_else(|| {
            let backups = self.backup_strategy.as_deref()?;
            // `tried` in the backups' own numbering; a request tries a handful of servers at most.
            let mut local = [0; MAX_TRIED];
            let mut n = 0;
            for i in tried.iter().filter_map(|i| i.checked_sub(self.primaries)).take(MAX_TRIED) {
                local[n] = i;
                n += 1;
            }
            Some(self.primaries + backups.pick_other(&ctx, self.backup_servers(), &local[..n])?)
        })?;
        self.choice(index)
    }

    /// The servers before the backups.
    fn primary_servers(&self) -> Upstreams<'_> {
        Upstreams(self.upstreams.get(..self.primaries).unwrap_or_default())
    }

    /// The backup servers.
    fn backup_servers(&self) -> Upstreams<'_> {
        Upstreams(self.upstreams.get(self.primaries..).unwrap_or_default())
    }

    /// Whether new requests go to the backups: the pool has some, and none of its other servers is
    /// healthy (servers at their limits are healthy: requests queue for them, as HAProxy's do).
    pub fn backups_in_use(&self) -> bool {
        self.backup_strategy.is_some() && !self.primary_servers().0.iter().any(|u| u.is_healthy())
    }

    /// Whether server `index` is a backup.
    pub fn is_backup(&self, index: usize) -> bool {
        index >= self.primaries
    }

    fn choice(&self, index: usize) -> Option<Choice<'_>> {
        let upstream = self.upstreams.get(index)?;
        Some(Choice { index, upstream, set_cookie: self.sticky.is_some() })
    }

    /// Whether the pool offers HTTP/2 to its servers (`[tls] http2 = true`): requests then keep
    /// `te: trailers` (gRPC needs it) and carry no `Host` field, so that HTTP/2's `:authority` (the
    /// server's address) is the only one (RFC 9113 8.3.1); the client's host is in
    /// `X-Forwarded-Host`.
    pub fn http2(&self) -> bool {
        self.http2
    }

    /// The `Set-Cookie` value that pins a client to server `index`, for a client on TLS or not (the
    /// cookie is `Secure` behind TLS unless configured otherwise).
    pub fn sticky_cookie(&self, index: usize, tls: bool) -> Option<HeaderValue> {
        self.sticky.as_ref().and_then(|s| s.set_cookie(index, tls).cloned())
    }

    /// The strategy's choice among ready servers, ignoring cookies (`None`: none is ready).
    pub fn pick(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<&Arc<Upstream>> {
        self.pick_index(client, parts).and_then(|i| self.upstreams.get(i))
    }

    fn ctx<'p>(&self, client: SocketAddr, parts: &'p http::request::Parts) -> PickCtx<'p> {
        let hash = self.hash.as_ref().and_then(|h| {
            hash_key::extract(&h.key, client, parts).or_else(|| match h.fallback {
                HashFallback::ClientIp => Some(hash_key::client_ip(client)),
                HashFallback::RoundRobin => None,
            })
        });
        PickCtx { client, parts, hash }
    }

    fn pick_index(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<usize> {
        let ctx = self.ctx(client, parts);
        if self.backup_strategy.is_some() && self.backups_in_use() {
            return self.pick_backup(&ctx);
        }
        let ups = self.primary_servers();
        let index = self.strategy.pick(&ctx, ups)?;
        Some(self.warm(&*self.strategy, index, &ctx, ups))
    }

    /// The pick while the backups are in use: kept out of line, off the common path.
    #[inline(never)]
    fn pick_backup(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        let strategy = self.backup_strategy.as_deref()?;
        let ups = self.backup_servers();
        let index = strategy.pick(ctx, ups)?;
        Some(self.primaries + self.warm(strategy, index, ctx, ups))
    }

    /// Slow start: a pick of a server still warming up (share `w` of [`health::FULL`]) stands with
    /// probability `w`, otherwise goes to another server, so the server gets about `w` of its share
    /// whatever the strategy. Hashed requests draw from their key, so each key moves back once.
    fn warm(&self, strategy: &dyn Strategy, index: usize, ctx: &PickCtx<'_>, ups: Upstreams<'_>) -> usize {
        let share = ups.0.get(index).map_or(health::FULL, |u| u.stats.health.warmup());
        if share >= health::FULL {
            return index;
        }
        let draw = ctx.hash.unwrap_or_else(|| self.warm_rng.next_u64()) % u64::from(health::FULL);
        if draw < u64::from(share) {
            return index;
        }
        strategy.pick_other(ctx, ups, &[index]).unwrap_or(index)
    }

    /// Whether requests that find every server at its limits may wait (the pool has limits and at
    /// least one healthy server to wait for).
    pub fn may_queue(&self) -> bool {
        self.limited && self.upstreams.iter().any(|u| u.is_healthy())
    }

    /// Waits in the pool's bounded queue for a server below its limits (circuit breaking), for at
    /// most `limits.queue_timeout`. Refused at once when the pool has no limits, no healthy server,
    /// or a full queue.
    pub async fn wait_for_room(
        &self,
        client: SocketAddr,
        parts: &http::request::Parts,
    ) -> Result<(Choice<'_>, InFlight), NoServer> {
        if !self.may_queue() {
            return Err(NoServer::NoneReady);
        }
        let stats = &self.stats;
        if stats.queued.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
            stats.queued.fetch_sub(1, Ordering::SeqCst);
            crate::metrics::queue_rejected(&self.name, "full");
            return Err(NoServer::QueueFull);
        }
        let _leave = Queued(stats);
        let deadline = tokio::time::Instant::now() + self.limits.queue_timeout;
        loop {
            // Registered before looking, so a release in between is not missed.
            let freed = stats.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(claimed) = self.claim_now(client, parts) {
                return Ok(claimed);
            }
            if !self.may_queue() {
                return Err(NoServer::NoneReady);
            }
            if tokio::time::Instant::now() >= deadline {
                crate::metrics::queue_rejected(&self.name, "timeout");
                return Err(NoServer::QueueTimeout(self.limits.queue_timeout));
            }
            // Woken by a request that ended; also look again now and then, for room that appears
            // without one ending (a server coming back, a reload raising a limit).
            let _ =
                tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + QUEUE_POLL), freed).await;
        }
    }

    /// Chooses a server and reserves a slot on it (its request limit is checked and taken in one
    /// atomic step). `None` when no server has room, or when requests are already queued (they go
    /// first: the caller then queues behind them).
    pub fn claim(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<(Choice<'_>, InFlight)> {
        if self.limited && self.stats.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.claim_now(client, parts)
    }

    fn claim_now(&self, client: SocketAddr, parts: &http::request::Parts) -> Option<(Choice<'_>, InFlight)> {
        let choice = self.choose(client, parts)?;
        match self.begin(choice.upstream) {
            Some(guard) => Some((choice, guard)),
            // Another request took the last slot between the pick and the reservation.
            None => self.claim_other(client, parts, &[choice.index]),
        }
    }

    /// Like [`Pool::choose_other`], with a reserved slot on the chosen server.
    pub fn claim_other(
        &self,
        client: SocketAddr,
        parts: &http::request::Parts,
        tried: &[usize],
    ) -> Option<(Choice<'_>, InFlight)> {
        let mut exclude = tried.to_vec();
        while exclude.len() < self.upstreams.len() + tried.len() {
            let choice = self.choose_other(client, parts, &exclude)?;
            match self.begin(choice.upstream) {
                Some(guard) => return Some((choice, guard)),
                None => exclude.push(choice.index),
            }
        }
        None
    }

    /// Counts a request on `upstream` and in the pool until the returned guard drops; `None` when the
    /// server is at its request limit.
    pub fn begin(&self, upstream: &Upstream) -> Option<InFlight> {
        upstream.stats.try_begin(&self.stats, upstream.max_in_flight)
    }

    /// Records an attempt's outcome for passive checks (when the pool has them).
    pub fn observe(&self, upstream: &Upstream, outcome: passive::Outcome) {
        if let Some(cfg) = &self.passive {
            let view = passive::PoolView {
                cfg,
                stats: &self.stats,
                servers: &self.upstreams,
                slow_start: self.slow_start,
            };
            passive::observe(view, upstream, outcome);
        }
    }

    /// Whether the pool has more than `per_worker` requests in flight for each of the runtime's
    /// workers (`0`: always). Above `limits.upstream_tasks_above`, upstream HTTP/1.1 connections taken
    /// for HTTP/1 clients run in tasks of their own (see `upstream::lease`).
    pub fn crowded(&self, per_worker: usize) -> bool {
        per_worker == 0 || self.stats.in_flight() > per_worker.saturating_mul(workers())
    }

    /// Whether a request's upstream HTTP/1.1 connection runs in a task of its own: the pool is
    /// [`crowded`](Self::crowded) above `threshold` (`limits.upstream_tasks_above`). Noted for the
    /// idle sweep, which keeps such connections while the pool is above half the threshold, or was
    /// above it since the sweep last looked: traffic that comes in bursts then finds the last
    /// burst's connections, rather than opening them again after each calm spell.
    pub fn take_apart(&self, threshold: usize) -> bool {
        let crowded = self.crowded(threshold);
        if crowded && !self.stats.crowded_lately.load(Ordering::Relaxed) {
            self.stats.crowded_lately.store(true, Ordering::Relaxed);
        }
        crowded
    }

    /// For the idle sweep: whether connections that run in tasks of their own are still wanted. The
    /// pool is above half `threshold` now, or went above `threshold` since the sweep last asked.
    pub fn keep_apart(&self, threshold: usize) -> bool {
        let lately = self.stats.crowded_lately.swap(false, Ordering::Relaxed);
        lately || self.crowded(threshold / 2)
    }

    /// Takes a retry slot if the retry budget allows one more retry in progress: at most
    /// `budget_percent` of the pool's requests in flight, and always at least `budget_min`.
    pub fn retry_slot(&self) -> Option<RetrySlot> {
        let allowed = (self.stats.in_flight() * self.retry.budget_percent as usize / 100)
            .max(self.retry.budget_min as usize);
        let taken = self
            .stats
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < allowed).then_some(n + 1));
        match taken {
            Ok(_) => Some(RetrySlot(Arc::clone(&self.stats))),
            Err(_) => {
                self.metrics.retries_refused.increment(1);
                None
            }
        }
    }
}

/// How often a queued request looks for room when no request ended.
const QUEUE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a request got no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// No server is healthy (or the pool has no limits to wait for).
    NoneReady,
    /// Every server is at its limits and the queue is full.
    QueueFull,
    /// Every server stayed at its limits for the whole queue timeout.
    QueueTimeout(std::time::Duration),
}

/// One queued request, counted until dropped (also when its client goes away).
struct Queued<'a>(&'a PoolStats);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One retry in progress, counted against the pool's retry budget until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<PoolStats>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The runtime's worker threads (1 outside a multi-thread runtime), read once.
fn workers() -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()))
}
