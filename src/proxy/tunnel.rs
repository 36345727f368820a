//! Upgraded connections (WebSocket): raw bytes relayed both ways until both sides close, one side
//! fails, or nothing moves in either direction for the idle timeout.

use crate::server::ActiveRequest;
use crate::upstream::InFlight;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Relay buffer per direction. Bounded: a tunnel costs at most two of these.
const BUF: usize = 16 * 1024;

/// Once both sides have switched protocols, relays between them in a task of its own. The upstream
/// stays counted as in flight, and the client connection as busy (so its header and keep-alive
/// timers stay off), for the tunnel's whole life.
pub fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guards: (InFlight, Option<ActiveRequest>),
    idle: Duration,
    who: String,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %who, error = %e, "upgrade did not complete");
                return;
            }
        };
        let result = relay(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        match result {
            Ok((up, down)) => tracing::debug!(upstream = %who, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(upstream = %who, error = %e, "tunnel ended"),
        }
        drop(guards);
    });
}

/// Copies `a -> b` and `b -> a`. When one side finishes sending, the other's write half is shut down
/// and the remaining direction continues (a WebSocket close handshake needs it). Returns the bytes
/// moved each way.
pub async fn relay<A, B>(a: A, b: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let (mut a_buf, mut b_buf) = (vec![0u8; BUF], vec![0u8; BUF]);
    let (mut a_open, mut b_open) = (true, true);
    let (mut a_to_b, mut b_to_a) = (0u64, 0u64);
    while a_open || b_open {
        tokio::select! {
            n = a_read.read(&mut a_buf), if a_open => match n? {
                0 => { a_open = false; b_write.shutdown().await.ok(); }
                n => { write_within(&mut b_write, &a_buf[..n], idle).await?; a_to_b += n as u64; }
            },
            n = b_read.read(&mut b_buf), if b_open => match n? {
                0 => { b_open = false; a_write.shutdown().await.ok(); }
                n => { write_within(&mut a_write, &b_buf[..n], idle).await?; b_to_a += n as u64; }
            },
            () = tokio::time::sleep(idle) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle timeout"));
            }
        }
    }
    Ok((a_to_b, b_to_a))
}

/// A write the other side does not drain within the idle timeout ends the tunnel too: otherwise a
/// peer that stops reading would hold it open forever.
async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], idle: Duration) -> io::Result<()> {
    match tokio::time::timeout(idle, w.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel peer stopped reading")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(5)));
        client_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        client_peer.shutdown().await.unwrap();
        // The upstream sees EOF, may still answer, then closes.
        assert_eq!(upstream_peer.read(&mut buf).await.unwrap(), 0);
        upstream_peer.write_all(b"bye!").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"bye!");
        drop(upstream_peer);
        assert_eq!(task.await.unwrap().unwrap(), (4, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_ends_the_tunnel() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(30)));
        // The upstream never reads: its 64-byte buffer fills and the relay's write blocks.
        let _ = tokio::time::timeout(Duration::from_secs(1), client_peer.write_all(&[0u8; 4096])).await;
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_are_closed() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let err = relay(client, upstream, Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
