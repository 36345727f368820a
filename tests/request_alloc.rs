//! Allocations per proxied request, end to end (client to lb to upstream and back), counted by a
//! global allocator, with a budget that fails on regressions. The client and the upstream here are
//! written on raw sockets with fixed buffers, so what is counted is lb's (and tokio's) own work.

mod common;

#[path = "shared/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::ALLOCATIONS;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The allocation counter is process-wide: the tests here take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An upstream answering every request on a connection with `RESPONSE`, allocating nothing per
/// request.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    // Requests here have no body: each ends with an empty line.
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Sends one GET on `s` and reads its whole answer (lb's response: head with a few fields, 2-byte body).
async fn one(s: &mut tokio::net::TcpStream, buf: &mut [u8; 4096]) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: alloc-test\r\n\r\n").await.unwrap();
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await.unwrap();
        assert!(n > 0, "lb closed the connection");
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if have >= end + 4 + 2 {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..have]));
                return;
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_proxied_request_stays_within_its_allocation_budget() {
    let _turn = SERIAL.lock().await;
    let addr = upstream().await;
    // The defaults, but no health checks and no access log: what every proxied request pays.
    let lb = common::Lb::start(&common::config_with(&[("a", addr)], "")).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    // Warm up: the connection pair, metric handles, buffers that grow once.
    for _ in 0..50 {
        one(&mut s, &mut buf).await;
    }
    let n = 500;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        one(&mut s, &mut buf).await;
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    eprintln!("allocations per proxied request: {per_request:.2}");
    // Measured 10.0 on 2026-11-27 (docs/performance.md). A regression of a few allocations per
    // request fails here.
    assert!(per_request <= BUDGET, "{per_request:.2} allocations per request, budget {BUDGET}");
}

const BUDGET: f64 = 12.0;

/// Sends one GET for a host no route takes and reads the whole 404 answer.
async fn refused(s: &mut tokio::net::TcpStream, buf: &mut [u8; 4096]) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n").await.unwrap();
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await.unwrap();
        assert!(n > 0, "lb closed the connection");
        have += n;
        let text = String::from_utf8_lossy(&buf[..have]);
        if let (Some(end), Some(len)) = (
            text.find("\r\n\r\n"),
            text.lines().find_map(|l| {
                l.strip_prefix("content-length: ").and_then(|v| v.trim().parse::<usize>().ok())
            }),
        ) {
            if have >= end + 4 + len {
                assert!(text.starts_with("HTTP/1.1 404"), "{text:?}");
                return;
            }
        }
    }
}

/// A flood of requests no route takes costs a handful of allocations each (hyper's and the error
/// page's), not label strings for the metric that counts them.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_request_stays_within_its_allocation_budget() {
    let _turn = SERIAL.lock().await;
    let addr = upstream().await;
    let toml = common::config_with(&[("a", addr)], "[[routes]]\nhost = \"app.example\"\npool = \"web\"\n");
    let lb = common::Lb::start(&toml).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..50 {
        refused(&mut s, &mut buf).await;
    }
    let n = 500;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        refused(&mut s, &mut buf).await;
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    eprintln!("allocations per refused request: {per_request:.2}");
    assert!(
        per_request <= REFUSED_BUDGET,
        "{per_request:.2} allocations per refused request, budget {REFUSED_BUDGET}"
    );
}

// Measured 9.4 on 2026-11-27; 11.4 when the metric labels were built per request.
const REFUSED_BUDGET: f64 = 10.0;
