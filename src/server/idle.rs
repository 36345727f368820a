//! Client connection timeouts that hyper cannot express on its own.
//!
//! hyper's HTTP/1 header timer also runs while a keep-alive connection sits idle, so it cannot give a
//! short "client must send its head quickly" limit together with a longer "idle connections may
//! stay" limit. [`IdleIo`] wraps the socket and enforces both:
//! * from the first byte of a request head (or from accept) until the request starts: `client_header`;
//! * from the end of the last response until the next byte: `keepalive`;
//! * never while a request is in flight (per-request timeouts govern that).
//!
//! The same timer tells an HTTP/1 connection that has idled for [`RELEASE_AFTER`] to give its hyper
//! state back ([`Activity::take_release`], see `server::h1`).
//!
//! The deadline is re-evaluated lazily when its timer fires, so the request path only touches two
//! atomics per request ([`ActiveRequest`]).

use pin_project_lite::pin_project;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::armed::Armed;
use crate::config::Timeouts;
use crate::stall::Stall;

/// How long an HTTP/1 connection idles before it gives back its hyper state (read buffer, header
/// map, in-flight slot) and waits for the next request with its socket alone. Long enough that a
/// connection serving back-to-back requests never does it; short enough that a burst of new
/// connections, each idle after one request, never holds much hyper state at once (the memory it
/// frees is reused by the next ones instead of piling up).
pub const RELEASE_AFTER: Duration = Duration::from_millis(10);

/// How often the timer of a connection with a request in flight looks again. The release is
/// decided by the timer every connection already has, never per request: a busy connection costs
/// one timer firing per period, and one that goes idle is released within
/// `RELEASE_AFTER + BUSY_LOOK`.
const BUSY_LOOK: Duration = Duration::from_secs(1);

/// Request activity of one client connection, shared by its service and its socket wrapper.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    active: AtomicUsize,
    /// Requests finished so far: tells a new head apart from the previous one without relying on
    /// clock resolution.
    done: AtomicU64,
    /// Milliseconds since `start` when the last response finished.
    last_done_ms: AtomicU64,
    /// Set by the socket's timer: the connection has idled for [`RELEASE_AFTER`].
    release: AtomicBool,
    /// The connection's slot under `limits.max_connections`. Everything that uses the connection
    /// (its hyper task, its socket, an upgraded tunnel) holds this `Activity`, so the slot is
    /// returned only when the last of them is gone, and the shutdown drain waits for tunnels too.
    _slot: Option<crate::slots::Slot>,
    /// The connection's count under `limits.max_connections_per_client`, held as long as the slot.
    client: OnceLock<super::client_conns::ClientSlot>,
    /// The listener's gauges, shared by its connections (one pointer here, not three handles:
    /// an idle connection's memory is mostly records like this one).
    pub(super) gauges: Option<Arc<ListenerGauges>>,
    /// Responses on this connection say `Connection: close` (set when a new process takes over).
    closing: AtomicBool,
}

/// A listener's connection gauges, which each of its connections moves.
#[derive(Debug, Clone)]
pub struct ListenerGauges {
    /// Open connections: up from accept until the last user of the connection is gone.
    pub open: metrics::Gauge,
    /// Requests in progress, moved by [`ActiveRequest`].
    pub in_flight: metrics::Gauge,
    /// Connections waiting for a request with no hyper state held ([`Activity::idle`]).
    pub idle: metrics::Gauge,
    /// Connections closed at once: their client had `limits.max_connections_per_client` open.
    pub refused_per_client: metrics::Counter,
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(g) = &self.gauges {
            g.open.decrement(1.0);
        }
    }
}

/// Counts its connection as idle (holding no hyper state) in the listener's gauge while it lives.
#[derive(Debug)]
pub struct Idle(Arc<Activity>);

impl Idle {
    /// Counts `activity`'s connection as idle until this is dropped.
    pub fn new(activity: &Arc<Activity>) -> Self {
        if let Some(g) = &activity.gauges {
            g.idle.increment(1.0);
        }
        Self(Arc::clone(activity))
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        if let Some(g) = &self.0.gauges {
            g.idle.decrement(1.0);
        }
    }
}

impl Activity {
    /// Activity of a connection accepted now.
    pub fn new() -> Self {
        Self::holding(None, None)
    }

