//! One client connection, from its first bytes to its close. Its first bytes choose the protocol
//! (HTTP/2's preface, by prior knowledge or after ALPN chose h2; HTTP/1 otherwise). hyper serves
//! HTTP/1 while requests come; a connection that has idled for
//! [`RELEASE_AFTER`](super::idle::RELEASE_AFTER) lets hyper go (its read buffer, header map,
//! in-flight slot and the connection state itself) and waits for the client's next bytes holding
//! only its socket, as nginx frees a keep-alive connection's request buffers between requests.
//!
//! A busy connection never pays for this: the socket's idle timer, which runs anyway, decides the
//! release, so nothing is done per request. hyper hands the socket back through
//! `UpgradeableConnection::poll_without_shutdown` (a small patch to the vendored hyper, see
//! docs/http.md): upgrades still work, and the socket is not shut down.
//!
//! [`ClientConn`] is written out as a state machine rather than an `async fn` so that an idle
//! connection's task holds exactly its socket, its service and a few handles: an `async fn`
//! keeps room for every argument of every call it awaits.

use super::armed::Armed;
use super::idle::{Activity, Idle, IdleIo};
use super::rewind::{join, Rewind, H2_PREFACE};
use super::streams::{StreamExec, Streams};
use super::{BoxError, ServeCtx};
use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

type Io<I> = TokioIo<Rewind<IdleIo<I>>>;

/// How much a connection waiting without hyper reads at once: a whole request head as most clients
/// send one (nginx reads into 1 KiB first, `client_header_buffer_size`). hyper then parses the head
/// from these bytes at its first read. Had it found only part of a head there, its second read would
/// ask for a full read buffer beyond what it holds, and growing its 8 KiB buffer to 16 KiB copies all
/// 8 KiB: on every request after an idle spell, and every connection's first (docs/performance.md,
/// "A request after an idle spell").
const WAITING_READ: usize = 4096;

/// A client connection being served; resolves when it is closed.
pub(super) struct ClientConn<I, S>
where
    S: HttpService<Incoming>,
{
    ctx: Arc<ServeCtx>,
    activity: Arc<Activity>,
    /// Resolves when the listener stops: HTTP/1 then closes after the current response, HTTP/2
    /// sends GOAWAY, an idle connection closes.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// A copy of `stop`'s receiver, to see whether the listener stopped without polling `stop`
    /// (see [`Armed`]).
    stop_seen: watch::Receiver<bool>,
    stop_armed: Armed,
    stopping: bool,

    peer: SocketAddr,
    state: State<I, S>,
}

enum State<I, S>
where
    S: HttpService<Incoming>,
{
    /// No hyper state: waiting for the client's first bytes (`first`: they choose the protocol),
    /// or for its next request after a release (`idle` counts it in the listener's gauge).
    Waiting {
        io: IdleIo<I>,
        got: Bytes,
        service: S,
        first: bool,
        _idle: Option<Idle>,
    },
    Http1 {
        conn: Box<http1::UpgradeableConnection<Io<I>, S>>,
        releasing: bool,
    },
    Http2 {
        conn: Pin<Box<http2::Connection<Io<I>, S, StreamExec>>>,
        /// Its streams, polled by this task (see `server::streams`).
        streams: Box<Streams>,
    },
    /// Shutting the socket down after the last response, as hyper does when it closes.
    Closing {
        io: IdleIo<I>,
    },
    Done,
}

impl<I, S: HttpService<Incoming>> ClientConn<I, S> {
    pub(super) fn new(
        ctx: Arc<ServeCtx>,
        io: IdleIo<I>,
        activity: Arc<Activity>,
        mut stop: watch::Receiver<bool>,
        peer: SocketAddr,
        service: S,
    ) -> Self {
        let stop_seen = stop.clone();
        let stop = Box::pin(async move {
            let _ = stop.changed().await;
        });
        let state = State::Waiting { io, got: Bytes::new(), service, first: true, _idle: None };
        Self { ctx, activity, stop, stop_seen, stop_armed: Armed::default(), stopping: false, peer, state }
    }
}

