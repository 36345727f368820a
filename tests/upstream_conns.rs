//! lb's own upstream connections: reused only when safe, never handed out after the server closed
//! or wrote on them, closed when idle too long, and never more idle than the cap.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a hand-written upstream saw and did.
#[derive(Default)]
struct Raw {
    connections: AtomicUsize,
    /// Requests by method, in arrival order.
    methods: std::sync::Mutex<Vec<String>>,
    /// Requests per connection.
    per_conn: std::sync::Mutex<Vec<usize>>,
    /// Connections this upstream has closed (or that closed).
    closed: AtomicUsize,
    /// Times it wrote stray bytes after a response.
    garbage: AtomicUsize,
}

/// An upstream that answers each request with `200 ok`, then closes the connection if no next request
/// comes within `keepalive` (without announcing it, as servers with a short keep-alive timeout do),
/// or, when `garbage` is set, writes stray bytes on the idle connection instead.
async fn raw_upstream(keepalive: Duration, garbage: bool) -> (std::net::SocketAddr, Arc<Raw>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = Arc::new(Raw::default());
    let seen = Arc::clone(&raw);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            let index = {
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let mut v = seen.per_conn.lock().unwrap();
                v.push(0);
                v.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // A whole request: head, then Content-Length bytes of body.
                    let complete = |buf: &[u8]| {
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0usize);
                        (buf.len() >= end + len).then_some(end + len)
                    };
                    let wait = if buf.is_empty() && seen.per_conn.lock().unwrap()[index] > 0 {
                        Some(keepalive)
                    } else {
                        None
                    };
                    let read = match wait {
                        Some(limit) => match tokio::time::timeout(limit, s.read(&mut chunk)).await {
                            Ok(r) => r,
                            Err(_) if garbage => {
                                let _ = s.write_all(b"HTTP/1.1 500 stray\r\n\r\n").await;
                                seen.garbage.fetch_add(1, Ordering::SeqCst);
                                // Wait for lb to close it.
                                let _ = s.read(&mut chunk).await;
                                break;
                            }
                            Err(_) => break,
                        },
                        None => s.read(&mut chunk).await,
                    };
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(len) = complete(&buf) {
                        let method =
                            String::from_utf8_lossy(&buf[..len]).split(' ').next().unwrap().to_owned();
                        buf.drain(..len);
                        seen.methods.lock().unwrap().push(method);
                        seen.per_conn.lock().unwrap()[index] += 1;
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                }
                drop(s);
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, raw)
}

