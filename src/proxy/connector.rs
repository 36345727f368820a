//! The upstream connector: hyper-util's `HttpConnector` (DNS, connect timeout, `TCP_NODELAY`),
//! wrapped so every open upstream connection is counted in `lb_upstream_connections{addr}` from
//! connect until its socket is closed (the label is the configured `host:port`, a bounded set), and
//! so a server's `max_connections` is never exceeded: each connection holds a [`Slot`] of its
//! address's limit, and a new connection waits (up to the connect timeout) for a free one.
//! The request path usually never waits here: a server whose in-flight count reached its limit is
//! not ready for the strategies. The wait covers hyper's pool opening a connection while an idle
//! one is about to come back.
//!
//! Every connection also carries a [`Discard`] handle, which hyper-util copies into the extensions of
//! each response it reads on that connection: the proxy uses it to close a connection whose response
//! it refused (ambiguous framing), so that the pool never hands that connection out again.

use crate::slots::{Slot, Slots};
use crate::tls::ClientTls;
use arc_swap::ArcSwap;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per upstream address (`host:port` as configured), swapped with each snapshot: connection limits,
/// and how to open TLS for `https` requests.
#[derive(Debug, Default)]
pub struct ConnLimits {
    by_addr: ArcSwap<HashMap<String, Arc<Slots>>>,
    tls: ArcSwap<HashMap<String, Arc<ClientTls>>>,
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
        let tls = snap
            .pools
            .iter()
            .flat_map(|p| p.upstreams.iter())
            .filter_map(|u| u.tls.as_ref().map(|t| (u.addr.clone(), Arc::clone(t))))
            .collect();
        self.tls.store(Arc::new(tls));
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

    fn get(&self, addr: &str) -> Option<Arc<Slots>> {
        self.by_addr.load().get(addr).map(Arc::clone)
    }

    fn tls(&self, addr: &str) -> Option<Arc<ClientTls>> {
        self.tls.load().get(addr).map(Arc::clone)
    }
}

/// The server stayed at its connection limit for the whole connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("server at its connection limit (max_connections) for {0:?}")]
pub struct AtConnectionLimit(pub Duration);

/// `HttpConnector` plus connection counting and limits.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    limits: Arc<ConnLimits>,
    wait: Duration,
}

impl CountingConnector {
    /// Wraps a configured `HttpConnector`; a connection to an address at its limit waits up to `wait`.
    pub fn new(inner: HttpConnector, limits: Arc<ConnLimits>, wait: Duration) -> Self {
        Self { inner, limits, wait }
    }
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
    _slot: Option<Slot>,
    discard: Discard,
}

/// Closes one upstream connection from outside hyper: once [`Discard::close`] is called, the
/// connection's next read or write fails, and its waiting read is woken to find out, so hyper drops it
/// (and the pool with it) even while it sits idle.
#[derive(Debug, Clone, Default)]
pub struct Discard(Arc<DiscardState>);

#[derive(Debug, Default)]
struct DiscardState {
    closed: std::sync::atomic::AtomicBool,
    reader: futures_util::task::AtomicWaker,
}

impl Discard {
    /// Closes the connection this handle came with.
    pub fn close(&self) {
        self.0.closed.store(true, std::sync::atomic::Ordering::Release);
        self.0.reader.wake();
    }

    fn check(&self) -> io::Result<()> {
        if self.0.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "upstream connection discarded by lb",
            ));
        }
        Ok(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl tower::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let addr = uri.authority().map_or_else(String::new, |a| a.as_str().to_owned());
        let limit = self.limits.get(&addr);
        let tls = (uri.scheme() == Some(&http::uri::Scheme::HTTPS)).then(|| self.limits.tls(&addr));
        let wait = self.wait;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let slot = match limit {
                Some(limit) => match tokio::time::timeout(wait, limit.acquire()).await {
                    Ok(slot) => Some(slot),
                    Err(_) => return Err(AtConnectionLimit(wait).into()),
                },
                None => None,
            };
            let tcp = inner.call(uri).await?;
            let io = match tls {
                None => Stream::Plain(tcp),
                Some(None) => return Err(format!("no TLS settings for {addr}").into()),
                Some(Some(tls)) => {
                    // The handshake counts against the connect timeout.
                    let handshake = tokio::time::timeout(wait, tls.connect(tcp.into_inner(), false)).await;
                    let stream = handshake
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                    Stream::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            let open = metrics::gauge!(crate::metrics::UPSTREAM_CONNECTIONS, "addr" => addr);
            open.increment(1.0);
            Ok(Counted { io, open, _slot: slot, discard: Discard::default() })
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Stream::Plain(io) => io.connected(),
            Stream::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                // ALPN chose HTTP/2: the pooled client speaks h2 on this connection.
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        };
        connected.extra(self.discard.clone())
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
        self.discard.0.reader.register(cx.waker());
        self.discard.check()?;
        each!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.discard.check()?;
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
        self.discard.check()?;
        each!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}
