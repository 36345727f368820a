//! The PROXY protocol (v1 text and v2 binary, as HAProxy defines them) on a listener behind an L4
//! balancer: the first bytes of a connection name the real client. `ppp` parses the header; this
//! file only reads it off the socket, without taking a byte of what follows (TLS or HTTP), so the
//! connection is then served exactly as one without the header.

use ppp::{HeaderResult, PartialResult};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header taken: a v1 header is at most 107 bytes; a v2 header is 16 bytes and its
/// addresses and TLVs (HAProxy's, with TLS details, stay well below this).
const MAX_HEADER: usize = 1024;

/// Why a connection's PROXY header was refused; the connection is then closed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer is not among the listener's `proxy_protocol_from` ranges.
    #[error("peer is not a trusted PROXY protocol source")]
    Untrusted,
    /// Nothing complete arrived within the header timeout.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The bytes are not a PROXY header (or one longer than lb takes).
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// The peer closed or reset the connection first.
    #[error("connection closed before the PROXY header: {0}")]
    Io(std::io::Error),
}

impl HeaderError {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Timeout(_) => "timeout",
            Self::Invalid(_) => "invalid",
            Self::Io(_) => "closed",
        }
    }
}

/// Reads the PROXY header at the start of `stream` within `limit`, and answers the client's address:
/// the header's source, or `peer` itself for a header that names none (v2 `LOCAL`, as a balancer's
/// own health checks send, and v1 `UNKNOWN`).
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Result<SocketAddr, HeaderError> {
    match tokio::time::timeout(limit, read(stream, peer)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Timeout(limit)),
    }
}

async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, HeaderError> {
    // Bytes already taken off the socket: all of them belong to the header (see below).
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = vec![0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER - taken.len();
        if room == 0 {
            return Err(HeaderError::Invalid(format!("longer than {MAX_HEADER} bytes")));
        }
        let n = stream.peek(&mut peeked[..room]).await.map_err(HeaderError::Io)?;
        if n == 0 {
            return Err(HeaderError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut seen = taken.clone();
        seen.extend_from_slice(&peeked[..n]);
        let parsed = HeaderResult::parse(&seen);
        // A v1 header ends at its line end: a line that does not parse whole is wrong, not short.
        let v1_line_ended = seen.starts_with(b"PROXY ") && seen.windows(2).any(|w| w == b"\r\n");
        if parsed.is_incomplete() && v1_line_ended {
            return Err(HeaderError::Invalid(format!("{parsed:?}")));
        }
        if parsed.is_incomplete() {
            // The header goes on past every byte seen, so they are all header: take them, and the
            // next peek waits for more instead of returning the same bytes again.
            let mut chunk = vec![0u8; n];
            stream.read_exact(&mut chunk).await.map_err(HeaderError::Io)?;
            taken.extend_from_slice(&chunk);
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
            HeaderResult::V1(Err(e)) => return Err(HeaderError::Invalid(format!("{e:?}"))),
            HeaderResult::V2(Err(e)) => return Err(HeaderError::Invalid(format!("{e:?}"))),
        };
        // Take exactly the rest of the header; what follows stays for TLS or HTTP.
        let mut rest = vec![0u8; len.saturating_sub(taken.len())];
        stream.read_exact(&mut rest).await.map_err(HeaderError::Io)?;
        return Ok(source.unwrap_or(peer));
    }
}

fn v1_source(addresses: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &ppp::v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == ppp::v2::Command::Local {
        return None;
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `chunks` (each flushed on its own) and answers what lb reads, with what follows.
    async fn exchange(chunks: Vec<Vec<u8>>) -> (Result<SocketAddr, HeaderError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for c in chunks {
                s.write_all(&c).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // Closed once written: a short header then reads as the connection's end.
            drop(s);
        });
        let (mut stream, peer) = listener.accept().await.unwrap();
        let result = read_header(&mut stream, peer, Duration::from_secs(5)).await;
        sender.await.unwrap();
        let mut rest = Vec::new();
        if result.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        (result, rest)
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request() {
        let (addr, rest) =
            exchange(vec![b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 80\r\nGET / HTTP/1.1\r\n\r\n".to_vec()])
                .await;
        assert_eq!(addr.unwrap(), "203.0.113.7:4711".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_whole() {
        let chunks = vec![b"PRO".to_vec(), b"XY TCP6 2001:db8::7 ::1 5 6\r".to_vec(), b"\nrest".to_vec()];
        let (addr, rest) = exchange(chunks).await;
        assert_eq!(addr.unwrap(), "[2001:db8::7]:5".parse().unwrap());
        assert_eq!(rest, b"rest");
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_names_the_peer() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.9:1234".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (head, tail) = header.split_at(10);
        let (addr, rest) = exchange(vec![head.to_vec(), [tail, b"\x16\x03\x01"].concat()]).await;
        assert_eq!(addr.unwrap(), "198.51.100.9:1234".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let (addr, _) = exchange(vec![local]).await;
        assert_eq!(addr.unwrap().ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (result, _) = exchange(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]).await;
        assert!(matches!(result, Err(HeaderError::Invalid(_))), "{result:?}");
        let (result, _) = exchange(vec![b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec()]).await;
        assert!(matches!(result, Err(HeaderError::Invalid(_))), "{result:?}");
        let (result, _) = exchange(vec![b"PROXY TCP4 1.2.3.4".to_vec()]).await;
        assert!(matches!(result, Err(HeaderError::Io(_))), "{result:?}");
    }
}