async fn post(client: &Client, url: &str, body: &'static str) -> StatusCode {
    let req = Request::post(url).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// `[limits]` for a test: `more`, and with `apart`, every upstream connection running in a task of its
/// own (`upstream_tasks_above = 0`, what a pool with many requests in flight does).
fn limits(apart: bool, more: &str) -> String {
    let apart = if apart { "upstream_tasks_above = 0\n" } else { "" };
    format!("[limits]\n{more}{apart}")
}

/// The server closes idle connections long before lb would: lb notices each close before it sends,
/// so no GET fails and no POST is sent twice.
#[tokio::test]
async fn a_server_with_a_shorter_keepalive_costs_no_request_and_replays_no_post() {
    for apart in [false, true] {
        shorter_keepalive(apart).await;
    }
}

async fn shorter_keepalive(apart: bool) {
    let (addr, raw) = raw_upstream(Duration::from_millis(20), false).await;
    let extra = format!("[timeouts]\nupstream_idle = \"60s\"\n{}", limits(apart, ""));
    let lb = Lb::start(&config_with(&[("a", addr)], &extra)).await;
    let client = client();
    for round in 0..4 {
        assert_eq!(get(&client, &lb.url("/")).await.0, StatusCode::OK, "GET in round {round}, apart {apart}");
        eventually(Duration::from_secs(5), || async { raw.closed.load(Ordering::SeqCst) > 2 * round }).await;
        assert_eq!(post(&client, &lb.url("/"), "once").await, StatusCode::OK, "POST in round {round}");
        eventually(Duration::from_secs(5), || async { raw.closed.load(Ordering::SeqCst) > 2 * round + 1 })
            .await;
    }
    let methods = raw.methods.lock().unwrap().clone();
    assert_eq!(
        methods.iter().filter(|m| *m == "POST").count(),
        4,
        "each POST sent exactly once (apart {apart}): {methods:?}"
    );
    assert_eq!(methods.len(), 8, "{methods:?}");
    assert_eq!(raw.connections.load(Ordering::SeqCst), 8, "a new connection for every request");
}

/// Bytes a server writes on an idle connection make it unusable: lb never sends a request on it (it
/// would read those bytes as the answer).
#[tokio::test]
async fn a_connection_the_server_wrote_on_while_idle_is_never_reused() {
    for apart in [false, true] {
        let (addr, raw) = raw_upstream(Duration::from_millis(20), true).await;
        let lb = Lb::start(&config_with(&[("a", addr)], &limits(apart, ""))).await;
        let client = client();
        for round in 1..=3 {
            let (status, body) = get(&client, &lb.url("/")).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "round {round}, apart {apart}");
            eventually(Duration::from_secs(5), || async { raw.garbage.load(Ordering::SeqCst) >= round })
                .await;
        }
        let per_conn = raw.per_conn.lock().unwrap().clone();
        assert_eq!(per_conn, vec![1, 1, 1], "each connection carried one request (apart {apart})");
        // lb closed each of them.
        eventually(Duration::from_secs(5), || async { raw.closed.load(Ordering::SeqCst) == 3 }).await;
    }
}

/// Connections idle for `timeouts.upstream_idle` are closed by lb, on both ends.
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    for apart in [false, true] {
        let a = Backend::start("a").await;
        let extra = format!("[timeouts]\nupstream_idle = \"200ms\"\n{}", limits(apart, ""));
        let lb = Lb::start(&config_with(&[("a", a.addr)], &extra)).await;
        assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
        let server = Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
        assert_eq!(a.seen.open.load(Ordering::SeqCst), 1, "kept open after the response (apart {apart})");
        eventually(Duration::from_secs(5), || async { a.seen.open.load(Ordering::SeqCst) == 0 }).await;
        assert_eq!(server.stats.conns.idle_count(), 0);
        // And a request after that opens a new one.
        assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
        assert_eq!(a.connections(), 2);
    }
}

/// At most `limits.upstream_idle_per_server` connections stay open idle; the rest are closed as their
/// responses end.
#[tokio::test]
async fn never_more_idle_connections_than_the_cap() {
    for apart in [false, true] {
        let a = Backend::start_with_delay("a", Duration::from_millis(100)).await;
        let lb =
            Lb::start(&config_with(&[("a", a.addr)], &limits(apart, "upstream_idle_per_server = 2\n"))).await;
        let client = client();
        let url = lb.url("/");
        let all = futures_util::future::join_all((0..6).map(|_| get(&client, &url))).await;
        assert!(all.iter().all(|(s, _)| *s == StatusCode::OK));
        assert_eq!(a.seen.peak_open.load(Ordering::SeqCst), 6, "six at once need six connections");
        let server = Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
        assert_eq!(server.stats.conns.idle_count(), 2);
        let expected = if apart { 2 } else { 0 };
        assert_eq!(server.stats.conns.apart_count(), expected, "idle connections in tasks of their own");
        eventually(Duration::from_secs(5), || async { a.seen.open.load(Ordering::SeqCst) == 2 }).await;
        // Sequential requests now reuse the two.
        for _ in 0..4 {
            assert_eq!(get(&client, &lb.url("/")).await.0, StatusCode::OK);
        }
        assert_eq!(a.connections(), 6, "apart {apart}");
    }
}

