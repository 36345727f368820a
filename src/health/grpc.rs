//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) as an active check, for pools
//! of servers that speak only HTTP/2 (gRPC): a unary call on a fresh HTTP/2 connection, passed when
//! it ends with `grpc-status: 0` and the answer says `SERVING`.
//!
//! hyper does all of HTTP/2. The two protobuf messages are a single field each
//! (`HealthCheckRequest { string service = 1 }`, `HealthCheckResponse { ServingStatus status = 1 }`),
//! written and read here with protobuf's wire rules rather than with a protobuf library.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The method asked, as the protocol names it.
const METHOD: &str = "/grpc.health.v1.Health/Check";

/// Largest answer read (a health answer is a few bytes).
const MAX_ANSWER: usize = 4096;

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// One check over `stream` (plain h2c, or TLS that chose h2: `tls`): `Ok` if `service` is
/// `SERVING`.
pub(super) async fn probe<S>(service: &str, addr: &str, tls: bool, stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    // The connection's task ends with this probe, whether it returns or is dropped at the timeout.
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let scheme = if tls { "https" } else { "http" };
    async {
        let req = http::Request::post(format!("{scheme}://{addr}{METHOD}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "lb-health-check")
            .body(Full::new(request(service)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?;
        // `grpc-status` ends the call in the trailers, or in the head of a trailers-only answer.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let code = trailers.get("grpc-status").or_else(|| parts.headers.get("grpc-status"));
        match code.map(|c| c.to_str().unwrap_or("?")) {
            Some("0") => {}
            Some(code) => {
                let message = trailers.get("grpc-message").or_else(|| parts.headers.get("grpc-message"));
                let message = message.and_then(|m| m.to_str().ok()).unwrap_or("");
                return Err(format!("grpc-status {code} {message}").trim_end().to_owned());
            }
            None => return Err("no grpc-status".to_owned()),
        }
        match serving_status(&body.to_bytes())? {
            SERVING => Ok(()),
            other => Err(format!("serving status {other} ({})", status_name(other))),
        }
    }
    .await
}

/// Aborts a task when dropped (a spawned task outlives its `JoinHandle` otherwise).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `HealthCheckRequest` for `service` in one uncompressed gRPC message.
fn request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    framed.freeze()
}

/// The `status` of the `HealthCheckResponse` in a gRPC answer body (0 when absent, as protobuf
/// reads a missing field).
fn serving_status(body: &[u8]) -> Result<u64, String> {
    let [flag, l0, l1, l2, l3, message @ ..] = body else { return Err("no message".into()) };
    if *flag != 0 {
        return Err("compressed answer".into());
    }
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    let mut rest = message.get(..len).ok_or("truncated message")?;
    let mut status = 0;
    while !rest.is_empty() {
        let tag = varint(&mut rest)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = varint(&mut rest)?,
            (_, 0) => drop(varint(&mut rest)?),
            (_, 1) => rest = rest.get(8..).ok_or("truncated field")?,
            (_, 2) => {
                let n = usize::try_from(varint(&mut rest)?).map_err(|_| "field too long")?;
                rest = rest.get(n..).ok_or("truncated field")?;
            }
            (_, 5) => rest = rest.get(4..).ok_or("truncated field")?,
            (_, wire) => return Err(format!("unknown wire type {wire}")),
        }
    }
    Ok(status)
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn varint(input: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("truncated varint")?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_read_as_protobuf_says() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&request("api")[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'i']);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Ok(0), "an absent field is its default");
        // An unknown field before it is skipped.
        assert_eq!(serving_status(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 2]), Ok(2));
        assert!(serving_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(serving_status(&[1, 0, 0, 0, 0]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x80]).is_err());
    }
}