    /// Activity of a connection accepted now, holding its connection slot and counted in the
    /// listener's `gauges` (open: from now until the last user of the connection is gone).
    pub fn holding(slot: Option<crate::slots::Slot>, gauges: Option<Arc<ListenerGauges>>) -> Self {
        if let Some(g) = &gauges {
            g.open.increment(1.0);
        }
        Self {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
            release: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            _slot: slot,
            client: OnceLock::new(),
            gauges,
        }
    }

    /// Holds the connection's count for its client (`limits.max_connections_per_client`) until
    /// the last user of the connection is gone. Set once, when the client is known.
    pub(crate) fn hold_client(&self, slot: super::client_conns::ClientSlot) {
        let _ = self.client.set(slot);
    }

    /// Asks every later response on this connection to close it (`Connection: close`).
    pub fn close_after_response(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Requests of this connection in progress now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Whether the connection has idled for [`RELEASE_AFTER`] since this was last asked; clears it.
    pub fn take_release(&self) -> bool {
        // Asked on every poll of a busy connection: a load is cheaper than a swap.
        self.release.load(Ordering::Acquire) && self.release.swap(false, Ordering::AcqRel)
    }

    fn since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// One request in progress on a connection; held by the response body until it ends.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Activity>);

impl ActiveRequest {
    /// Whether this connection is to close after this request (its process is being replaced):
    /// the response then says `Connection: close`.
    pub fn closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }

    /// Marks a request as started on this connection.
    pub fn begin(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        if let Some(g) = &activity.gauges {
            g.in_flight.increment(1.0);
        }
        Self(Arc::clone(activity))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let now = self.0.since_start(Instant::now());
        // Store the finish time before the count drops, so the timer never sees "idle since 0".
        self.0.last_done_ms.fetch_max(now, Ordering::AcqRel);
        self.0.done.fetch_add(1, Ordering::AcqRel);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0.gauges {
            g.in_flight.decrement(1.0);
        }
    }
}

pin_project! {
    /// A client socket that fails reads with `TimedOut` once the connection has been idle, or
    /// sending a request head, for too long. hyper then closes it.
    pub struct IdleIo<T> {
        #[pin]
        io: T,
        // Boxed so the wrapper stays Unpin, as hyper requires of its IO.
        timer: Pin<Box<Sleep>>,
        activity: Arc<Activity>,
        client_header: Duration,
        keepalive: Duration,
        // A client that stops reading our writes for this long is cut off.
        send: Stall,
        // The request head being received: (requests done when it began, ms since start). Accept
        // counts as the start of the first head.
        head: Option<(u64, u64)>,
        // HTTP/2 multiplexes requests and pings: only the idle rule applies.
        h2: bool,
        // The timer's registration: a read that finds no data need not poll it again while it holds
        // the same waker and has not fired (hyper tries several reads per request).
        armed: Armed,
    }
}

impl<T> IdleIo<T> {
    /// Wraps a freshly accepted socket; the first request head must arrive within `client_header`.
    pub fn new(io: T, activity: Arc<Activity>, timeouts: &Timeouts) -> Self {
        let (client_header, keepalive) = (timeouts.client_header, timeouts.keepalive);
        // The first look comes at most RELEASE_AFTER in: a connection idle after one quick request
        // is released then, not only when the header timeout would have been checked.
        let timer = Box::pin(tokio::time::sleep_until(activity.start + client_header.min(RELEASE_AFTER)));
        Self {
            io,
            timer,
            activity,
            client_header,
            keepalive,
            send: Stall::new(timeouts.client_send),
            head: Some((0, 0)),
            h2: false,
            armed: Armed::default(),
        }
    }