/// A client that goes away mid-body leaves a connection in an unknown state: it is closed, never
/// reused.
#[tokio::test]
async fn a_response_the_client_abandoned_closes_its_connection() {
    for apart in [false, true] {
        let a = Backend::start("a").await;
        let lb = Lb::start(&config_with(&[("a", a.addr)], &limits(apart, ""))).await;
        // The backend streams /big for a while; the client reads the head and leaves.
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        drop(s);
        eventually(Duration::from_secs(5), || async { a.seen.open.load(Ordering::SeqCst) == 0 }).await;
        assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
        assert_eq!(a.connections(), 2, "the abandoned connection was not reused (apart {apart})");
    }
}

/// Once a pool is below half of `limits.upstream_tasks_above` again, the sweep closes the idle
/// connections that ran in tasks of their own, and the next request opens one its own task drives
/// (which parks when it idles, as such connections do).
#[tokio::test]
async fn connections_run_apart_only_while_the_pool_is_busy() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], &limits(true, ""))).await;
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
    let server = Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
    assert_eq!(server.stats.conns.apart_count(), 1);
    // The default threshold (256 per worker), and nothing in flight.
    lb.runtime.apply(lb::config::Config::from_toml(&config_with(&[("a", a.addr)], "")).unwrap());
    eventually(Duration::from_secs(5), || async { a.seen.open.load(Ordering::SeqCst) == 0 }).await;
    assert_eq!(server.stats.conns.idle_count(), 0);
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
    assert_eq!(a.connections(), 2);
    assert_eq!(server.stats.conns.apart_count(), 0, "driven by the request's task");
    eventually(Duration::from_secs(5), || async { server.stats.conns.parked_count() == 1 }).await;
}

/// A connection idle for a second is parked (hyper's buffers dropped, its socket kept): the next
/// request still reuses it, and one its server closed or wrote on while it was parked is never used.
#[tokio::test]
async fn a_parked_connection_is_reused_unless_its_server_closed_it_or_wrote_on_it() {
    for (keepalive, garbage) in
        [(Duration::from_secs(60), false), (Duration::from_secs(3), false), (Duration::from_secs(3), true)]
    {
        let case = format!("server keep-alive {keepalive:?}, stray bytes {garbage}");
        let (addr, raw) = raw_upstream(keepalive, garbage).await;
        let lb = Lb::start(&config_with(&[("a", addr)], "")).await;
        let client = client();
        assert_eq!(get(&client, &lb.url("/")).await.0, StatusCode::OK, "{case}");
        let server = Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
        eventually(Duration::from_secs(5), || async { server.stats.conns.parked_count() == 1 }).await;
        if keepalive < Duration::from_secs(60) {
            // The server closes it, or writes on it, while it is parked; lb's sweep closes it.
            eventually(Duration::from_secs(10), || async { raw.closed.load(Ordering::SeqCst) == 1 }).await;
            eventually(Duration::from_secs(5), || async { server.stats.conns.idle_count() == 0 }).await;
        }
        let (status, body) = get(&client, &lb.url("/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "{case}");
        let per_conn = raw.per_conn.lock().unwrap().clone();
        let expected = if keepalive < Duration::from_secs(60) { vec![1, 1] } else { vec![2] };
        assert_eq!(per_conn, expected, "{case}");
    }
}

/// An HTTP/2 client's requests keep connections their own task drives at any load: the streams share
/// their connection's task, which moves many responses per wake-up that way.
#[tokio::test]
async fn an_http2_clients_requests_never_run_their_connection_apart() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], &limits(true, ""))).await;
    assert_eq!(get(&h2_client(), &lb.url("/")).await.0, StatusCode::OK);
    let server = Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
    assert_eq!(server.stats.conns.idle_count(), 1);
    assert_eq!(server.stats.conns.apart_count(), 0, "driven by the request's task");
    // An HTTP/1 client's request on the same pool takes it and runs it apart.
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK);
    assert_eq!(server.stats.conns.apart_count(), 1);
    assert_eq!(a.connections(), 1);
}
