//! One upstream server as the request path sees it: its address and its live, shared state.
//!
//! Live state (`UpstreamStats`) is kept apart from the per-snapshot description (`Upstream`) so that a
//! config reload can build new `Upstream`s while re-attaching the same stats by stable identity
//! (pool name + server name), keeping in-flight counts exact across the swap.

pub mod connect;
pub mod conns;
pub mod lease;

use crate::control::{AdminCell, AdminState};
use crate::health::Health;
use crate::traffic::Traffic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Stable identity of a server: its pool and its name. Never includes the weight, so a re-weighted
/// server keeps its state; a server whose address changes is another server to health checks and
/// counters, and starts afresh (the runtime's registry compares addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// Pool name.
    pub pool: Arc<str>,
    /// Server name within the pool.
    pub name: Arc<str>,
}

/// Live state of one server, shared by every snapshot that contains it. Lock-free.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    in_flight: AtomicUsize,
    /// Health verdicts (active checks, passive ejection) and slow-start progress.
    pub health: Health,
    /// Open connections to the server, idle or shared.
    pub conns: conns::ServerConns,
    /// The operator's admin state (`ready`, `drain`, `maint`), re-applied from the runtime's
    /// overrides at every snapshot build.
    pub admin: AdminCell,
    /// Answers and response times, for the console.
    pub traffic: Traffic,
}

impl UpstreamStats {
    /// State for a server seen for the first time: up, or down until its health checks pass.
    pub fn new(start_up: bool) -> Self {
        Self { health: Health::new(start_up), ..Self::default() }
    }

    /// Requests currently using this server (from pick until the response body ends or is dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one request as using this server (and its pool) until the returned guard drops.
    pub fn begin(self: &Arc<Self>, pool: &Arc<PoolStats>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { server: Arc::clone(self), pool: Arc::clone(pool) }
    }

    /// Like [`UpstreamStats::begin`], but only while fewer than `max` requests are in flight: the slot
    /// is reserved atomically, so concurrent requests can never exceed the limit.
    pub fn try_begin(self: &Arc<Self>, pool: &Arc<PoolStats>, max: usize) -> Option<InFlight> {
        if max == usize::MAX {
            return Some(self.begin(pool));
        }
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()?;
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { server: Arc::clone(self), pool: Arc::clone(pool) })
    }
}

/// Live state of one pool, shared by every snapshot that contains it (by pool name). Lock-free on the
/// request path; the queue's `Notify` is only touched while requests are queued.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests in flight on any of the pool's servers (bounded-load hashing, retry budget).
    pub in_flight: AtomicUsize,
    /// Retries in progress (retry budget).
    pub retries: AtomicUsize,
    /// Servers currently ejected by passive checks (capped by `max_ejected_percent`).
    pub ejected: AtomicUsize,
    /// Requests waiting for a server below its limits.
    pub queued: AtomicUsize,
    /// Signalled when a request ends while others are queued.
    pub freed: tokio::sync::Notify,
    /// A request found the pool above `limits.upstream_tasks_above` since the idle sweep last looked
    /// (see `Pool::take_apart`).
    pub crowded_lately: AtomicBool,
}

impl PoolStats {
    /// Requests in flight in the pool.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one in-flight request; the count drops with the guard, which lives inside the response
/// body, so a request stays counted until its body ends or the client goes away.
#[derive(Debug)]
#[must_use = "the request is counted only while this guard is alive"]
pub struct InFlight {
    server: Arc<UpstreamStats>,
    pool: Arc<PoolStats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SeqCst pairs with the queue's increment of `queued` and its look at `in_flight`
        // (`Pool::wait_for_room`): either this sees the queued request, or it sees the free slot.
        // Both are plain instructions on x86 (a locked add and a load).
        self.server.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Wake one queued request (circuit breaking): this server may now be below its limit.
        if self.pool.queued.load(Ordering::SeqCst) > 0 {
            self.pool.freed.notify_one();
        }
    }
}

/// One server of one pool, as of one config snapshot.
#[derive(Debug)]
pub struct Upstream {
    /// Stable identity.
    pub key: UpstreamKey,
    /// `host:port` as configured.
    pub addr: String,
    /// The same, pre-parsed for building request URIs without per-request parsing.
    pub authority: http::uri::Authority,
    /// Configured weight; 0 means draining (not ready for new requests).
    pub weight: u32,
    /// Most requests in flight here (circuit breaking); `usize::MAX` when unlimited.
    pub max_in_flight: usize,
    /// Whether the pool runs active checks: their DOWN verdict counts only then.
    pub checked: bool,
    /// Live state shared across snapshots.
    pub stats: Arc<UpstreamStats>,
    /// TLS to this server (`[pools.NAME.tls]`); `None`: plain HTTP.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// Metric handles (requests by status class, upstream response time).
    pub metrics: crate::metrics::ServerMetrics,
}

impl Upstream {
    /// Whether strategies may send a new request here: healthy and below its limits. Read lock-free
    /// on every pick.
    pub fn is_ready(&self) -> bool {
        self.is_healthy()
            && (self.max_in_flight == usize::MAX
                || self.stats.in_flight.load(Ordering::SeqCst) < self.max_in_flight)
    }

    /// Whether the server may take traffic at all (weight above 0, up, not ejected, admin state
    /// `ready`), limits aside.
    pub fn is_healthy(&self) -> bool {
        self.weight > 0
            && self.stats.health.admits(self.checked)
            && self.stats.admin.get() == AdminState::Ready
    }

    /// Whether a sticky session already bound here may continue: as [`Upstream::is_ready`], except
    /// that a server in `drain` keeps its sessions (`maint` does not).
    pub fn keeps_sessions(&self) -> bool {
        self.weight > 0
            && self.stats.health.admits(self.checked)
            && self.stats.admin.get() != AdminState::Maint
            && (self.max_in_flight == usize::MAX
                || self.stats.in_flight.load(Ordering::SeqCst) < self.max_in_flight)
    }
}
