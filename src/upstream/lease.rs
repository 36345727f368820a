//! Sending a request upstream on a connection the request itself drives.
//!
//! hyper's `client::conn` splits a connection into a `SendRequest` handle and a `Connection` future
//! that does the I/O. hyper-util's pooled client runs each `Connection` in a task of its own, so every
//! request, response head and body chunk crosses between two tasks over channels, and returning a
//! connection to its pool takes one more spawned task. Here the request's own task polls the
//! `Connection` while it waits for the response head, and the response body polls it while the body
//! is read; when the body ends, the connection goes back to its server's idle stack. hyper still
//! writes and parses every byte.
//!
//! Under many concurrent requests from HTTP/1 clients a connection runs in a task of its own instead
//! ([`ConnSettings`]'s `apart`, from `limits.upstream_tasks_above`). Driven by the request's task,
//! hyper's channels wake the task that is already running, and tokio queues such a task again at the
//! back of its worker's run queue: with more runnable tasks than that queue holds (256), the overflow
//! goes to a global queue that a busy worker serves rarely, and some clients wait hundreds of
//! milliseconds while others are served at once. A wake-up from another task goes to the worker's
//! next slot instead, and the order stays fair. Below the threshold the request's own task is
//! cheaper: fewer task switches, and fewer wake-ups of the processes on the other side. An HTTP/2
//! client's streams keep it at any load: they share their connection's task, which then moves many
//! responses per wake-up (docs/performance.md, "Fair service at 1,024 connections").
//!
//! A connection is reused only when hyper says it is ready for another request after a complete
//! exchange: never after `Connection: close`, an HTTP/1.0 response, a framing error, a response that
//! came while the request body was still being sent, or a response body the client stopped reading.
//! HTTP/2 connections are multiplexed: each server's is shared and runs in a task of its own.

use super::connect::{self, ConnLimits, ConnectError, Counted};
use super::conns::tls_identity;
use super::{Upstream, UpstreamStats};
use crate::proxy::body::RequestBody;
use http::request::Parts;
use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

/// An idle or leased HTTP/1.1 connection: hyper's handle and the future that drives it.
pub struct H1 {
    send: http1::SendRequest<RequestBody>,
    /// `None` once it runs in a task of its own (see the module's notes).
    conn: Option<http1::Connection<Counted, RequestBody>>,
    /// The `Connection` future finished (closed, or failed): it must not be polled again.
    done: bool,
    /// The TLS settings it was opened under.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1").field("done", &self.done).finish_non_exhaustive()
    }
}

impl H1 {
    /// The TLS settings it was opened under.
    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// Runs the connection's I/O as far as it can go now.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = self.conn.as_mut() else { return };
        if !self.done && Pin::new(conn).poll(cx).is_ready() {
            // Closed (keep-alive off, peer closed) or failed; either way hyper has told the
            // request or body waiting on it, if any.
            self.done = true;
        }
    }

    /// Whether it runs in a task of its own (then it cannot be parked).
    pub fn apart(&self) -> bool {
        self.conn.is_none()
    }

    /// From now on, runs in a task of its own, which also completes protocol upgrades.
    fn set_apart(&mut self) {
        if let Some(conn) = self.conn.take() {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        }
    }

    /// Whether hyper has asked for another request, without polling the connection.
    fn ready(&self) -> bool {
        !self.done && self.send.is_ready()
    }

    /// Whether another request may be sent on it now. Polls it once without waiting, so a peer that
    /// closed the connection or wrote on it while it idled is found here (hyper's idle read sees the
    /// end of file or the unexpected bytes and closes).
    pub fn usable(&mut self) -> bool {
        // Usually hyper already waits for a request and its last read found the socket empty. If the
        // socket has had no event since, polling hyper would find nothing to do: skipped, it was
        // most of a check-out's cost (docs/performance.md, "Check-out without polling hyper").
        if self.ready() && self.conn.as_ref().is_some_and(|c| c.get_ref().quiet()) {
            return true;
        }
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.ready()
    }

    /// Lets hyper's state go (its read buffer, request channel and connection state) and keeps the
    /// socket, for a connection that idles on: `None` if it is not reusable as it is (closed,
    /// failed, or bytes arrived while it idled), or runs in a task of its own.
    pub fn park(mut self: Box<Self>) -> Option<Parked> {
        if !self.usable() {
            return None;
        }
        let H1 { send, conn, tls, .. } = *self;
        let conn = conn?;
        drop(send);
        let parts = conn.into_parts();
        parts.read_buf.is_empty().then_some(Parked { io: parts.io, tls })
    }
}