impl<I, S, B> ClientConn<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// hyper takes the connection with the bytes read so far.
    fn start(&mut self, mut io: IdleIo<I>, got: Bytes, service: S, first: bool) {
        if first && got.starts_with(H2_PREFACE) {
            io.set_h2(true);
            let streams = Box::<Streams>::default();
            let builder = self.ctx.h2.builder(streams.exec());
            let conn = builder.serve_connection(TokioIo::new(Rewind::new(io, got)), service);
            let mut conn = Box::pin(conn);
            if self.stopping {
                // Its listener stopped while it was choosing HTTP/2: GOAWAY at once.
                conn.as_mut().graceful_shutdown();
            }
            self.state = State::Http2 { conn, streams };
            return;
        }
        // A release asked for while hyper was not running is stale.
        self.activity.take_release();
        // Boxed: allocated while hyper serves, freed while the connection idles without it.
        let conn = self.ctx.h1.serve_connection(TokioIo::new(Rewind::new(io, got)), service).with_upgrades();
        self.state = State::Http1 { conn: Box::new(conn), releasing: false };
    }

    /// Whether `stop` must be polled: it has not yet waited with this waker, or the listener's
    /// signal changed (or its sender went away) since.
    fn stop_needs_poll(&self, cx: &Context<'_>) -> bool {
        !self.stop_armed.holds(cx) || self.stop_seen.has_changed().unwrap_or(true)
    }

    /// The listener stops: a connection with a request in progress finishes it first.
    ///
    /// When a new process takes over, an idle HTTP/1 connection is not closed: a client may be
    /// sending its next request on it at that very moment, and would see the connection close with
    /// no answer. It stays open until that next request, which is answered with `Connection: close`
    /// (or until its keep-alive timeout or the drain ends), so the client moves to the new process
    /// without a failed request.
    fn stop(&mut self) {
        self.stopping = true;
        let idle_http1 = match &self.state {
            State::Waiting { .. } => true,
            State::Http1 { .. } => self.activity.active() == 0,
            _ => false,
        };
        if idle_http1 && super::replaced() {
            // The service adds `Connection: close` to every later response here; hyper then
            // closes after writing it.
            self.activity.close_after_response();
            return;
        }
        match &mut self.state {
            State::Http1 { conn, .. } => Pin::new(&mut **conn).graceful_shutdown(),
            State::Http2 { conn, .. } => conn.as_mut().graceful_shutdown(),
            State::Waiting { .. } => {
                if let State::Waiting { io, .. } = std::mem::replace(&mut self.state, State::Done) {
                    self.state = State::Closing { io };
                }
            }
            State::Closing { .. } | State::Done => {}
        }
    }

    /// hyper's HTTP/1 connection ended without error: after a release, the connection waits for
    /// the client's next bytes; otherwise it closes.
    fn http1_ended(&mut self) {
        let State::Http1 { conn, releasing } = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        // `None`: upgraded; the tunnel owns the socket now.
        let Some(parts) = conn.into_parts() else { return };
        let (io, unread) = parts.io.into_inner().into_parts();
        if self.stopping || !releasing {
            self.state = State::Closing { io };
            return;
        }
        // Anything the client sent beyond the last request (an empty read buffer is dropped here
        // with its capacity).
        let got = join(unread, parts.read_buf);
        if got.is_empty() {
            let idle = Some(Idle::new(&self.activity));
            self.state = State::Waiting { io, got, service: parts.service, first: false, _idle: idle };
        } else {
            self.start(io, got, parts.service, false);
        }
    }

    fn ended(&self, result: Result<(), BoxError>) -> Poll<()> {
        if let Err(e) = result {
            // Client-side connection errors (resets, timeouts, malformed heads) are routine.
            tracing::debug!(client = %self.peer, error = %e, "connection ended with an error");
        }
        Poll::Ready(())
    }
}

impl<I, S, B> Future for ClientConn<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.stopping && this.stop_needs_poll(cx) {
            if this.stop.as_mut().poll(cx).is_ready() {
                this.stop();
            } else {
                this.stop_armed.set(cx);
            }
        }
        loop {
            match &mut this.state {
                State::Http1 { conn, releasing } => match conn.poll_without_shutdown(cx) {
                    Poll::Pending => {
                        // Asked for by the socket's timer while hyper waited for a request head,
                        // so hyper is idle: it closes at once and hands its socket back.
                        if !this.stopping && !*releasing && this.activity.take_release() {
                            *releasing = true;
                            Pin::new(&mut **conn).graceful_shutdown();
                            continue;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => this.http1_ended(),
                    Poll::Ready(Err(e)) => return this.ended(Err(e.into())),
                },
                State::Http2 { conn, streams } => {
                    // The connection first (it reads frames and starts streams), then the streams
                    // it started or woke; again while polling streams started more. What the
                    // streams send is written when the connection is polled next: they wake this
                    // task for it (measured cheaper than polling the connection again at once:
                    // 25.9 against 29.0 µs per request, docs/performance.md).
                    let result = loop {
                        let result = conn.as_mut().poll(cx);
                        if !streams.poll(cx) || result.is_ready() {
                            break result;
                        }
                    };
                    let result = std::task::ready!(result);
                    return this.ended(result.map_err(Into::into));
                }
                State::Waiting { io, got, first, .. } => {
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); WAITING_READ];
                    let mut read = ReadBuf::uninit(&mut buf);
                    match std::task::ready!(Pin::new(io).poll_read(cx, &mut read)) {
                        // The keep-alive and header timeouts end the wait with an error (IdleIo).
                        Err(e) => return this.ended(Err(e.into())),
                        // The client closed the connection.
                        Ok(()) if read.filled().is_empty() => return Poll::Ready(()),
                        Ok(()) => {}
                    }
                    *got = join(std::mem::take(got), Bytes::copy_from_slice(read.filled()));
                    // The first bytes may be the start of HTTP/2's preface: read on until they
                    // are all of it or cannot become it.
                    if *first && got.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(got) {
                        continue;
                    }
                    if let State::Waiting { io, got, service, first, .. } =
                        std::mem::replace(&mut this.state, State::Done)
                    {
                        this.start(io, got, service, first);
                    }
                }
                State::Closing { io } => {
                    let _ = std::task::ready!(Pin::new(io).poll_shutdown(cx));
                    this.state = State::Done;
                    return Poll::Ready(());
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}
