//! One upstream server as the request path sees it: its address and its live, shared state.
//!
//! Live state (`UpstreamStats`) is kept apart from the per-snapshot description (`Upstream`) so that a
//! config reload can build new `Upstream`s while re-attaching the same stats by stable identity
//! (pool name + server name), keeping in-flight counts exact across the swap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Stable identity of a server: its pool and its name. Never includes weight or address, so a
/// re-weighted or re-addressed server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// Pool name.
    pub pool: Arc<str>,
    /// Server name within the pool.
    pub name: Arc<str>,
}

/// Live counters of one server, shared by every snapshot that contains it. Lock-free.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    in_flight: AtomicUsize,
}

impl UpstreamStats {
    /// Requests currently using this server (from pick until the response body ends or is dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one request as using this server until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { server: Arc::clone(self), pool: None }
    }
}

/// Counts one in-flight request; the count drops with the guard, which lives inside the response
/// body, so a request stays counted until its body ends or the client goes away.
#[derive(Debug)]
#[must_use = "the request is counted only while this guard is alive"]
pub struct InFlight {
    server: Arc<UpstreamStats>,
    /// The pool-wide count, for strategies that need the total (bounded-load hashing).
    pool: Option<Arc<AtomicUsize>>,
}

impl InFlight {
    /// Also counts the request in a pool-wide total until the guard drops.
    pub fn with_pool(mut self, pool: &Arc<AtomicUsize>) -> Self {
        pool.fetch_add(1, Ordering::Relaxed);
        self.pool = Some(Arc::clone(pool));
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(pool) = &self.pool {
            pool.fetch_sub(1, Ordering::Relaxed);
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
    /// Live state shared across snapshots.
    pub stats: Arc<UpstreamStats>,
    /// Metric handles (requests by status class, upstream response time).
    pub metrics: crate::metrics::ServerMetrics,
}

impl Upstream {
    /// Whether strategies may send a new request here. Read lock-free on every pick.
    pub fn is_ready(&self) -> bool {
        self.weight > 0
    }
}
