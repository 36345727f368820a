//! Server health: active checks, passive ejection and slow start (docs/health.md).
//!
//! Every verdict lands in one server's [`Health`], a few atomics inside its shared
//! [`crate::upstream::UpstreamStats`]: strategies read them lock-free on every pick, and they survive
//! config reloads for servers whose identity (pool + name) did not change. The writers are the check
//! tasks ([`check`], one per server of a pool with `[health]`), the request path ([`passive`], after
//! each attempt) and short timer tasks (ejection expiry, slow-start ramp). The threshold and ejection
//! rules are plain state machines ([`Thresholds`], [`passive::ejection_time`]) tested on their own.

pub mod check;
mod grpc;
pub mod passive;
pub mod slow_start;
mod supervisor;
mod thresholds;

pub use supervisor::Checks;
pub use thresholds::Thresholds;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Active checks say the server is down.
const DOWN: u8 = 1;
/// Passive checks ejected the server.
const EJECTED: u8 = 2;

/// Full weight, in permille of the configured weight (slow start ramps up to it).
pub const FULL: u32 = 1000;

/// Live health of one server. Lock-free.
#[derive(Debug)]
pub struct Health {
    /// `DOWN` and `EJECTED` bits: the server takes traffic only when both are clear.
    state: AtomicU8,
    /// Share of its weight the server gets while warming up, in permille; [`FULL`] when warm.
    warmup: AtomicU32,
    /// Bumped whenever the server goes down or comes back, so a stale slow-start ramp stops.
    epoch: AtomicU64,
    /// Consecutive failures seen by passive checks.
    pub(crate) failures: AtomicU32,
    /// Ejections in a row (each doubles the next ejection's length); reset after a quiet period.
    pub(crate) ejections: AtomicU32,
    /// The last active check's result ([`CheckResult`] as a number), for the console.
    last_check: AtomicU8,
    /// When the current passive ejection ends, in Unix milliseconds (0: never ejected), for the
    /// console's "time left".
    ejected_until_ms: AtomicU64,
}

/// The result of a server's last active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// No check ran yet (or the pool has none).
    None,
    /// It passed.
    Pass,
    /// It failed.
    Fail,
}

impl CheckResult {
    /// `none`, `pass` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Health {
    /// A server's first state: up, or down until its checks pass.
    pub fn new(up: bool) -> Self {
        Self {
            state: AtomicU8::new(if up { 0 } else { DOWN }),
            warmup: AtomicU32::new(FULL),
            epoch: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            last_check: AtomicU8::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// The last active check's result.
    pub fn last_check(&self) -> CheckResult {
        match self.last_check.load(Ordering::Relaxed) {
            1 => CheckResult::Pass,
            2 => CheckResult::Fail,
            _ => CheckResult::None,
        }
    }

    pub(crate) fn record_check(&self, passed: bool) {
        self.last_check.store(if passed { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// When the current (or last) passive ejection ends, in Unix milliseconds; 0 if never ejected.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ejected_for(&self, time: std::time::Duration) {
        let until = std::time::SystemTime::now() + time;
        let ms = until.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.ejected_until_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Neither down by active checks nor ejected.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 0
    }

    /// Whether the server may take traffic: not ejected, and not down by active checks if `checked`
    /// (a DOWN verdict left over from checks a reload removed does not count).
    pub fn admits(&self, checked: bool) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if checked {
            state == 0
        } else {
            state & EJECTED == 0
        }
    }

    /// Whether active checks hold the server down.
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Relaxed) & DOWN != 0
    }

    /// Whether passive checks ejected the server.
    pub fn is_ejected(&self) -> bool {
        self.state.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// Share of its weight the server gets now, in permille ([`FULL`] unless warming up).
    pub fn warmup(&self) -> u32 {
        self.warmup.load(Ordering::Relaxed)
    }

    /// Records an active-check verdict; `true` if it changed the DOWN bit.
    pub(crate) fn set_down(&self, down: bool) -> bool {
        self.set_bit(DOWN, down)
    }

    /// Sets or clears the EJECTED bit; `true` if it changed.
    pub(crate) fn set_ejected(&self, ejected: bool) -> bool {
        self.set_bit(EJECTED, ejected)
    }

    fn set_bit(&self, bit: u8, on: bool) -> bool {
        let before = if on {
            self.state.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.state.fetch_and(!bit, Ordering::AcqRel)
        };
        (before & bit != 0) != on
    }

    /// Starts a new up/down period and returns its number (stale ramps compare against it).
    pub(crate) fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn set_warmup(&self, permille: u32) {
        self.warmup.store(permille.min(FULL), Ordering::Relaxed);
    }
}

/// The server just became able to take traffic again (checks pass and not ejected): start its slow
/// start, if the pool has one. Called by whichever verdict cleared the last bit.
pub(crate) fn came_back(
    stats: &std::sync::Arc<crate::upstream::UpstreamStats>,
    slow: Option<std::time::Duration>,
) {
    let epoch = stats.health.next_epoch();
    match slow {
        Some(over) if stats.health.is_up() => slow_start::ramp(std::sync::Arc::clone(stats), over, epoch),
        _ => stats.health.set_warmup(FULL),
    }
}

/// The server just stopped taking traffic: a running slow-start ramp stops.
pub(crate) fn went_away(stats: &crate::upstream::UpstreamStats) {
    stats.health.next_epoch();
}