/// An idle HTTP/1.1 connection without hyper's state: its socket and the TLS settings it was opened
/// under. [`Parked::resume`] gives it hyper again.
#[derive(Debug)]
pub struct Parked {
    io: Counted,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Parked {
    /// The TLS settings it was opened under.
    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    /// Whether its peer neither closed it nor wrote on it while it was parked: one read without
    /// waiting tells (nothing to read is the only good answer).
    pub fn alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut byte);
        hyper::rt::Read::poll_read(Pin::new(&mut self.io), &mut cx, buf.unfilled()).is_pending()
    }

    /// A connection again, if it is still [`alive`](Self::alive).
    pub fn resume(mut self) -> Option<Box<H1>> {
        if !self.alive() {
            return None;
        }
        // No I/O happens in an HTTP/1 handshake: it is ready at its first poll.
        let mut cx = Context::from_waker(Waker::noop());
        let handshake = pin!(http1::Builder::new().handshake(self.io));
        match handshake.poll(&mut cx) {
            std::task::Poll::Ready(Ok((send, conn))) => {
                Some(Box::new(H1 { send, conn: Some(conn), done: false, tls: self.tls }))
            }
            _ => None,
        }
    }
}

/// Settings for one request's upstream connection, from the snapshot it runs on.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// `timeouts.connect`.
    pub connect: Duration,
    /// `timeouts.upstream_idle`.
    pub idle: Duration,
    /// `limits.upstream_idle_per_server`.
    pub idle_per_server: usize,
    /// An HTTP/1.1 connection taken for this request runs in a task of its own (the pool is above
    /// `limits.upstream_tasks_above`; see the module's notes).
    pub apart: bool,
}

/// A connection in use by one response, returned to its server's idle stack when the response body
/// is over (see [`Lease::finish`]) and closed if dropped before.
pub struct Lease {
    conn: Box<H1>,
    home: Arc<UpstreamStats>,
    cap: usize,
    reusable: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("reusable", &self.reusable).finish_non_exhaustive()
    }
}

impl Lease {
    /// Drives the connection: the response body is fed only while someone polls it.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        self.conn.drive(cx);
    }

    /// The connection must not carry another request (the request body was not all sent).
    pub fn forbid_reuse(&mut self) {
        self.reusable = false;
    }

    /// The response body ended: the connection goes back to its server's idle stack if hyper is
    /// ready to send another request on it, and is closed otherwise. Usually hyper already stands
    /// ready (the poll that read the body's end went on to wait for the next request), and then it
    /// is not driven again here: that would only look for a peer that closed, which the check-out
    /// does before any reuse.
    pub fn finish(mut self) {
        if self.reusable && (self.conn.ready() || self.conn.usable()) {
            self.home.conns.checkin(self.conn, self.cap);
        }
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(ConnectError),
    /// The connection failed before a response head.
    Http {
        /// What hyper saw.
        error: hyper::Error,
        /// The request, when hyper gave it back without writing any of it.
        unsent: Option<Box<Request<RequestBody>>>,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => e.fmt(f),
            Self::Http { error, .. } => {
                // hyper's own message is terse ("connection closed before message completed"); the
                // I/O error under it says why.
                write!(f, "{error}")?;
                let mut cause = std::error::Error::source(error);
                while let Some(e) = cause {
                    write!(f, ": {e}")?;
                    cause = e.source();
                }
                Ok(())
            }
        }
    }
}

/// A new connection: HTTP/1.1, or HTTP/2 when TLS negotiated it (its driver already spawned).
enum Opened {
    H1(Box<H1>),
    H2(http2::SendRequest<RequestBody>),
}

/// A connection to send on: an idle one, or a new one.
enum Taken {
    Idle(Box<H1>),
    New(Opened),
}

/// An idle connection of `upstream`, else a new one. At the server's connection limit, waits (up to
/// the connect timeout) for whichever comes first: a free slot, or a connection checked in idle.
async fn take(limits: &ConnLimits, upstream: &Upstream, settings: ConnSettings) -> Result<Taken, SendError> {
    let conns = &upstream.stats.conns;
    if let Some(conn) = conns.checkout(upstream.tls.as_ref(), settings.idle) {
        return Ok(Taken::Idle(conn));
    }
    let slot = match limits.get(&upstream.addr) {
        None => None,
        Some(limit) => match limit.try_acquire() {
            Some(slot) => Some(slot),
            None => match Box::pin(at_limit(&limit, upstream, settings)).await? {
                Ok(slot) => Some(slot),
                Err(idle) => return Ok(Taken::Idle(idle)),
            },
        },
    };
    // Boxed here and below: opening (TCP, TLS, HTTP/2 handshake) is the rare path, and its state would
    // otherwise make every request's future kilobytes larger.
    Box::pin(open(upstream, slot, settings.connect)).await.map(Taken::New)
}

