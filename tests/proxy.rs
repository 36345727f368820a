//! The request path end to end: real upstreams, lb in-process, real HTTP clients.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn three() -> (Backend, Backend, Backend) {
    (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await)
}

#[tokio::test]
async fn round_robin_spreads_300_requests_exactly_and_reuses_connections() {
    let (a, b, c) = three().await;
    let lb = Lb::start(&config_with(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], "")).await;
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..300 {
        let (status, body) = get(&client, &lb.url("/")).await;
        assert_eq!(status, StatusCode::OK);
        answers.push(body);
    }
    for backend in [&a, &b, &c] {
        assert_eq!(answers.iter().filter(|n| **n == backend.name).count(), 100, "{}", backend.name);
        assert_eq!(backend.requests(), 100);
        // Sequential requests need one pooled connection per upstream; allow a little slack.
        assert!(
            backend.connections() <= 3,
            "{} accepted {} connections",
            backend.name,
            backend.connections()
        );
    }
    assert_eq!(&answers[..3], &["a", "b", "c"], "rotation follows pool order");
}

#[tokio::test]
async fn http2_clients_are_served_and_upstreams_get_http11_with_host() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let (status, body) = get(&h2_client(), &lb.url("/h2")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    let head = a.last_head();
    assert_eq!(head.version, http::Version::HTTP_11);
    assert_eq!(head.headers["host"], lb.addr.to_string().as_str());
    assert_eq!(head.headers["x-forwarded-host"], lb.addr.to_string().as_str());
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_set() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let req = Request::get(lb.url("/hdr"))
        .header("host", "shop.example")
        .header("connection", "keep-alive, X-Hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "websocket")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Response side: the backend's hop-by-hop fields are dropped too.
    assert!(resp.headers().get("x-backend-hop").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    let h = a.last_head().headers;
    // (Transfer-Encoding is hop-by-hop too, but hyper frames each hop itself: see the framing tests.)
    for gone in ["x-hop", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
    }
    // The upstream connection's own Connection field may say keep-alive, never what the client named.
    assert!(h.get_all("connection").iter().all(|v| !v.to_str().unwrap().contains("X-Hop")));
    assert_eq!(h["host"], "shop.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["x-end-to-end"], "kept");
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(lb.url("/echo")).body(Full::new(Bytes::from(payload.clone()))).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body == payload, "echoed body differs");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let seen = a.last_head().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    for msg in [&b"hello"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn other_upgrades_and_h2c_are_not_forwarded() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    for token in ["h2c", "foo/1"] {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {token}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n");
        let answer = raw(lb.addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let h = a.last_head().headers;
        assert!(h.get("upgrade").is_none() && h.get("http2-settings").is_none(), "{h:?}");
    }
}

#[tokio::test]
async fn failures_map_to_clear_statuses() {
    let slow = Backend::start("slow").await;
    let dead = closed_port().await;
    let toml = format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[timeouts]
response = "300ms"
[pools.dead]
servers = [{{ addr = "{dead}" }}]
[pools.slow]
servers = [{{ addr = "{}" }}]
[pools.drained]
servers = [{{ addr = "{}", weight = 0 }}]
[pools.empty]
[[routes]]
host = "dead.test"
pool = "dead"
[[routes]]
host = "slow.test"
pool = "slow"
[[routes]]
host = "drained.test"
pool = "drained"
[[routes]]
host = "empty.test"
pool = "empty"
"#,
        slow.addr, slow.addr
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    let status = |host: &'static str, path: &'static str| {
        let client = client.clone();
        let url = lb.url(path);
        async move {
            let req = Request::get(url).header("host", host).body(Full::new(Bytes::new())).unwrap();
            client.request(req).await.unwrap().status()
        }
    };
    assert_eq!(status("dead.test", "/").await, StatusCode::BAD_GATEWAY);
    assert_eq!(status("slow.test", "/slow?ms=3000").await, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(status("drained.test", "/").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status("empty.test", "/").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status("nobody.test", "/").await, StatusCode::NOT_FOUND);
    assert_eq!(slow.requests(), 1, "the drained server received nothing");
}

#[tokio::test]
async fn routes_by_host_and_path_prefix() {
    let (a, b, c) = three().await;
    let toml = format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[pools.api]
servers = [{{ addr = "{}" }}]
[pools.static]
servers = [{{ addr = "{}" }}]
[pools.default]
servers = [{{ addr = "{}" }}]
[[routes]]
host = "*.example.com"
path_prefix = "/api"
pool = "api"
[[routes]]
path_prefix = "/static/"
pool = "static"
[[routes]]
pool = "default"
"#,
        a.addr, b.addr, c.addr
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    for (host, path, want) in [
        ("www.example.com", "/api/v1", "a"),
        ("www.example.com:8080", "/api", "a"),
        ("example.com", "/api", "c"),
        ("www.example.com", "/apix", "c"),
        ("other", "/static/app.js", "b"),
        ("other", "/", "c"),
    ] {
        let req = Request::get(lb.url(path)).header("host", host).body(Full::new(Bytes::new())).unwrap();
        let resp = client.request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want, "{host}{path}");
    }
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let cases: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ];
    for case in cases {
        let answer = raw(lb.addr, case).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{:?} -> {answer:?}", String::from_utf8_lossy(case));
    }
    assert_eq!(a.requests(), 0, "nothing ambiguous reached the upstream");
    let answer = raw(lb.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "HTTP/1.1 without Host: {answer:?}");
    assert_eq!(a.requests(), 0);
}

/// RFC 9112 / RFC 9110 forms hyper parses but lb refuses: each is answered with the RFC's status,
/// the connection closed, and nothing reaches the server.
#[tokio::test]
async fn strict_request_syntax_refuses_what_servers_could_read_differently() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let cases: [(&str, &[u8], u16); 11] = [
        ("chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        ("two TE fields", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("unknown coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("asterisk-form GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("authority-form GET", b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        ("two Host fields", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: user@x\r\n\r\n", 400),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400),
        ("Host with a bad port", b"GET / HTTP/1.1\r\nHost: x:8o\r\n\r\n", 400),
        ("empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
        ("absolute-form with userinfo", b"GET http://user@x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ];
    for (what, case, status) in cases {
        refused_alone(lb.addr, case, status, what).await;
        assert_eq!(a.requests(), 0, "{what} reached the server");
    }
    // Their valid neighbours pass: OPTIONS *, a host with a port, an IPv6 literal.
    for ok in [
        &b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x.example:8080\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(lb.addr, ok).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{:?}: {answer:?}", String::from_utf8_lossy(ok));
    }
    assert_eq!(a.last_head().uri, "/");
    let options = a.seen.heads.lock().unwrap().iter().find(|h| h.method == http::Method::OPTIONS).cloned();
    assert_eq!(options.expect("OPTIONS * was forwarded").uri, "*");
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_rejected_or_passed() {
    let a = Backend::start("a").await;
    let req =
        b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Ok: 1\r\nConnection: close\r\n\r\n";
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    assert!(raw(lb.addr, req).await.starts_with("HTTP/1.1 200"));
    let head = a.last_head();
    assert!(head.headers.get("x_forwarded_for").is_none(), "dropped by default: {head:?}");
    assert_eq!(head.headers["x-ok"], "1");

    let lb = Lb::start(&config_with(&[("a", a.addr)], "[http]\nunderscore_headers = \"reject\"\n")).await;
    let before = a.requests();
    assert!(raw(lb.addr, req).await.starts_with("HTTP/1.1 400"));
    assert_eq!(a.requests(), before);

    let lb = Lb::start(&config_with(&[("a", a.addr)], "[http]\nunderscore_headers = \"pass\"\n")).await;
    assert!(raw(lb.addr, req).await.starts_with("HTTP/1.1 200"));
    assert_eq!(a.last_head().headers["x_forwarded_for"], "6.6.6.6");
}

#[tokio::test]
async fn invalid_chunk_size_gets_400_and_close() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let answer = raw(lb.addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(!answer.contains("HTTP/1.1 200"), "a second request was answered: {answer:?}");
    let paths: Vec<String> = a.seen.heads.lock().unwrap().iter().map(|h| h.uri.path().to_owned()).collect();
    assert!(!paths.contains(&"/smuggled".to_owned()), "{paths:?}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    // RFC 9112 section 6.1 lets a server reject this; lb does, as nginx does (through its patched
    // hyper, see docs/http.md), and nothing of it reaches a server.
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    for order in [
        &b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        let mut req = order.to_vec();
        req.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        refused_alone(lb.addr, &req, 400, "Content-Length with Transfer-Encoding").await;
    }
    assert_eq!((a.connections(), a.requests()), (0, 0), "nothing reached the server");
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let a = Backend::start("a").await;
    let lb =
        Lb::start(&config_with(&[("a", a.addr)], "[limits]\nmax_header_bytes = 16384\nmax_headers = 20"))
            .await;
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(20_000));
    assert!(raw(lb.addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(raw(lb.addr, req.as_bytes()).await.starts_with("HTTP/1.1 431"));
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn slow_request_heads_and_idle_connections_are_closed() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(
        &[("a", a.addr)],
        "[timeouts]\nclient_header = \"500ms\"\nkeepalive = \"1s\"",
    ))
    .await;
    // A head that never ends is cut off (slowloris). lb's clock starts at accept, after `start`.
    let start = tokio::time::Instant::now();
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "lb kept a half-sent head open");
    assert!(start.elapsed() >= Duration::from_millis(500), "cut after {:?}", start.elapsed());
    // An idle keep-alive connection lives past client_header but closes after keepalive, counted
    // from the end of its response (which is after `start`).
    let start = tokio::time::Instant::now();
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "idle connection never closed");
    assert!(start.elapsed() >= Duration::from_secs(1), "closed after {:?}", start.elapsed());
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let client = client();
    let url = lb.url("/slow?ms=500");
    let pending = tokio::spawn(async move { get(&client, &url).await });
    let seen = a.seen.clone();
    eventually(Duration::from_secs(5), || {
        let seen = seen.clone();
        async move { seen.in_progress.load(std::sync::atomic::Ordering::SeqCst) == 1 }
    })
    .await;
    let addr = lb.addr;
    lb.shutdown().await;
    let (status, body) = pending.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn a_connect_timeout_is_504_and_a_reset_is_502() {
    // A listener that never accepts, with its accept queue already full: the kernel drops further
    // SYNs, so connecting hangs until lb's connect timeout (all on 127.0.0.1).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full_addr)).await
        {
            fillers.push(s);
        }
    }
    // An upstream that accepts and immediately closes: a reset/empty answer.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = rude.accept().await {
            drop(s);
        }
    });
    let toml = format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[timeouts]
connect = "300ms"
[pools.full]
servers = [{{ addr = "{full_addr}" }}]
[pools.rude]
servers = [{{ addr = "{rude_addr}" }}]
[[routes]]
host = "full.test"
pool = "full"
[[routes]]
host = "rude.test"
pool = "rude"
"#
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    for (host, want) in [("full.test", StatusCode::GATEWAY_TIMEOUT), ("rude.test", StatusCode::BAD_GATEWAY)] {
        let req = Request::get(lb.url("/")).header("host", host).body(Full::new(Bytes::new())).unwrap();
        let started = tokio::time::Instant::now();
        let status = client.request(req).await.unwrap().status();
        assert_eq!(status, want, "{host}");
        assert!(started.elapsed() < Duration::from_secs(5), "{host} took {:?}", started.elapsed());
    }
    drop(fillers);
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_does_not_hang_the_client() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "[timeouts]\nresponse = \"1s\"")).await;
    let started = tokio::time::Instant::now();
    let resp = client().get(lb.url("/stall").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "headers arrived in time");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
    let body = body.expect("the client was left hanging");
    assert!(body.is_err(), "a cut-off body must not look complete");
    assert!(started.elapsed() >= Duration::from_secs(1), "cut after {:?}", started.elapsed());
}

