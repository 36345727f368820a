//! Passive checks (outlier detection, as Envoy's): live traffic ejects a server after `consecutive`
//! failures in a row, for a time that doubles with each ejection in a row (capped), and never more
//! than `max_ejected_percent` of a pool at once, so passive checks alone can never empty a pool.
//!
//! Runs on the request path after each attempt: a couple of atomic operations, plus a timer task when
//! a server is actually ejected.

use crate::config::Passive;
use crate::upstream::{PoolStats, Upstream, UpstreamStats};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What one attempt on a server came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (any status below 500).
    Success,
    /// The connection could not be made.
    Connect,
    /// No response head within the response timeout.
    Timeout,
    /// The connection broke before a response head.
    Reset,
    /// A response head with a 5xx status.
    Status5xx,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Status5xx => "5xx",
        }
    }

    fn counts_for(self, cfg: &Passive) -> bool {
        match self {
            Self::Success => false,
            Self::Connect => cfg.on.connect,
            Self::Timeout => cfg.on.timeout,
            Self::Reset => cfg.on.reset,
            Self::Status5xx => cfg.on.status_5xx,
        }
    }
}

/// How long the `nth` ejection in a row lasts: `base x 2^(nth-1)`, at most `max`.
pub fn ejection_time(cfg: &Passive, nth: u32) -> Duration {
    let factor = 1u32.checked_shl(nth.saturating_sub(1)).unwrap_or(u32::MAX);
    cfg.base_ejection.checked_mul(factor).map_or(cfg.max_ejection, |t| t.min(cfg.max_ejection))
}

/// How many of `servers` (those that could serve: weight above 0, not down) may be ejected at once.
pub fn ejection_cap(cfg: &Passive, servers: usize) -> usize {
    servers * cfg.max_ejected_percent as usize / 100
}

/// A pool as passive checks see it.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// The pool's passive settings.
    pub cfg: &'a Passive,
    /// Its shared state (ejected count).
    pub stats: &'a Arc<PoolStats>,
    /// Its servers.
    pub servers: &'a [Arc<Upstream>],
    /// Its slow-start time, for servers coming back.
    pub slow_start: Option<Duration>,
}

/// Records one attempt's outcome on `server`; ejects it when this completes a streak of failures.
pub fn observe(pool: PoolView<'_>, server: &Upstream, outcome: Outcome) {
    let health = &server.stats.health;
    if !outcome.counts_for(pool.cfg) {
        // Any answer is a sign of life; a failure of a kind not counted changes nothing.
        if matches!(outcome, Outcome::Success | Outcome::Status5xx)
            && health.failures.load(Ordering::Relaxed) != 0
        {
            health.failures.store(0, Ordering::Relaxed);
        }
        return;
    }
    let failures = health.failures.fetch_add(1, Ordering::Relaxed) + 1;
    if failures >= pool.cfg.consecutive && !health.is_ejected() {
        eject(pool, server, failures, outcome);
    }
}

