//! The upstream connector: hyper-util's `HttpConnector` (DNS, connect timeout, `TCP_NODELAY`),
//! wrapped so every open upstream connection is counted in `lb_upstream_connections{addr}` from
//! connect until its socket is closed. The label is the configured `host:port`, a bounded set.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// `HttpConnector` plus connection counting.
#[derive(Debug, Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
}

impl CountingConnector {
    /// Wraps a configured `HttpConnector`.
    pub fn new(inner: HttpConnector) -> Self {
        Self { inner }
    }
}

/// An upstream socket that decrements its gauge when closed.
#[derive(Debug)]
pub struct Counted {
    io: TokioIo<TcpStream>,
    open: metrics::Gauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl tower::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let addr = uri.authority().map_or_else(String::new, |a| a.as_str().to_owned());
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let open = metrics::gauge!(crate::metrics::UPSTREAM_CONNECTIONS, "addr" => addr);
            open.increment(1.0);
            Ok(Counted { io, open })
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