    /// Whether the connection speaks HTTP/2, as its server decided from its first bytes.
    pub fn set_h2(&mut self, h2: bool) {
        self.h2 = h2;
    }
}

/// When an idle HTTP/1 connection should give its hyper state back, or `None` while a request
/// or its head is under way.
fn release_at(activity: &Activity, head: Option<(u64, u64)>) -> Option<Instant> {
    if activity.active.load(Ordering::Acquire) > 0 {
        return None;
    }
    let done = activity.done.load(Ordering::Acquire);
    if head.is_some_and(|(epoch, _)| epoch == done) {
        return None;
    }
    Some(activity.at(activity.last_done_ms.load(Ordering::Acquire)) + RELEASE_AFTER)
}

/// The moment the connection times out, or `None` while a request is in flight.
fn deadline(
    activity: &Activity,
    head: Option<(u64, u64)>,
    h2: bool,
    client_header: Duration,
    keepalive: Duration,
) -> Option<Instant> {
    if activity.active.load(Ordering::Acquire) > 0 {
        return None;
    }
    let done = activity.done.load(Ordering::Acquire);
    match head {
        // No request has finished since this head began: it is still being received.
        Some((epoch, started_ms)) if !h2 && epoch == done => Some(activity.at(started_ms) + client_header),
        _ => Some(activity.at(activity.last_done_ms.load(Ordering::Acquire)) + keepalive),
    }
}

impl<T: AsyncRead> AsyncRead for IdleIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        if let Poll::Ready(result) = this.io.poll_read(cx, buf) {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                let done = this.activity.done.load(Ordering::Acquire);
                let idle = this.activity.active.load(Ordering::Acquire) == 0;
                let head_is_new = this.head.is_none_or(|(epoch, _)| epoch != done);
                if idle && !*this.h2 && head_is_new {
                    // A new request head starts: it must complete within client_header, and the
                    // timer must look again within BUSY_LOOK (after a release it was left at the
                    // keep-alive deadline). Busy connections' timers are nearer: no reset for them.
                    let now = this.activity.since_start(Instant::now());
                    *this.head = Some((done, now));
                    let due = this.activity.at(now) + (*this.client_header).min(BUSY_LOOK);
                    if due < this.timer.deadline() {
                        this.timer.as_mut().reset(due);
                        this.armed.clear();
                    }
                }
            }
            return Poll::Ready(result);
        }
        // No data: the timer decides whether waiting any longer is allowed.
        if this.armed.holds(cx) && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = deadline(this.activity, *this.head, *this.h2, *this.client_header, *this.keepalive);
            let mut next = match due {
                Some(due) if due <= now => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client connection timed out",
                    )));
                }
                Some(due) => due,
                // Busy: look again after one keep-alive period; the real deadline is always later.
                None => now + *this.keepalive,
            };
            // HTTP/2: hyper keeps the idle connection.
            if !*this.h2 {
                match release_at(this.activity, *this.head) {
                    Some(at) if at > now => next = next.min(at),
                    // A write still blocked: the end of the last answer is in hyper's buffer.
                    Some(_) if this.send.is_armed() => next = next.min(now + BUSY_LOOK),
                    Some(_) => this.activity.release.store(true, Ordering::Release),
                    None => next = next.min(now + BUSY_LOOK),
                }
            }
            this.timer.as_mut().reset(next);
        }
        this.armed.set(cx);
        Poll::Pending
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        send_deadline(this.send, cx, result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_flush(cx);
        send_deadline(this.send, cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        send_deadline(this.send, cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A write that stays blocked (the client stopped reading) for `client_send` fails with `TimedOut`.
fn send_deadline<R>(
    send: &mut Stall,
    cx: &mut Context<'_>,
    result: Poll<io::Result<R>>,
) -> Poll<io::Result<R>> {
    match result {
        Poll::Ready(r) => {
            send.progress();
            Poll::Ready(r)
        }
        Poll::Pending if send.expired(cx) => {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")))
        }
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(75);
    const SEND: Duration = Duration::from_secs(60);

    fn wrap() -> (IdleIo<tokio::io::DuplexStream>, tokio::io::DuplexStream, Arc<Activity>) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::new());
        let timeouts =
            Timeouts { client_header: HEAD, keepalive: IDLE, client_send: SEND, ..Timeouts::default() };
        (IdleIo::new(ours, Arc::clone(&activity), &timeouts), theirs, activity)
    }

    /// A wrapped connection whose first request head has been read.
    async fn head_read() -> (Pin<Box<IdleIo<tokio::io::DuplexStream>>>, tokio::io::DuplexStream, Arc<Activity>)
    {
        let (io, mut peer, activity) = wrap();
        let mut io = Box::pin(io);
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        (io, peer, activity)
    }

    async fn read_err_after(io: &mut IdleIo<tokio::io::DuplexStream>) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let err = Box::pin(io).read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_new_connection_gets_the_header_timeout() {
        let (mut io, _peer, _) = wrap();
        assert_eq!(read_err_after(&mut io).await, HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_times_out_from_its_first_byte() {
        let (io, mut peer, _) = wrap();
        let mut io = Box::pin(io);
        tokio::time::sleep(Duration::from_secs(3)).await;
        peer.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The head began at t=0 (accept), so it has 10s in all, 7s of them left.
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_never_time_out_and_idle_ones_get_keepalive() {
        let (mut io, _peer, activity) = head_read().await;
        let mut buf = [0u8; 64];
        let active = ActiveRequest::begin(&activity);
        // A slow request: nothing read for far longer than either timeout.
        let waited = tokio::time::timeout(Duration::from_secs(500), io.read(&mut buf)).await;
        assert!(waited.is_err(), "must not time out while a request is in flight");
        drop(active);
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_done_within_the_accept_millisecond_still_earns_keepalive() {
        let (mut io, _peer, activity) = head_read().await;
        let mut buf = [0u8; 64];
        drop(ActiveRequest::begin(&activity));
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off() {
        let (io, _peer, _) = wrap();
        let mut io = Box::pin(io);
        let start = Instant::now();
        // The duplex buffer (1 KiB) fills and the peer never reads.
        let chunk = [0u8; 4096];
        let err = loop {
            match io.write(&chunk).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), SEND);
    }

    /// Reads (nothing arrives) until the connection is asked to give its hyper state back; how long
    /// that took, or `None` if the read ended first.
    async fn release_after(
        io: &mut Pin<Box<IdleIo<tokio::io::DuplexStream>>>,
        activity: &Activity,
    ) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            if let Ok(read) = tokio::time::timeout(Duration::from_millis(10), io.read(&mut buf)).await {
                assert!(read.is_err(), "no data was sent");
                return None;
            }
            if activity.take_release() {
                return Some(start.elapsed());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_is_released_soon_after_its_last_answer_and_never_while_busy() {
        let (mut io, mut peer, activity) = head_read().await;
        let mut buf = [0u8; 64];
        let active = ActiveRequest::begin(&activity);
        // A slow request: the timer looks every BUSY_LOOK and leaves it alone.
        let waited = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
        assert!(waited.is_err());
        assert!(!activity.take_release());
        drop(active);
        let idled = release_after(&mut io, &activity).await.unwrap();
        assert!(idled >= RELEASE_AFTER && idled <= RELEASE_AFTER + BUSY_LOOK, "{idled:?}");
        // The next request starts: released again RELEASE_AFTER after it, not at the keep-alive
        // deadline the timer was left at.
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(ActiveRequest::begin(&activity));
        let idled = release_after(&mut io, &activity).await.unwrap();
        assert!(idled <= RELEASE_AFTER + BUSY_LOOK, "{idled:?}");
        // Released or not, the keep-alive timeout still counts from the last answer.
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_idles_after_one_quick_request_is_released_within_release_after() {
        let (mut io, _peer, activity) = head_read().await;
        drop(ActiveRequest::begin(&activity));
        let idled = release_after(&mut io, &activity).await.unwrap();
        assert!(idled <= RELEASE_AFTER + Duration::from_millis(20), "{idled:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_a_blocked_write_or_speaking_http2_is_not_released() {
        let (io, _peer, activity) = wrap();
        let mut io = Box::pin(io);
        // The peer stops reading: the last answer is stuck in the writer's buffer.
        let chunk = [0u8; 4096];
        while tokio::time::timeout(Duration::from_millis(1), io.write(&chunk)).await.is_ok() {}
        drop(ActiveRequest::begin(&activity));
        let released = tokio::time::timeout(Duration::from_secs(5), release_after(&mut io, &activity)).await;
        assert!(released.is_err(), "released with a write pending");

        let (mut io, mut peer, activity) = wrap();
        io.set_h2(true);
        let mut io = Box::pin(io);
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(ActiveRequest::begin(&activity));
        // hyper keeps an HTTP/2 connection: it idles until the keep-alive timeout ends it.
        assert_eq!(release_after(&mut io, &activity).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_only_get_the_idle_rule() {
        let (mut io, mut peer, _) = wrap();
        io.set_h2(true);
        let mut io = Box::pin(io);
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), IDLE);
    }
}
