//! Request bodies: the size limit, request buffering (framing checked before any server sees a byte,
//! replay, no server held by a slow upload) and the minimum upload rate, over raw client sockets
//! against real backends, each asserting what the backend received.

mod common;

use common::{config_with, eventually, raw, read_head, refused_alone, Backend, Lb};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes (bounded).
async fn rest(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_before_any_server_is_contacted() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "[limits]\nmax_body_size = \"1KiB\"\n")).await;
    // The head alone decides: no byte of the body is sent, and the connection is closed after the 413.
    let answer = raw(lb.addr, b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");
    assert_eq!((a.connections(), a.requests()), (0, 0), "no server was contacted");
    // At the limit exactly: forwarded whole.
    let body = vec![b'x'; 1024];
    let mut req =
        b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let answer = raw(lb.addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("1024"), "{answer:?}");
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_with_413() {
    let a = Backend::start("a").await;
    // Met inside the request buffer (no server contacted), and met while streaming (buffer off).
    for (limit, buffer) in [(50_000, "64KiB"), (100_000, "0")] {
        let extra = format!("[limits]\nmax_body_size = {limit}\nrequest_buffer = \"{buffer}\"\n");
        let lb = Lb::start(&config_with(&[("a", a.addr)], &extra)).await;
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 30_000, "y".repeat(30_000));
        // 4 x 30,000 bytes cross either limit. lb may close before all of it is written.
        for _ in 0..4 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let answer = rest(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "limit {limit}: {answer:?}");
        if buffer != "0" {
            assert_eq!(a.connections(), 0, "limit {limit}: a server was contacted");
        }
    }
}

/// Malformed chunked framing: each case is refused with 400 and, with the body read ahead, nothing
/// at all reaches a server (not even the head).
#[tokio::test]
async fn malformed_chunked_framing_in_a_buffered_body_reaches_no_server() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let cases: [(&str, &[u8]); 9] = [
        ("bad chunk size", b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("no CRLF after chunk data", b"5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n"),
        ("bare LF after the size", b"5\nhello\r\n0\r\n\r\n"),
        ("LF in a chunk extension", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ("extension name not a token", b"5;\"a\"\r\nhello\r\n0\r\n\r\n"),
        ("two words as a name", b"5;a b\r\nhello\r\n0\r\n\r\n"),
        ("control byte in a value", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        ("unterminated quoted value", b"5;a=\"x\r\nhello\r\n0\r\n\r\n"),
        ("empty extension", b"5;\r\nhello\r\n0\r\n\r\n"),
    ];
    for (what, body) in cases {
        let mut req = b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        refused_alone(lb.addr, &req, 400, what).await;
        assert_eq!((a.connections(), a.requests()), (0, 0), "{what}: a server was contacted");
    }
}

#[tokio::test]
async fn well_formed_chunk_extensions_pass_and_are_not_forwarded() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let body = b"5;a=b;c=\"d e\\\"f\"\r\nhello\r\n6 ; name = token ; x\r\n world\r\n0\r\n\r\n";
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    let answer = raw(lb.addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("hello world"), "{answer:?}");
}

#[tokio::test]
async fn a_slow_small_upload_holds_no_server_until_it_is_complete() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.unwrap();
    // The body is being read ahead (its buffer is reserved) and no server has been contacted.
    let buffers = std::sync::Arc::clone(lb.runtime.request_buffers());
    eventually(Duration::from_secs(5), || {
        let buffers = std::sync::Arc::clone(&buffers);
        async move { buffers.held() > 0 }
    })
    .await;
    assert_eq!(a.connections(), 0, "a server connection was taken while the client uploads");
    s.write_all(b"world").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    assert_eq!(&len, b"10");
    assert_eq!(a.requests(), 1);
    drop(s);
    eventually(Duration::from_secs(5), || {
        let buffers = std::sync::Arc::clone(&buffers);
        async move { buffers.held() == 0 }
    })
    .await;
}