/// Waits at the server's connection limit (up to the connect timeout) for whichever comes first: a
/// free slot, or a connection checked in idle.
async fn at_limit(
    limit: &Arc<crate::slots::Slots>,
    upstream: &Upstream,
    settings: ConnSettings,
) -> Result<Result<crate::slots::Slot, Box<H1>>, SendError> {
    let conns = &upstream.stats.conns;
    let wait = conns.wait();
    let deadline = tokio::time::Instant::now() + settings.connect;
    loop {
        let returned = wait.returned();
        tokio::select! {
            slot = limit.acquire() => return Ok(Ok(slot)),
            () = returned => {
                if let Some(conn) = conns.checkout(upstream.tls.as_ref(), settings.idle) {
                    return Ok(Err(conn));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(SendError::Connect(ConnectError::AtLimit(settings.connect)));
            }
        }
    }
}

async fn open(
    upstream: &Upstream,
    slot: Option<crate::slots::Slot>,
    wait: Duration,
) -> Result<Opened, SendError> {
    let io = connect::open(upstream, slot, wait).await.map_err(SendError::Connect)?;
    let tls = tls_identity(upstream.tls.as_ref());
    let handshake = |error| SendError::Http { error, unsent: None };
    if io.is_h2() {
        let (send, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(io)
            .await
            .map_err(handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        upstream.stats.conns.share_h2(send.clone(), tls);
        return Ok(Opened::H2(send));
    }
    // No I/O happens in an HTTP/1 handshake.
    let (send, conn) = http1::Builder::new().handshake(io).await.map_err(handshake)?;
    Ok(Opened::H1(Box::new(H1 { send, conn: Some(conn), done: false, tls })))
}

/// Sends the request (`head` and `body`) to `upstream` and returns the response head, with the lease
/// of its connection when the body must drive it. `upgrade`: the request asks to switch protocols, so
/// its connection is handed to a task of its own that completes the upgrade and is never reused.
///
/// A request that fails on a reused connection before hyper wrote any of it is sent once more on a new
/// connection (the server closed an idle connection just as it was taken); hyper gives it back, and
/// its head is put back in `head`.
///
/// The head is borrowed from the request's outermost future and taken out only into hyper's own
/// future: each future between them would otherwise keep a slot of its size (224 bytes, 272 with the
/// body) for a value it has handed on, and the request's future is copied whole into hyper's slot
/// for it (docs/performance.md, "The request head in one place").
///
/// Not an `async fn`: those keep each argument twice in their state.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn` (above)
pub fn send<'a>(
    limits: &'a ConnLimits,
    upstream: &'a Upstream,
    settings: ConnSettings,
    head: &'a mut Parts,
    mut body: RequestBody,
    upgrade: bool,
) -> impl Future<Output = Result<(Response<Incoming>, Option<Lease>), SendError>> + Send + 'a {
    async move {
        if let Some(h2) = upstream.stats.conns.shared_h2(upstream.tls.as_ref()) {
            return Box::pin(send_h2(h2, upstream, Request::from_parts(take_head(head), body))).await;
        }
        let mut fresh_only = false;
        loop {
            let taken = if fresh_only {
                let slot = match limits.get(&upstream.addr) {
                    Some(limit) => Some(
                        tokio::time::timeout(settings.connect, limit.acquire())
                            .await
                            .map_err(|_| SendError::Connect(ConnectError::AtLimit(settings.connect)))?,
                    ),
                    None => None,
                };
                Taken::New(Box::pin(open(upstream, slot, settings.connect)).await?)
            } else {
                take(limits, upstream, settings).await?
            };
            let (conn, was_reused) = match taken {
                Taken::Idle(conn) => (conn, true),
                Taken::New(Opened::H1(conn)) => (conn, false),
                Taken::New(Opened::H2(h2)) => {
                    return Box::pin(send_h2(h2, upstream, Request::from_parts(take_head(head), body))).await
                }
            };
            if !head.headers.contains_key(header::HOST) {
                head.headers.insert(header::HOST, header_value(&upstream.authority));
            }
            // The rare kinds are boxed, so they do not enlarge every request's future.
            let result = if upgrade {
                Box::pin(send_upgrade(conn, Request::from_parts(take_head(head), body))).await
            } else {
                send_h1(conn, head, body, upstream, settings).await
            };
            match result {
                Err(SendError::Http { error, unsent: Some(back) }) if was_reused => {
                    tracing::debug!(error = %error, "idle upstream connection closed as it was taken; sending on a new one");
                    let (back_head, back_body) = back.into_parts();
                    (*head, body) = (back_head, back_body);
                    fresh_only = true;
                }
                other => return other,
            }
        }
    }
}

fn header_value(authority: &http::uri::Authority) -> http::HeaderValue {
    http::HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// The request head taken out of `head` (an empty one left in its place), for hyper to own.
fn take_head(head: &mut Parts) -> Parts {
    std::mem::replace(head, Request::new(()).into_parts().0)
}

/// Sends on an HTTP/1.1 connection this task drives until the response head (or that runs in a task
/// of its own).
async fn send_h1(
    mut conn: Box<H1>,
    head: &mut Parts,
    body: RequestBody,
    upstream: &Upstream,
    settings: ConnSettings,
) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
    if settings.apart {
        conn.set_apart();
    }
    // The request is built in the call: a named local would keep a slot of its size in this future.
    let mut response = pin!(conn.send.try_send_request(Request::from_parts(take_head(head), body)));
    let result = poll_fn(|cx| {
        conn.drive(cx);
        // Polled right after the connection, which is all that can complete it: hyper's wake-up
        // of this same task would only cost another poll.
        response.as_mut().poll(cx)
    })
    .await;
    match result {
        Ok(resp) => {
            let lease = Lease {
                conn,
                home: Arc::clone(&upstream.stats),
                cap: settings.idle_per_server,
                reusable: true,
            };
            Ok((resp, Some(lease)))
        }
        Err(mut e) => {
            let unsent = e.take_message().map(Box::new);
            Err(SendError::Http { error: e.into_error(), unsent })
        }
    }
}

/// Sends a protocol upgrade: the connection runs in its own task, which hands the socket over once
/// the server switched protocols.
async fn send_upgrade(
    mut conn: Box<H1>,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
    conn.set_apart();
    let H1 { mut send, .. } = *conn;
    match send.try_send_request(req).await {
        Ok(resp) => Ok((resp, None)),
        Err(mut e) => {
            let unsent = e.take_message().map(Box::new);
            Err(SendError::Http { error: e.into_error(), unsent })
        }
    }
}

/// Sends on the server's shared HTTP/2 connection (absolute target: hyper takes `:scheme` and
/// `:authority` from it).
async fn send_h2(
    mut h2: http2::SendRequest<RequestBody>,
    upstream: &Upstream,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
    let path =
        req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTPS)
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build();
    if let Ok(uri) = uri {
        *req.uri_mut() = uri;
    }
    match h2.try_send_request(req).await {
        Ok(resp) => Ok((resp, None)),
        Err(mut e) => {
            let unsent = e.take_message().map(Box::new);
            Err(SendError::Http { error: e.into_error(), unsent })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The race `send` retries: the server closes an idle connection just as a request takes it, so
    /// hyper hands the request back unwritten. The request then goes whole (its head was taken out
    /// for hyper and must be put back) on a new connection.
    #[tokio::test]
    async fn a_request_handed_back_unsent_goes_whole_on_a_new_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_first, closing) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // The first connection idles until told, then closes without a word.
            let (first, _) = listener.accept().await.unwrap();
            closing.await.unwrap();
            drop(first);
            closed_tx.send(()).unwrap();
            // The second answers one request, and says what it got.
            let (mut second, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = second.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before a whole head: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            second.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            String::from_utf8(got).unwrap()
        });

        let toml = format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{{ name = \"a\", addr = \"{addr}\" }}]\n"
        );
        let runtime = crate::runtime::Runtime::new(crate::config::Config::from_toml(&toml).unwrap());
        let snap = runtime.snapshot();
        let upstream = &snap.pools[0].upstreams[0];

        // An idle connection whose driver runs apart and has not yet seen the close.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (handle, conn) =
            http1::Builder::new().handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        let mut conn = Box::pin(conn);
        // One poll: hyper now asks for a request (and finds nothing to read yet).
        assert!(futures_poll_once(conn.as_mut()).is_pending());
        close_first.send(()).unwrap();
        closed.await.unwrap();
        let idle = Box::new(H1 { send: handle, conn: None, done: false, tls: None });
        assert!(idle.ready(), "hyper still asks for a request: the close is not seen yet");
        upstream.stats.conns.checkin(idle, 8);
        // Runs once this task waits for the answer: it reads the close and hands the request back.
        tokio::spawn(async move {
            let _ = conn.await;
        });

        let (mut head, body) = Request::get("http://example.com/asked?q=1")
            .header("x-kept", "yes")
            .body(RequestBody::empty())
            .unwrap()
            .into_parts();
        head.uri = "/asked?q=1".parse().unwrap();
        let settings = ConnSettings {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            idle_per_server: 8,
            apart: true,
        };
        let (resp, _lease) =
            super::send(runtime.conn_limits(), upstream, settings, &mut head, body, false).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let seen = server.await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("get /asked?q=1 http/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-kept: yes\r\n"), "{seen}");
        assert!(seen.contains(&format!("\r\nhost: {addr}\r\n")), "{seen}");
    }

    /// Polls `fut` once, with a waker that does nothing.
    fn futures_poll_once<F: Future>(fut: Pin<&mut F>) -> std::task::Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }
}
