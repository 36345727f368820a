//! Opening upstream connections: TCP (`TCP_NODELAY`, within the connect timeout), TLS over it for
//! servers of a TLS pool, each connection counted in `lb_upstream_connections{addr}` from connect
//! until its socket is closed (the label is the configured `host:port`, a bounded set), and a
//! server's `max_connections` never exceeded: each connection holds a [`Slot`] of its address's
//! limit, and a new connection waits (up to the connect timeout) for a free one.
//!
//! The request path usually never waits for a slot: a server whose in-flight count reached its
//! limit is not ready for the strategies. The wait (see `lease`) covers a connection that is about
//! to come back idle.

use super::Upstream;
use crate::slots::{Slot, Slots};
use arc_swap::ArcSwap;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connection limits per upstream address (`host:port` as configured), swapped with each snapshot.
#[derive(Debug, Default)]
pub struct ConnLimits {
    by_addr: ArcSwap<HashMap<String, Arc<Slots>>>,
}

impl ConnLimits {
    /// Takes the limits of `snap`'s servers; an address keeps its semaphore (and so its count of
    /// open connections) across reloads, resized if its limit changed. Servers sharing an address
    /// share the smallest limit.
    pub fn update(&self, snap: &crate::runtime::Snapshot) {
        let old = self.by_addr.load();
        let mut wanted: HashMap<String, usize> = HashMap::new();
        // From the config's own list, each server with its own address: never by position in the
        // snapshot, which may leave out a server it could not build.
        for config in &snap.config.pools {
            for server in &config.servers {
                if let Some(limit) = server.max_connections.or(config.limits.max_connections) {
                    let entry = wanted.entry(server.addr.clone()).or_insert(limit);
                    *entry = (*entry).min(limit);
                }
            }
        }
        let next = wanted
            .into_iter()
            .map(|(addr, limit)| {
                let entry = match old.get(&addr) {
                    Some(existing) => {
                        existing.resize(limit);
                        Arc::clone(existing)
                    }
                    None => Slots::new(limit),
                };
                (addr, entry)
            })
            .collect();
        self.by_addr.store(Arc::new(next));
    }

    /// The connection limit of the server at `addr`, if it has one.
    pub fn get(&self, addr: &str) -> Option<Arc<Slots>> {
        self.by_addr.load().get(addr).map(Arc::clone)
    }
}

/// Why no connection could be opened. Nothing was sent to the server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server stayed at its connection limit for the whole connect timeout.
    #[error("server at its connection limit (max_connections) for {0:?}")]
    AtLimit(Duration),
    /// TCP connect or TLS handshake took longer than the connect timeout.
    #[error("{0} timed out after {1:?}")]
    TimedOut(&'static str, Duration),
    /// Refused, unreachable, unresolvable, or a failed TLS handshake.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Opens a connection to `upstream`, holding `slot` of its connection limit (if it has one) for
/// the connection's life. The TCP connect and the TLS handshake each have `wait` (the connect
/// timeout).
pub async fn open(upstream: &Upstream, slot: Option<Slot>, wait: Duration) -> Result<Counted, ConnectError> {
    // Resolves the name too (getaddrinfo on the blocking pool) and tries each address in turn.
    let tcp = tokio::time::timeout(wait, TcpStream::connect(upstream.addr.as_str()))
        .await
        .map_err(|_| ConnectError::TimedOut("connect", wait))??;
    tcp.set_nodelay(true)?;
    let (io, h2) = match &upstream.tls {
        None => (Stream::Plain(TokioIo::new(tcp)), false),
        Some(tls) => {
            let stream = tokio::time::timeout(wait, tls.connect(tcp, false))
                .await
                .map_err(|_| ConnectError::TimedOut("TLS handshake", wait))??;
            // ALPN chose HTTP/2 (only offered when the pool sets `http2`).
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            (Stream::Tls(Box::new(TokioIo::new(stream))), h2)
        }
    };
    let open = metrics::gauge!(crate::metrics::UPSTREAM_CONNECTIONS, "addr" => upstream.addr.clone());
    open.increment(1.0);
    Ok(Counted { io, open, h2, _slot: slot })
}

/// An upstream connection: plain TCP, or TLS over it.
#[derive(Debug)]
enum Stream {
    Plain(TokioIo<TcpStream>),
    // Boxed: a TLS session is a kilobyte of state, a plain socket a few words.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// An upstream socket that decrements its gauge (and frees its limit slot) when closed.
#[derive(Debug)]
pub struct Counted {
    io: Stream,
    open: metrics::Gauge,
    h2: bool,
    _slot: Option<Slot>,
}

impl Counted {
    /// Whether TLS negotiated HTTP/2 on this connection.
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// Whether the socket is known to have had no event (no data, no close) since a read last found
    /// it empty: then nothing has happened on the connection that hyper has not seen. Looks at the
    /// runtime's readiness flags, with no system call. Only plain TCP can tell; a TLS session may
    /// hold records of its own, so it always answers no.
    pub fn quiet(&self) -> bool {
        let Stream::Plain(tcp) = &self.io else { return false };
        // Out of budget, the readiness check answers "not ready" whatever the socket's state.
        tokio::task::coop::has_budget_remaining()
            && tcp.inner().poll_read_ready(&mut Context::from_waker(std::task::Waker::noop())).is_pending()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Forwards one I/O call to whichever stream the connection is.
macro_rules! each {
    ($self:expr, $io:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            Stream::Plain(plain) => {
                let $io = plain;
                $call
            }
            Stream::Tls(tls) => {
                let $io = &mut **tls;
                $call
            }
        }
    };
}

impl Read for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}
