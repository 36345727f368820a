//! A resizable count limit: one [`Slot`] per open thing (client connection, upstream connection).
//!
//! A tokio `Semaphore` cannot shrink below the permits it has handed out, so lowering the limit at a
//! reload destroys the free permits now and records the rest as a deficit paid by the next slots to
//! close. Open slots are counted, so a drain can wait for zero without knowing the limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// At most `limit` slots open at once; the limit can move while slots are open.
#[derive(Debug)]
pub struct Slots {
    limit: AtomicUsize,
    sem: Arc<Semaphore>,
    /// Permits to destroy as slots close, after the limit was lowered below the slots then open.
    deficit: AtomicUsize,
    open: AtomicUsize,
    /// Woken when the last open slot closes.
    idle: Notify,
}

/// One open slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    /// A limit of `limit` open slots.
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            limit: limit.into(),
            sem: Arc::new(Semaphore::new(limit)),
            deficit: 0.into(),
            open: 0.into(),
            idle: Notify::new(),
        })
    }

    /// Waits for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so `acquire_owned` cannot fail; keep the `Err` arm honest
        // anyway by waiting forever rather than handing out a slot beyond the limit.
        match Arc::clone(&self.sem).acquire_owned().await {
            Ok(permit) => self.opened(permit),
            Err(_) => std::future::pending().await,
        }
    }

    /// A free slot now, if there is one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        Arc::clone(&self.sem).try_acquire_owned().ok().map(|p| self.opened(p))
    }

    fn opened(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot { permit: Some(permit), slots: Arc::clone(self) }
    }

    /// Slots open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no slot is open.
    pub async fn closed(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            // Registered before the check, so a slot closing in between still wakes us.
            woken.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            woken.await;
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Moves to `limit` keeping the open slots: raising adds permits, lowering destroys free permits
    /// now and the rest as slots close.
    pub fn resize(&self, limit: usize) {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            let more = limit - old;
            // A pending deficit is cancelled first; only the rest becomes new permits.
            let pending = self
                .deficit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(d - d.min(more)))
                .unwrap_or(0);
            self.sem.add_permits(more - pending.min(more));
        } else if limit < old {
            let fewer = old - limit;
            let forgotten = self.sem.forget_permits(fewer);
            self.deficit.fetch_add(fewer - forgotten, Ordering::AcqRel);
            // A slot that closed between the two lines above returned its permit instead of paying
            // the deficit: pay from free permits now, so the new limit holds at once.
            while self.deficit.load(Ordering::Acquire) > 0 && self.sem.forget_permits(1) == 1 {
                if self
                    .deficit
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                    .is_err()
                {
                    // A closing slot paid it meanwhile: give the permit back.
                    self.sem.add_permits(1);
                    break;
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        if slots.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            slots.idle.notify_waiters();
        }
        if let Some(permit) = self.permit.take() {
            // Destroyed if the limit was lowered meanwhile, else returned.
            if slots.deficit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1)).is_ok() {
                permit.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_limit_holds_once_the_extra_slots_close() {
        let slots = Slots::new(3);
        let held: Vec<_> = (0..3).map(|_| slots.try_acquire().unwrap()).collect();
        assert_eq!(slots.open(), 3);
        slots.resize(1);
        drop(held);
        assert_eq!((slots.available(), slots.open()), (1, 0), "three closed, limit 1");
        slots.resize(4);
        assert_eq!(slots.available(), 4);
        let one = slots.try_acquire().unwrap();
        slots.resize(2);
        assert_eq!(slots.available(), 1, "one open, one free");
        drop(one);
        assert_eq!(slots.available(), 2);
        let two: Vec<_> = (0..2).map(|_| slots.try_acquire().unwrap()).collect();
        assert!(slots.try_acquire().is_none(), "the limit holds");
        drop(two);
    }

    #[test]
    fn raising_the_limit_first_cancels_a_pending_deficit() {
        let slots = Slots::new(2);
        let held: Vec<_> = (0..2).map(|_| slots.try_acquire().unwrap()).collect();
        slots.resize(0);
        slots.resize(1);
        drop(held);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn closed_resolves_when_the_last_slot_closes() {
        let slots = Slots::new(2);
        slots.closed().await;
        let (a, b) = (slots.try_acquire().unwrap(), slots.try_acquire().unwrap());
        let waiter = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one slot still open");
        drop(b);
        waiter.await.unwrap();
    }
}
