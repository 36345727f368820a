//! A wait that needs polling only once per waker.
//!
//! A timer or a signal that returned `Pending` keeps the waker it was polled with and wakes it when
//! it fires; polling it again with the same waker only repeats the registration (a timer's costs
//! about as much as a socket read, a `watch` takes a lock). A connection's task is polled several
//! times per request, so [`Armed`] remembers which waker a wait last registered.

use std::task::{Context, Waker};

/// The waker a wait registered when it last returned `Pending`, if it has not fired or been reset.
#[derive(Debug, Default)]
pub(super) struct Armed(Option<Waker>);

impl Armed {
    /// Whether the wait already holds `cx`'s waker: polling it again would change nothing.
    pub(super) fn holds(&self, cx: &Context<'_>) -> bool {
        self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// The wait was just polled with `cx` and returned `Pending`.
    pub(super) fn set(&mut self, cx: &Context<'_>) {
        self.0 = Some(cx.waker().clone());
    }

    /// The wait was reset: it must be polled again.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }
}
