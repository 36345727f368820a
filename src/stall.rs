//! Detectors of a peer that is too slow. [`Stall`] is a timer for "no progress for too long": armed
//! when an operation first returns `Pending`, disarmed by progress. It costs nothing on the fast path
//! (operations that are ready at once) and allocates its timer only the first time a stall is seen.
//! [`MinRate`] catches the peer that does progress, but too slowly (a byte every few seconds), which
//! no per-read timeout can.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Detects a stall longer than `limit`.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    /// A detector for stalls longer than `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit, timer: None, armed: false }
    }

    /// The operation made progress: the next stall starts counting afresh.
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// Whether the last operation was pending and none has progressed since.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// The operation is pending: starts the clock if it is not running, and tells whether the limit
    /// has passed. Registers `cx` to be woken when it does.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A minimum data rate, measured only over the time spent waiting for the peer (time the consumer
/// spends elsewhere is not the peer's fault): each time `window` of waiting has passed, the bytes that
/// arrived in it must come to at least `rate` per second of it. Kestrel's `MinRequestBodyDataRate` is
/// the model; a whole window with no byte at all is left to a [`Stall`] of at most `window`.
#[derive(Debug)]
pub struct MinRate {
    rate: u64,
    window: Duration,
    waited: Duration,
    bytes: u64,
    since: Option<Instant>,
}

impl MinRate {
    /// At least `rate` bytes per second over every `window` of waiting.
    pub fn new(rate: u64, window: Duration) -> Self {
        Self { rate, window, waited: Duration::ZERO, bytes: 0, since: None }
    }

    /// The peer has nothing for us now: its clock runs until the next arrival.
    pub fn waiting(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// `n` bytes arrived. `false` when a window just closed with fewer bytes than the rate asks.
    pub fn arrived(&mut self, n: u64) -> bool {
        if let Some(since) = self.since.take() {
            self.waited += since.elapsed();
        }
        self.bytes = self.bytes.saturating_add(n);
        if self.waited < self.window {
            return true;
        }
        let needed = self.rate as f64 * self.waited.as_secs_f64();
        let fast_enough = self.bytes as f64 >= needed;
        (self.waited, self.bytes) = (Duration::ZERO, 0);
        fast_enough
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_the_rate_once_a_window_of_waiting_has_passed() {
        let mut rate = MinRate::new(256, Duration::from_secs(10));
        // One byte every 3 s: fine until 10 s of waiting have passed, then 4 bytes in 12 s fail.
        for _ in 0..3 {
            rate.waiting();
            tokio::time::advance(Duration::from_secs(3)).await;
            assert!(rate.arrived(1));
        }
        rate.waiting();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!rate.arrived(1), "4 bytes in 12 s is below 256 B/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_then_a_burst_passes_and_time_not_spent_waiting_does_not_count() {
        let mut rate = MinRate::new(256, Duration::from_secs(10));
        rate.waiting();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(rate.arrived(64 * 1024), "a burst after a pause keeps the average up");
        // The consumer is busy for a minute (no `waiting`): not the peer's time.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(rate.arrived(1));
        rate.waiting();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(rate.arrived(100), "the window closes at 11 s of waiting with 64 KiB in it");
        rate.waiting();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!rate.arrived(100), "the next window: 100 bytes in 10 s is too slow");
    }

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_limit_without_progress() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut stall = Stall::new(Duration::from_secs(10));
        assert!(!stall.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!stall.expired(&mut cx));
        stall.progress();
        tokio::time::advance(Duration::from_secs(6)).await;
        // The next stall starts now (t=12), not at the first one (t=0).
        assert!(!stall.expired(&mut cx), "progress restarted the clock");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!stall.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(stall.expired(&mut cx));
    }
}