fn eject(pool: PoolView<'_>, server: &Upstream, failures: u32, last: Outcome) {
    let (name, pool_name) = (&server.key.name, &server.key.pool);
    // The cap counts servers that could serve (weight above 0, not down by active checks, not drained
    // or parked by an operator), ejected ones included, so drained or dead servers never let passive
    // checks take the last live one.
    let eligible = pool
        .servers
        .iter()
        .filter(|u| {
            u.weight > 0
                && (!u.checked || !u.stats.health.is_down())
                && u.stats.admin.get() == crate::control::AdminState::Ready
        })
        .count();
    let cap = ejection_cap(pool.cfg, eligible);
    let room =
        pool.stats.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
    if room.is_err() {
        tracing::debug!(pool = %pool_name, server = %name, cap, "not ejected: the pool's ejection cap is reached");
        return;
    }
    let health = &server.stats.health;
    if !health.set_ejected(true) {
        pool.stats.ejected.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    health.failures.store(0, Ordering::Relaxed);
    let nth = health.ejections.fetch_add(1, Ordering::AcqRel) + 1;
    let time = ejection_time(pool.cfg, nth);
    health.set_ejected_for(time);
    super::went_away(&server.stats);
    tracing::warn!(pool = %pool_name, server = %name, failures, last = last.as_str(), ejected_for = ?time,
        "server ejected: {failures} consecutive failures");
    crate::metrics::health_change(pool_name, name, "down", "passive");
    let back = Return {
        stats: Arc::clone(&server.stats),
        pool: Arc::clone(pool.stats),
        key: server.key.clone(),
        slow_start: pool.slow_start,
        quiet: pool.cfg.max_ejection,
        nth,
    };
    tokio::spawn(back.after(time));
}

/// The timer that lets an ejected server back.
struct Return {
    stats: Arc<UpstreamStats>,
    pool: Arc<PoolStats>,
    key: crate::upstream::UpstreamKey,
    slow_start: Option<Duration>,
    /// After this long back without another ejection, the next ejection is a first one again.
    quiet: Duration,
    nth: u32,
}

impl Return {
    async fn after(self, time: Duration) {
        tokio::time::sleep(time).await;
        // Failures counted while ejected came from requests already under way: start afresh.
        self.stats.health.failures.store(0, Ordering::Relaxed);
        self.stats.health.set_ejected(false);
        self.pool.ejected.fetch_sub(1, Ordering::AcqRel);
        tracing::info!(pool = %self.key.pool, server = %self.key.name, "ejection over: server takes traffic again");
        crate::metrics::health_change(&self.key.pool, &self.key.name, "up", "passive");
        if self.stats.health.is_up() {
            super::came_back(&self.stats, self.slow_start);
        }
        tokio::time::sleep(self.quiet).await;
        let _ =
            self.stats.health.ejections.compare_exchange(self.nth, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::pool as servers;

    fn cfg() -> Passive {
        Passive { consecutive: 3, ..Passive::default() }
    }

    fn view<'a>(cfg: &'a Passive, stats: &'a Arc<PoolStats>, servers: &'a [Arc<Upstream>]) -> PoolView<'a> {
        PoolView { cfg, stats, servers, slow_start: None }
    }

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let cfg = Passive::default();
        let secs: Vec<u64> = (1..=6).map(|n| ejection_time(&cfg, n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
        assert_eq!(ejection_time(&cfg, 40), cfg.max_ejection, "no overflow");
    }

    #[test]
    fn cap_rounds_down_so_a_single_server_is_never_ejected() {
        let cfg = Passive::default();
        assert_eq!([1, 2, 3, 4, 10].map(|n| ejection_cap(&cfg, n)), [0, 1, 1, 2, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_lets_back_after_the_time() {
        let (cfg, stats, ups) = (cfg(), Arc::new(PoolStats::default()), servers(&[1, 1]));
        let s = &ups[0];
        observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
        observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
        observe(view(&cfg, &stats, &ups), s, Outcome::Success);
        observe(view(&cfg, &stats, &ups), s, Outcome::Timeout);
        observe(view(&cfg, &stats, &ups), s, Outcome::Reset); // not counted by default: no change
        observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
        assert!(s.is_ready(), "a success broke the streak");
        observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
        assert!(!s.is_ready() && s.stats.health.is_ejected());
        assert_eq!(stats.ejected.load(Ordering::Relaxed), 1);

        tokio::time::sleep(Duration::from_millis(29_990)).await;
        assert!(s.stats.health.is_ejected(), "still ejected just before 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.is_ready(), "back after 30s");
        assert_eq!(stats.ejected.load(Ordering::Relaxed), 0);

        // A second ejection soon after lasts twice as long.
        for _ in 0..3 {
            observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
        }
        tokio::time::sleep(Duration::from_millis(59_990)).await;
        assert!(s.stats.health.is_ejected(), "second ejection: 60s");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.is_ready());

        // After a quiet max_ejection, the count starts over.
        tokio::time::sleep(cfg.max_ejection + Duration::from_secs(1)).await;
        assert_eq!(s.stats.health.ejections.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_more_than_the_cap() {
        let (cfg, stats, ups) = (cfg(), Arc::new(PoolStats::default()), servers(&[1, 1, 1, 1]));
        for s in ups.iter() {
            for _ in 0..10 {
                observe(view(&cfg, &stats, &ups), s, Outcome::Connect);
            }
        }
        assert_eq!(ups.iter().filter(|s| s.stats.health.is_ejected()).count(), 2, "50% of 4");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_servers_do_not_count_toward_the_cap() {
        let (cfg, stats) = (cfg(), Arc::new(PoolStats::default()));
        let ups = servers(&[1, 0]);
        for _ in 0..10 {
            observe(view(&cfg, &stats, &ups), &ups[0], Outcome::Connect);
        }
        assert!(ups[0].is_ready(), "the only server with a weight is never ejected");
    }

    #[tokio::test(start_paused = true)]
    async fn counts_5xx_only_when_configured() {
        let stats = Arc::new(PoolStats::default());
        let ups = servers(&[1, 1]);
        let mut cfg = cfg();
        for _ in 0..5 {
            observe(view(&cfg, &stats, &ups), &ups[0], Outcome::Status5xx);
        }
        assert!(ups[0].is_ready());
        cfg.on.status_5xx = true;
        for _ in 0..3 {
            observe(view(&cfg, &stats, &ups), &ups[0], Outcome::Status5xx);
        }
        assert!(!ups[0].is_ready());
    }
}