#[tokio::test]
async fn connect_requests_are_refused_with_405() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let answer = raw(lb.addr, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer:?}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn a_websocket_tunnel_outlives_the_header_and_keepalive_timeouts() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(
        &[("a", a.addr)],
        "[timeouts]\nclient_header = \"300ms\"\nkeepalive = \"400ms\"\ntunnel_idle = \"30s\"",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for round in 0..3 {
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap_or_else(|e| panic!("round {round}: tunnel closed: {e}"));
        assert_eq!(&back, b"ping");
        // Quiet for longer than both client timeouts: only tunnel_idle applies to a tunnel.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test]
async fn the_request_target_authority_wins_over_host() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.a]\nservers = [{{ addr = \"{}\" }}]\n[pools.b]\nservers = [{{ addr = \"{}\" }}]\n[[routes]]\nhost = \"a.test\"\npool = \"a\"\n[[routes]]\nhost = \"b.test\"\npool = \"b\"\n",
        a.addr, b.addr
    );
    let lb = Lb::start(&toml).await;
    // Absolute form: RFC 9112 section 3.2.2, the target's authority is the host; Host is replaced.
    let answer =
        raw(lb.addr, b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with('a'), "{answer:?}");
    assert_eq!(a.last_head().headers["host"], "a.test");
    assert_eq!(b.requests(), 0);
    // HTTP/2: a Host that disagrees with :authority is refused.
    let req = Request::get("http://a.test/").header("host", "b.test").body(Full::new(Bytes::new())).unwrap();
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(ConnectTo(lb.addr));
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(b.requests(), 0);
}

/// A connector that sends every request to one address, whatever its URI says.
#[derive(Clone)]
struct ConnectTo(std::net::SocketAddr);

impl tower::Service<http::Uri> for ConnectTo {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { TcpStream::connect(addr).await.map(hyper_util::rt::TokioIo::new) })
    }
}

