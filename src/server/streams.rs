//! HTTP/2 streams polled by their connection's own task.
//!
//! hyper runs each HTTP/2 request (the service's future, then its response body) as a future it
//! hands to an executor. With tokio's, each is a task of its own, and a stream task and its
//! connection task wake each other for every header block, data frame and window update, across
//! tasks (and often across threads). [`StreamExec`] instead queues those futures, and the
//! connection's task (`ClientConn`) polls them itself after polling the connection, as nginx runs
//! a connection's streams in its own event handler: waking the connection from a stream is then
//! waking the task that is already running.
//!
//! A connection's streams therefore share one worker thread, as nginx's do; a client that sends all
//! its traffic on one connection gets one core's worth of lb. A stream that panics is dropped alone
//! (hyper then resets it), as it would have been in a task of its own.

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor one HTTP/2 connection gives hyper: it only queues.
#[derive(Clone, Default)]
pub(super) struct StreamExec(Arc<Mutex<Vec<Stream>>>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // Boxed as it is, wrapped outside the box: `Box::pin(Isolated { .. })` would copy the stream
        // (kilobytes: it holds the request's future) twice, into the wrapper and then into the box.
        let stream: Stream = Box::pin(fut);
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(stream);
    }
}

pin_project_lite::pin_project! {
    /// A stream whose panic ends it alone, not its connection and the other streams on it.
    struct Isolated<F> {
        #[pin]
        stream: F,
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stream = self.project().stream;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("an HTTP/2 stream panicked; it is dropped, its connection goes on");
                Poll::Ready(())
            }
        }
    }
}

/// A connection's streams in progress.
#[derive(Default)]
pub(super) struct Streams {
    exec: StreamExec,
    running: FuturesUnordered<Isolated<Stream>>,
}

impl Streams {
    /// The executor for the connection these streams belong to.
    pub(super) fn exec(&self) -> StreamExec {
        self.exec.clone()
    }

    /// Takes the streams the connection started and polls every stream that is ready. Returns
    /// whether polling them started more (then the connection has work: poll it again).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.take_new();
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
        self.take_new()
    }

    fn take_new(&mut self) -> bool {
        let mut queued = self.exec.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let any = !queued.is_empty();
        self.running.extend(queued.drain(..).map(|stream| Isolated { stream }));
        any
    }
}

impl Drop for Streams {
    /// Streams queued and never polled hold the executor (hyper gives each stream a clone), which
    /// holds them: the queue is emptied so that they, and the connection's state they hold, go.
    fn drop(&mut self) {
        std::mem::take(&mut *self.exec.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}