#[tokio::test]
async fn the_buffer_total_is_a_cap_beyond_which_bodies_stream() {
    let a = Backend::start("a").await;
    let extra = "[limits]\nrequest_buffer = 1000\nrequest_buffer_total = 1500\n";
    let lb = Lb::start(&config_with(&[("a", a.addr)], extra)).await;
    // The first upload takes 1000 of the 1500 bytes and waits for the rest of its body.
    let mut first = TcpStream::connect(lb.addr).await.unwrap();
    first.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab").await.unwrap();
    let buffers = std::sync::Arc::clone(lb.runtime.request_buffers());
    eventually(Duration::from_secs(5), || {
        let buffers = std::sync::Arc::clone(&buffers);
        async move { buffers.held() == 1000 }
    })
    .await;
    // The second finds no room: it streams to the server at once, before its body is complete.
    let mut second = TcpStream::connect(lb.addr).await.unwrap();
    second.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\ncd").await.unwrap();
    eventually(Duration::from_secs(5), || {
        let seen = std::sync::Arc::clone(&a.seen);
        async move { seen.requests.load(std::sync::atomic::Ordering::SeqCst) == 1 }
    })
    .await;
    assert_eq!(buffers.held(), 1000, "the streamed body holds no buffer");
    second.write_all(&[b'z'; 898]).await.unwrap();
    assert!(read_head(&mut second).await.starts_with("http/1.1 200"));
    first.write_all(&[b'z'; 998]).await.unwrap();
    assert!(read_head(&mut first).await.starts_with("http/1.1 200"));
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_by_the_minimum_rate() {
    let a = Backend::start("a").await;
    // 100 B/s over 1 s windows; the per-read timeout alone (60 s) would never fire on this client.
    let extra = "[limits]\nmin_body_rate = 100\n[timeouts]\nbody_rate_window = \"1s\"\n";
    let lb = Lb::start(&config_with(&[("a", a.addr)], extra)).await;
    for buffer in [true, false] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        // Larger than the buffer when `buffer` is false: the body then streams to the server.
        let len = if buffer { 1000 } else { 100_000 };
        s.write_all(format!("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let start = Instant::now();
        let mut answer = String::new();
        // One byte every 300 ms until lb answers (bounded: 40 bytes, 12 s).
        for _ in 0..40 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                break;
            }
        }
        let took = start.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "buffered {buffer}: {answer:?} after {took:?}");
        assert!(took < Duration::from_secs(5), "buffered {buffer}: took {took:?}");
        if buffer {
            assert_eq!(a.connections(), 0, "the buffered trickle never reached a server");
        }
    }
}

#[tokio::test]
async fn the_size_limit_holds_for_http2_clients_too() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "[limits]\nmax_body_size = 1000\n")).await;
    let client = common::h2_client();
    let post = |n: usize| {
        http::Request::post(lb.url("/sink"))
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let resp = client.request(post(1001)).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.connections(), 0);
    let resp = client.request(post(1000)).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
}

#[tokio::test]
async fn a_route_may_set_its_own_size_limit() {
    let a = Backend::start("a").await;
    let extra = "[limits]\nmax_body_size = 100\n\
                 [[routes]]\npool = \"web\"\n\
                 [[routes]]\npool = \"web\"\npath_prefix = \"/upload\"\nmax_body_size = \"1KiB\"\n\
                 [[routes]]\npool = \"web\"\npath_prefix = \"/any\"\nmax_body_size = 0\n";
    let lb = Lb::start(&config_with(&[("a", a.addr)], extra)).await;
    let post = |path: &str, n: usize| {
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")
                .into_bytes();
        req.extend(std::iter::repeat_n(b'x', n));
        req
    };
    let status = |answer: String| answer.get(9..12).unwrap_or("").to_owned();
    assert_eq!(status(raw(lb.addr, &post("/sink", 101)).await), "413", "the global limit");
    assert_eq!(status(raw(lb.addr, &post("/upload/sink", 1024)).await), "200", "the route's own, larger");
    assert_eq!(status(raw(lb.addr, &post("/upload/sink", 1025)).await), "413");
    assert_eq!(status(raw(lb.addr, &post("/any/sink", 5000)).await), "200", "0: no limit on this route");
}