#[tokio::test]
async fn a_slow_upload_is_not_blamed_on_the_upstream_but_a_stalled_one_gets_408() {
    let a = Backend::start("a").await;
    let lb =
        Lb::start(&config_with(&[("a", a.addr)], "[timeouts]\nresponse = \"400ms\"\nclient_body = \"2s\""))
            .await;
    // Uploading takes three times the response timeout, but never pauses for client_body.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for byte in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(byte).await.unwrap();
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with('4'), "{answer:?}");
    // An upload that stops: 408 after client_body, and the connection closed.
    let answer = raw(lb.addr, b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

#[tokio::test]
async fn http2_request_bodies_stream_and_forwarded_headers_are_set() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let payload = Bytes::from(vec![7u8; 300_000]);
    let req = Request::post(lb.url("/echo"))
        .header("x-forwarded-for", "198.51.100.1")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), payload);
    let h = a.last_head().headers;
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], lb.addr.to_string().as_str());
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n", "the client is told to send its body");
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    assert!(rest.starts_with("HTTP/1.1 200") && rest.ends_with('5'), "{rest:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "[limits]\nmax_connections = 1")).await;
    let mut first = TcpStream::connect(lb.addr).await.unwrap();
    first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    // The second connection completes in the kernel backlog but is not served while the first lives.
    let mut second = TcpStream::connect(lb.addr).await.unwrap();
    second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(first);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn a_client_cannot_hide_the_request_id_from_the_upstream() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&config_with(&[("a", a.addr)], "")).await;
    let answer = raw(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\nConnection: close, X-Request-Id\r\n\r\n",
    )
    .await;
    assert!(answer.to_ascii_lowercase().contains("x-request-id: abc-123"), "{answer}");
    assert_eq!(a.last_head().headers["x-request-id"], "abc-123");
}

