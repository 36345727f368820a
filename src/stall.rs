//! A timer for "no progress for too long": armed when an operation first returns `Pending`,
//! disarmed by progress. It costs nothing on the fast path (operations that are ready at once) and
//! allocates its timer only the first time a stall is seen.

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

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
