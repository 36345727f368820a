//! Health: active checks, passive ejection, slow start, retries and circuit breaking, with real
//! upstreams that are stopped, made sick, slowed and made to fail. Timing figures in docs/health.md
//! come from the `eprintln!` lines here (run with `--nocapture`).

mod common;

use common::{client, closed_port, config_with, eventually, get, Backend, Client, Lb, Traffic};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use lb::upstream::Upstream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The live server named `name` in pool `web`.
fn server(lb: &Lb, name: &str) -> Arc<Upstream> {
    let snap = lb.runtime.snapshot();
    let pool = snap.pools.iter().find(|p| &*p.name == "web").unwrap();
    Arc::clone(pool.upstreams.iter().find(|u| &*u.key.name == name).unwrap())
}

/// Polls (bounded) until `cond` holds for the server; returns how long it took.
async fn until(up: &Upstream, limit: Duration, cond: impl Fn(&Upstream) -> bool) -> Duration {
    let start = Instant::now();
    while !cond(up) {
        assert!(start.elapsed() < limit, "state not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_request_and_comes_back_gently() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let b_addr = b.addr;
    let lb = Lb::start(&config_with(
        &[("a", a.addr), ("b", b.addr), ("c", c.addr)],
        "slow_start = \"3s\"\n[pools.web.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
         rise = 2\nfall = 3\n[pools.web.passive]\nenabled = false\n",
    ))
    .await;
    let traffic = Traffic::start(lb.url("/"), 4);
    traffic.pass(200).await;

    // Killed mid-traffic: retries hide it, and checks take it out within interval x fall.
    drop(b);
    let down = until(&server(&lb, "b"), Duration::from_secs(5), |u| u.stats.health.is_down()).await;
    eprintln!("time to mark a killed server down (interval 100ms, fall 3): {down:?}");
    assert!(down <= Duration::from_millis(300 + 100 + 250), "down after {down:?}");
    traffic.pass(200).await;

    // Back, but failing its checks: it gets no traffic.
    let b = Backend::start_on("b", b_addr).await;
    b.seen.sick.store(true, Ordering::SeqCst);
    traffic.pass(300).await;
    assert_eq!(b.requests(), 0, "a server failing its checks gets no request");

    // Healthy again: up after `rise` passes, then its share ramps up over slow start.
    b.seen.sick.store(false, Ordering::SeqCst);
    let up = until(&server(&lb, "b"), Duration::from_secs(5), |u| u.is_ready()).await;
    eprintln!("time to bring a recovered server back (interval 100ms, rise 2): {up:?}");
    assert!(up <= Duration::from_millis(200 + 100 + 250), "up after {up:?}");
    let warmup = server(&lb, "b").stats.health.warmup();
    let before = b.requests();
    traffic.pass(150).await;
    let early = b.requests() - before;
    let later = server(&lb, "b").stats.health.warmup();
    eprintln!("slow start: share {warmup}..{later} permille while {early} of 150 requests went to b");
    assert!(warmup < 200, "starts with a small share, got {warmup} permille");
    assert!(early < 35, "warming server got {early} of 150 (a full share is 50)");
    until(&server(&lb, "b"), Duration::from_secs(5), |u| u.stats.health.warmup() == 1000).await;
    let before = b.requests();
    traffic.pass(600).await;
    let warm = b.requests() - before;
    assert!((150..=250).contains(&warm), "a warm server gets its third of 600, got {warm}");

    let (ok, failures) = traffic.finish().await;
    eprintln!(
        "requests during kill, sick period, recovery and slow start: {ok} ok, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
}

#[tokio::test]
async fn a_post_whose_body_was_sent_is_never_replayed() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&config_with(&[("a", a.addr), ("b", b.addr)], "")).await;
    let client = client();
    let post = |method: &str, path: &str, body: &'static str| {
        http::Request::builder()
            .method(method)
            .uri(lb.url(path))
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    // The server reads the body and drops the connection: a POST is not sent again, even with its
    // body buffered (it is not idempotent).
    let before = a.requests() + b.requests();
    let resp = client.request(post("POST", "/drop", "payload")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(a.requests() + b.requests() - before, 1, "POST was replayed");
    // A PUT is idempotent, and its small body was read whole ahead: sent again, to the other server.
    let before = (a.requests(), b.requests());
    let resp = client.request(post("PUT", "/drop", "payload")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!((a.requests() - before.0, b.requests() - before.1), (1, 1), "buffered PUT tried on each");
    // Without request buffering the PUT's body was streamed and read by the first server: not replayed.
    let unbuffered = Lb::start(&format!(
        "[limits]\nrequest_buffer = 0\n{}",
        config_with(&[("a", a.addr), ("b", b.addr)], "")
    ))
    .await;
    let before = a.requests() + b.requests();
    let put = http::Request::put(unbuffered.url("/drop")).body(Full::new(bytes::Bytes::from_static(b"x")));
    let resp = client.request(put.unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(a.requests() + b.requests() - before, 1, "a streamed PUT body was replayed");
    // A bodyless GET is idempotent: retried, on the other server (each server tried once).
    let before = (a.requests(), b.requests());
    let resp = client.get(lb.url("/drop").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!((a.requests() - before.0, b.requests() - before.1), (1, 1), "tried on each server once");
}

/// A server that reads each request head and closes the connection without an answer; counts the heads.
async fn head_dropper() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn a_retried_request_carries_its_whole_head() {
    // The first server consumes the head and fails: the retry sends lb's kept copy to the second.
    let (dropper, dropped) = head_dropper().await;
    let b = Backend::start("b").await;
    let lb =
        Lb::start(&config_with(&[("a", dropper), ("b", b.addr)], "[pools.web.passive]\nenabled = false\n"))
            .await;
    let client = client();
    for i in 0..4 {
        let req = http::Request::get(lb.url("/some/path?q=1&r=two"))
            .header("x-request-id", format!("req-{i}"))
            .header("x-multi", "one")
            .header("accept", "text/plain")
            .header("x-multi", "two")
            .header("x-custom", "value with spaces")
            .header("authorization", "Bearer secret")
            .header("x-multi", "three")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
    }
    assert!(dropped.load(Ordering::SeqCst) >= 1, "no request went to the failing server first");
    let heads = b.seen.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4);
    // Retried or not, the second server saw the same head (only the request id differs).
    let fields = |h: &http::request::Parts| {
        let mut f: Vec<(String, Vec<u8>)> = h
            .headers
            .iter()
            .filter(|(n, _)| *n != "x-request-id")
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        f.sort();
        (h.method.clone(), h.uri.to_string(), f)
    };
    for head in &heads {
        assert_eq!(fields(head), fields(&heads[0]));
        assert_eq!(head.uri, "/some/path?q=1&r=two");
        let multi: Vec<_> = head.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two", "three"], "values of one name keep their order");
        assert_eq!(head.headers["x-custom"], "value with spaces");
        assert_eq!(head.headers["authorization"], "Bearer secret");
        assert!(head.headers.contains_key("x-forwarded-for"));
    }
}

#[tokio::test]
async fn a_post_is_retried_when_nothing_was_sent() {
    let alive = Backend::start("alive").await;
    let lb = Lb::start(&config_with(
        &[("dead", closed_port().await), ("alive", alive.addr)],
        "[pools.web.passive]\nenabled = false\n",
    ))
    .await;
    let client = client();
    for i in 0..4 {
        let body = format!("body {i}");
        let req = http::Request::builder()
            .method("POST")
            .uri(lb.url("/echo"))
            .body(Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, body.as_bytes(), "the body went whole to the live server");
    }
    assert_eq!(alive.requests(), 4);
}

/// `retry.on_status = [503]`: an idempotent request answered 503 goes to another server; a POST,
/// or a request that has run out of servers, gets the 503 the server sent.
#[tokio::test]
async fn a_503_is_retried_on_another_server_when_the_pool_asks() {
    let (sick, well) = (Backend::start("sick").await, Backend::start("well").await);
    sick.seen.sick.store(true, Ordering::SeqCst);
    let retrying = "[pools.web.retry]\non_status = [503]\n";
    let lb = Lb::start(&config_with(&[("sick", sick.addr), ("well", well.addr)], retrying)).await;
    let client = client();
    for i in 0..6 {
        let (status, body) = get(&client, &lb.url("/health")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "well"), "GET {i}");
    }
    assert_eq!(sick.requests(), 3, "every other GET met the sick server first, and was retried");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = http::Request::post(lb.url("/health")).body(Full::new(bytes::Bytes::new())).unwrap();
        statuses.push(client.request(req).await.unwrap().status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503], "a POST is never sent twice");

    well.seen.sick.store(true, Ordering::SeqCst);
    let (status, body) = get(&client, &lb.url("/health")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "sick"),
        "the last server's answer"
    );

    // Without `on_status`, a 503 is the client's answer, as before.
    let plain = Lb::start(&config_with(&[("sick", sick.addr)], "")).await;
    assert_eq!(get(&client, &plain.url("/health")).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn every_server_down_answers_503_at_once() {
    let (x, y) = (closed_port().await, closed_port().await);
    let lb = Lb::start(&config_with(
        &[("x", x), ("y", y)],
        "[pools.web.health]\ntype = \"tcp\"\ninitial = \"down\"\ninterval = \"1s\"\n",
    ))
    .await;
    let client = client();
    for _ in 0..3 {
        let start = Instant::now();
        let (status, _) = get(&client, &lb.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    }
    // Without checks, dead servers cost one connect attempt each, then a 502: still no hang.
    let lb = Lb::start(&config_with(&[("x", x), ("y", y)], "")).await;
    let start = Instant::now();
    let (status, _) = get(&client, &lb.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
}

#[tokio::test]
async fn passive_ejection_never_takes_more_than_its_share() {
    let backends: Vec<Backend> =
        futures_util::future::join_all(["a", "b", "c", "d"].map(Backend::start)).await;
    let servers: Vec<(&str, std::net::SocketAddr)> =
        backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let lb = Lb::start(&config_with(
        &servers,
        "[pools.web.passive]\non = [\"5xx\"]\nconsecutive = 2\nmax_ejected_percent = 50\n",
    ))
    .await;
    let client = client();
    for _ in 0..40 {
        let (status, _) = get(&client, &lb.url("/error")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "5xx answers are passed through");
    }
    let snap = lb.runtime.snapshot();
    let ejected = snap.pools[0].upstreams.iter().filter(|u| u.stats.health.is_ejected()).count();
    assert_eq!(ejected, 2, "half of 4 servers, never more");
    // The other half still serves.
    let (status, _) = get(&client, &lb.url("/")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn passive_ejection_takes_a_failing_server_out_and_lets_it_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dead = closed_port().await;
    let lb = Lb::start(&config_with(
        &[("a", a.addr), ("b", b.addr), ("dead", dead)],
        "[pools.web.passive]\nconsecutive = 3\nbase_ejection = \"300ms\"\n",
    ))
    .await;
    let client = client();
    let start = Instant::now();
    let mut sent = 0;
    while !server(&lb, "dead").stats.health.is_ejected() {
        let (status, _) = get(&client, &lb.url("/")).await;
        assert_eq!(status, StatusCode::OK, "connect failures are retried");
        sent += 1;
        assert!(sent < 100, "not ejected after {sent} requests");
    }
    eprintln!(
        "passive ejection after {sent} requests ({:?}); 3 consecutive connect failures",
        start.elapsed()
    );
    let back = until(&server(&lb, "dead"), Duration::from_secs(5), |u| !u.stats.health.is_ejected()).await;
    eprintln!("ejection (base 300ms) ended after {back:?}");
    assert!(back >= Duration::from_millis(200), "ejected for {back:?}");
}

/// Sends `n` concurrent GETs to `path`; returns their statuses.
async fn burst(client: &Client, url: String, n: usize) -> Vec<StatusCode> {
    let all = (0..n).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client.get(url.parse().unwrap()).await.map(|r| r.status()).unwrap_or(StatusCode::IM_A_TEAPOT)
        }
    });
    futures_util::future::join_all(all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_limits_hold_under_a_burst_and_the_queue_absorbs_it() {
    let delay = Duration::from_millis(100);
    let (a, b) = (Backend::start_with_delay("a", delay).await, Backend::start_with_delay("b", delay).await);
    let lb = Lb::start(&config_with(
        &[("a", a.addr), ("b", b.addr)],
        "[pools.web.limits]\nmax_requests = 3\nmax_connections = 3\nqueue = 100\nqueue_timeout = \"10s\"\n",
    ))
    .await;
    let statuses = burst(&client(), lb.url("/"), 40).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    for backend in [&a, &b] {
        let peak = backend.seen.peak_active.load(Ordering::SeqCst);
        let conns = backend.seen.peak_open.load(Ordering::SeqCst);
        eprintln!("{}: peak {peak} requests, {conns} connections at once (limit 3)", backend.name);
        assert!(peak <= 3 && conns <= 3, "{}: {peak} requests, {conns} connections", backend.name);
    }
    assert_eq!(a.requests() + b.requests(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_a_queue_timeout_answer_503_fast() {
    let delay = Duration::from_millis(1500);
    let a = Backend::start_with_delay("a", delay).await;
    let lb = Lb::start(&config_with(
        &[("a", a.addr)],
        "[pools.web.limits]\nmax_requests = 1\nqueue = 2\nqueue_timeout = \"200ms\"\n",
    ))
    .await;
    let start = Instant::now();
    let statuses = burst(&client(), lb.url("/"), 8).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count();
    assert_eq!((ok, refused), (1, 7), "{statuses:?}");
    assert_eq!(a.seen.peak_active.load(Ordering::SeqCst), 1);
    assert!(start.elapsed() < delay + Duration::from_secs(1), "took {:?}", start.elapsed());
}

/// The connector's own limit, without the strategies' in-flight gate in front: two concurrent
/// requests to a server limited to one connection share it in turn: the second waits for the first's
/// connection to come back idle rather than for the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_at_the_connector() {
    let a = Backend::start_with_delay("a", Duration::from_millis(200)).await;
    let config = lb::config::Config::from_toml(&config_with(
        &[("a", a.addr)],
        "[pools.web.limits]\nmax_connections = 1\n",
    ))
    .unwrap();
    let runtime = lb::runtime::Runtime::new(config.clone());
    let snap = runtime.snapshot();
    let server = &snap.pools[0].upstreams[0];
    let settings = lb::upstream::lease::ConnSettings {
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(60),
        idle_per_server: 8,
        apart: false,
    };
    let send = || async {
        let (mut head, body) =
            http::Request::get("/").body(lb::proxy::body::RequestBody::empty()).unwrap().into_parts();
        let (resp, lease) =
            lb::upstream::lease::send(runtime.conn_limits(), server, settings, &mut head, body, false)
                .await?;
        let status = resp.status();
        // Reading the body drives the connection to the end of the response; then it goes back idle.
        let mut body = lb::proxy::body::ResponseBody::stream(resp.into_body(), Duration::from_secs(5));
        if let Some(lease) = lease {
            body.drive(lease);
        }
        http_body_util::BodyExt::collect(body).await.map_err(|e| e.to_string()).ok();
        Ok::<_, lb::upstream::lease::SendError>(status)
    };
    let (first, second) = tokio::join!(send(), send());
    assert_eq!((first.unwrap(), second.unwrap()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a.seen.peak_open.load(Ordering::SeqCst), 1, "one connection at a time");
    assert_eq!(a.connections(), 1, "the second request reused the first one's connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_servers_under_load_costs_no_get() {
    for round in 0..3 {
        let (a, b) = (Backend::start("a").await, Backend::start("b").await);
        let lb = Lb::start(&config_with(&[("a", a.addr), ("b", b.addr)], "")).await;
        // Requests that take a few milliseconds, so several are in flight on b when it dies.
        let traffic = Traffic::start(lb.url("/slow?ms=3"), 16);
        traffic.pass(300).await;
        eventually(Duration::from_secs(5), || {
            let seen = Arc::clone(&b.seen);
            async move { seen.in_progress.load(Ordering::SeqCst) > 0 }
        })
        .await;
        let in_flight = b.seen.in_progress.load(Ordering::SeqCst);
        drop(b);
        traffic.pass(600).await;
        let (ok, failures) = traffic.finish().await;
        eprintln!("round {round}: b killed with {in_flight} requests in flight; {ok} ok, {failures:?}");
        assert!(failures.is_empty(), "client-visible failures: {failures:?}");
        drop(a);
    }
}