/// A raw upstream that answers every request head with `response`, keeping the connection open, and
/// records how many requests each connection carried.
async fn canned_upstream(response: &'static [u8]) -> (std::net::SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let per_conn = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&per_conn);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let index = {
                let mut v = seen.lock().unwrap();
                v.push(0);
                v.len() - 1
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.lock().unwrap()[index] += 1;
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, per_conn)
}

/// Invalid or ambiguous upstream responses: 502 when no response head was sent, the connection to
/// that server never used again, and a body that breaks mid-way never looks complete to the client.
#[tokio::test]
async fn invalid_upstream_responses_become_502_and_their_connection_is_discarded() {
    let cases: [(&str, &[u8]); 4] = [
        ("TE and CL", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("CL and TE", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("status line", b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"),
        ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ];
    for (what, response) in cases {
        let (addr, per_conn) = canned_upstream(response).await;
        let lb = Lb::start(&config_with(&[("bad", addr)], "")).await;
        let client = client();
        for _ in 0..3 {
            let (status, _) = get(&client, &lb.url("/")).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}");
        }
        let per_conn = per_conn.lock().unwrap().clone();
        assert!(per_conn.iter().all(|&n| n <= 1), "{what}: a connection was reused: {per_conn:?}");
    }

    // A chunked body that turns invalid after the head went out: the client's message is cut, never
    // completed, and the connection closed. The upstream sends the bad chunk only once the client has
    // read the head and the good chunk.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_on, rest) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await.unwrap();
        let _ = rest.await;
        let _ = s.write_all(b"zz\r\nbad\r\n0\r\n\r\n").await;
        let _ = s.read(&mut chunk).await;
    });
    let lb = Lb::start(&config_with(&[("bad", addr)], "")).await;
    let mut client = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("hello") {
        let n = client.read_buf(&mut answer).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&answer));
    }
    go_on.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(!answer.ends_with("0\r\n\r\n"), "the cut body looks complete: {answer:?}");

    // The same body arriving all at once: whatever the client gets, it never looks complete.
    let (addr, _) = canned_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await;
    let lb = Lb::start(&config_with(&[("bad", addr)], "")).await;
    let answer = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!answer.ends_with("0\r\n\r\n"), "the cut body looks complete: {answer:?}");
}

