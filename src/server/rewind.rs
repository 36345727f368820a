//! Bytes read from a client before the protocol that serves them was chosen (or while the
//! connection waited without hyper) are put back in front of the socket for hyper to read again.

use bytes::{Buf, Bytes, BytesMut};
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pin_project! {
    /// A socket whose reads return `pre` first.
    #[derive(Debug)]
    pub struct Rewind<T> {
        pre: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    pub(super) fn new(inner: T, pre: Bytes) -> Self {
        Self { pre, inner }
    }

    /// The socket and the bytes put back that no read has taken yet.
    pub(super) fn into_parts(self) -> (T, Bytes) {
        (self.inner, self.pre)
    }
}

/// `a` then `b`, copying only when both hold bytes.
pub(super) fn join(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => {
            let mut joined = BytesMut::with_capacity(a.len() + b.len());
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            joined.freeze()
        }
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            if this.pre.is_empty() {
                // Let go of the allocation as soon as it is read.
                *this.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn put_back_bytes_come_first_then_the_socket() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b" world").await.unwrap();
        drop(theirs);
        let mut io = Rewind::new(ours, Bytes::from_static(b"hello"));
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