/// A pool's own `[pools.NAME.timeouts]` replaces `[timeouts]` for that pool's requests alone
/// (HAProxy's `timeout server` in a backend, nginx's `proxy_read_timeout` in a location).
#[tokio::test]
async fn a_pool_s_own_response_timeout_applies_to_it_alone() {
    let slow = Backend::start("slow").await;
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[timeouts]\nresponse = \"300ms\"\n\
         [pools.quick]\nservers = [{{ addr = \"{0}\" }}]\n\
         [pools.patient]\nservers = [{{ addr = \"{0}\" }}]\n[pools.patient.timeouts]\nresponse = \"30s\"\n\
         [[routes]]\nhost = \"quick.test\"\npool = \"quick\"\n[[routes]]\nhost = \"patient.test\"\npool = \"patient\"\n",
        slow.addr
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    let status = |host: &'static str| {
        let req =
            Request::get(lb.url("/slow?ms=1500")).header("host", host).body(Full::new(Bytes::new())).unwrap();
        let client = client.clone();
        async move { client.request(req).await.unwrap().status() }
    };
    assert_eq!(status("quick.test").await, StatusCode::GATEWAY_TIMEOUT, "[timeouts] response");
    assert_eq!(status("patient.test").await, StatusCode::OK, "the pool's own response timeout");
}

/// `[error_pages]`: lb's own answers with that status carry the operator's page, with the
/// Content-Type its name gives; other statuses keep lb's one-line text.
#[tokio::test]
async fn error_pages_replace_the_body_of_lb_s_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("503.html");
    std::fs::write(&page, "<h1>Down for maintenance</h1>\n").unwrap();
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.empty]\n[[routes]]\nhost = \"empty.test\"\npool = \"empty\"\n\
         [error_pages]\n503 = \"{}\"\n",
        page.display()
    );
    let lb = Lb::start(&toml).await;
    let answer = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: empty.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: text/html; charset=utf-8"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n<h1>Down for maintenance</h1>\n"), "{answer}");
    let other = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404") && other.ends_with("404 Not Found\n"), "{other}");
}
