//! Response caching on real sockets: an origin that counts its requests and answers with the
//! caching fields each test asks for (in the query), the real balancer in front of it.

mod common;

use bytes::Bytes;
use common::{config_with, eventually, request, Lb, LbProcess};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An origin: `GET /anything?cc=...&etag=...&vary=...&cookie=1&size=N&delay=ms` answers with those
/// fields (`cc` is Cache-Control), a body naming how many times it was asked, and `304` to a
/// matching `If-None-Match`. It fails every request with 500 while `failing` is set.
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    conditional: Arc<AtomicUsize>,
}

impl Origin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let total = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let conditional = Arc::new(AtomicUsize::new(0));
        let (h, t, f, c) = (hits.clone(), total.clone(), failing.clone(), conditional.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (h, t, f, c) = (h.clone(), t.clone(), f.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (h, t, f, c) = (h.clone(), t.clone(), f.clone(), c.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &h, &t, &f, &c).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, total, failing, conditional }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn answer(
    req: Request<Incoming>,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
    failing: &AtomicBool,
    conditional: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let n = {
        let mut hits = hits.lock().unwrap();
        let n = hits.entry(target.clone()).or_insert(0);
        *n += 1;
        *n
    };
    total.fetch_add(1, Ordering::SeqCst);
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",").replace("%20", " ")))
        .collect();
    if let Some(ms) = query.get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if failing.load(Ordering::SeqCst) {
        return Response::builder().status(500).body(Full::new(Bytes::from("down"))).unwrap();
    }
    let mut resp = Response::builder().header("x-count", n.to_string());
    if let Some(cc) = query.get("cc") {
        resp = resp.header("cache-control", cc.as_str());
    }
    if let Some(vary) = query.get("vary") {
        resp = resp.header("vary", vary.as_str());
        let seen =
            req.headers().get(vary.as_str()).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        resp = resp.header("x-varied", seen);
    }
    if query.contains_key("cookie") {
        resp = resp.header("set-cookie", format!("session=s{n}"));
    }
    if let Some(etag) = query.get("etag") {
        let etag = format!("\"{etag}\"");
        if req.headers().get("if-none-match").is_some_and(|v| v.to_str().unwrap().contains(&etag)) {
            conditional.fetch_add(1, Ordering::SeqCst);
            return resp
                .status(304)
                .header("etag", etag)
                .header("x-fresh-field", "new")
                .body(Full::default())
                .unwrap();
        }
        resp = resp.header("etag", etag);
    }
    let body = match query.get("size").and_then(|s| s.parse::<usize>().ok()) {
        Some(size) => Bytes::from(vec![b'x'; size]),
        None => Bytes::from(format!("answer {n}")),
    };
    resp.body(Full::new(body)).unwrap()
}

fn cached_config(origin: &Origin, cache: &str) -> String {
    config_with(
        &[("o", origin.addr)],
        &format!("[[routes]]\npool = \"web\"\ncache = \"c\"\n\n[caches.c]\n{cache}\n"),
    )
}

fn status_of(resp: &Response<String>) -> String {
    resp.headers().get("cache-status").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_its_age() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/a?cc=max-age%3D60";
    let first = request(lb.addr, "GET", path, &[]).await;
    assert_eq!((first.status(), first.body().as_str()), (StatusCode::OK, "answer 1"));
    assert_eq!(status_of(&first), "lb; fwd=miss; stored");
    let second = request(lb.addr, "GET", path, &[]).await;
    assert_eq!(second.body(), "answer 1");
    assert_eq!(status_of(&second), "lb; hit");
    assert!(second.headers().contains_key("age"));
    // HEAD is answered from the stored GET, with its length and no body.
    let head = request(lb.addr, "HEAD", path, &[]).await;
    assert_eq!(
        (head.status(), head.body().as_str(), status_of(&head).as_str()),
        (StatusCode::OK, "", "lb; hit")
    );
    assert_eq!(head.headers()["content-length"], "8");
    assert_eq!(origin.hits(path), 1);
    // Another URL is another object; a request that forbids stored answers bypasses it.
    assert_eq!(request(lb.addr, "GET", "/b?cc=max-age%3D60", &[]).await.body(), "answer 1");
    let bypass = request(lb.addr, "GET", path, &[("cache-control", "no-store")]).await;
    assert_eq!((bypass.body().as_str(), status_of(&bypass).as_str()), ("answer 2", "lb; fwd=request"));
}

#[tokio::test]
async fn what_rfc_9111_forbids_is_never_stored() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    for path in [
        "/no-store?cc=no-store",
        "/private?cc=private%2C%20max-age%3D60",
        "/silent",
        "/cookie?cc=max-age%3D60&cookie=1",
    ] {
        request(lb.addr, "GET", path, &[]).await;
        let again = request(lb.addr, "GET", path, &[]).await;
        assert_eq!(again.body(), "answer 2", "{path} was served from the cache");
    }
    // A request with credentials is stored only when the response says it may be shared.
    let auth = [("authorization", "Basic dTpw")];
    for _ in 0..2 {
        request(lb.addr, "GET", "/auth?cc=max-age%3D60", &auth).await;
    }
    assert_eq!(origin.hits("/auth?cc=max-age%3D60"), 2);
    for _ in 0..2 {
        request(lb.addr, "GET", "/auth-public?cc=public%2C%20max-age%3D60", &auth).await;
    }
    assert_eq!(origin.hits("/auth-public?cc=public%2C%20max-age%3D60"), 1);
}

#[tokio::test]
async fn set_cookie_responses_are_stored_only_when_allowed_and_never_with_the_cookie() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "allow_set_cookie = true")).await;
    let path = "/cookie?cc=max-age%3D60&cookie=1";
    let first = request(lb.addr, "GET", path, &[]).await;
    assert_eq!(
        first.headers()["set-cookie"],
        "session=s1",
        "the client that caused the fetch gets its cookie"
    );
    let second = request(lb.addr, "GET", path, &[]).await;
    assert_eq!((second.body().as_str(), status_of(&second).as_str()), ("answer 1", "lb; hit"));
    assert!(!second.headers().contains_key("set-cookie"), "another client got the first one's cookie");
}

#[tokio::test]
async fn each_vary_variant_is_stored_apart() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/v?cc=max-age%3D60&vary=accept-language";
    for lang in ["en", "fr", "en", "fr"] {
        let resp = request(lb.addr, "GET", path, &[("accept-language", lang)]).await;
        assert_eq!(resp.headers()["x-varied"], lang);
    }
    assert_eq!(origin.hits(path), 2);
}

#[tokio::test]
async fn a_stale_object_is_revalidated_and_a_304_renews_it_with_the_merged_head() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/r?cc=max-age%3D0&etag=v1";
    request(lb.addr, "GET", path, &[]).await;
    let again = request(lb.addr, "GET", path, &[]).await;
    assert_eq!((again.status(), again.body().as_str()), (StatusCode::OK, "answer 1"));
    assert_eq!(status_of(&again), "lb; fwd=stale; fwd-status=304");
    assert_eq!(again.headers()["x-fresh-field"], "new", "the 304's fields are merged");
    assert_eq!(origin.conditional.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn within_stale_while_revalidate_the_stale_object_is_served_and_one_refresh_goes_upstream() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/swr?cc=max-age%3D0%2C%20stale-while-revalidate%3D600&delay=200";
    assert_eq!(request(lb.addr, "GET", path, &[]).await.body(), "answer 1");
    // Ten clients at once, while the refresh takes 200 ms: all served at once, from the cache.
    let answers = futures_util::future::join_all((0..10).map(|_| request(lb.addr, "GET", path, &[]))).await;
    for resp in &answers {
        assert_eq!(resp.body(), "answer 1");
        assert_eq!(status_of(resp), "lb; hit; detail=stale-while-revalidate");
    }
    eventually(Duration::from_secs(5), || async { origin.hits(path) == 2 }).await;
    // The refresh replaced the object.
    eventually(Duration::from_secs(5), || async {
        request(lb.addr, "GET", path, &[]).await.body() == "answer 2"
    })
    .await;
}

#[tokio::test]
async fn within_stale_if_error_a_failing_origin_is_hidden_behind_the_stale_object() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/sie?cc=max-age%3D0%2C%20stale-if-error%3D600";
    request(lb.addr, "GET", path, &[]).await;
    origin.failing.store(true, Ordering::SeqCst);
    let resp = request(lb.addr, "GET", path, &[]).await;
    assert_eq!((resp.status(), resp.body().as_str()), (StatusCode::OK, "answer 1"));
    assert_eq!(status_of(&resp), "lb; hit; fwd=stale; fwd-status=500; detail=stale-if-error");
    // Without the directive, the failure is the answer.
    let plain = "/plain?cc=max-age%3D0&etag=e";
    origin.failing.store(false, Ordering::SeqCst);
    request(lb.addr, "GET", plain, &[]).await;
    origin.failing.store(true, Ordering::SeqCst);
    assert_eq!(request(lb.addr, "GET", plain, &[]).await.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // The origin cannot be reached at all (a reload moved the pool to a closed port; the cache,
    // its settings unchanged, keeps its objects): refused connections, then no usable server.
    let down = "/down?cc=max-age%3D0%2C%20stale-if-error%3D600";
    origin.failing.store(false, Ordering::SeqCst);
    request(lb.addr, "GET", down, &[]).await;
    let closed = common::closed_port().await;
    let moved = config_with(&[("o", closed)], "[[routes]]\npool = \"web\"\ncache = \"c\"\n\n[caches.c]\n");
    lb.runtime.apply(lb::config::Config::from_toml(&moved).unwrap());
    for _ in 0..3 {
        let resp = request(lb.addr, "GET", down, &[]).await;
        assert_eq!((resp.status(), resp.body().as_str()), (StatusCode::OK, "answer 1"));
        assert_eq!(status_of(&resp), "lb; hit; fwd=stale; detail=stale-if-error");
    }
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/hot?cc=max-age%3D60&delay=300";
    let answers = futures_util::future::join_all((0..100).map(|_| request(lb.addr, "GET", path, &[]))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::OK && r.body() == "answer 1"));
    assert_eq!(origin.hits(path), 1);
    assert_eq!(origin.total.load(Ordering::SeqCst), 1);
    let collapsed = answers.iter().filter(|r| status_of(r) == "lb; hit; collapsed").count();
    assert!(collapsed > 0, "no request waited for the first one's fetch");
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/doc?cc=max-age%3D60";
    request(lb.addr, "GET", path, &[]).await;
    assert_eq!(status_of(&request(lb.addr, "GET", path, &[]).await), "lb; hit");
    request(lb.addr, "POST", path, &[]).await;
    let after = request(lb.addr, "GET", path, &[]).await;
    assert_eq!((after.body().as_str(), status_of(&after).as_str()), ("answer 3", "lb; fwd=miss; stored"));
}

#[tokio::test]
async fn an_object_over_the_size_limit_is_passed_through_whole_and_not_stored() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "max_object_size = 1024")).await;
    let path = "/big?cc=max-age%3D60&size=4096";
    for _ in 0..2 {
        let resp = request(lb.addr, "GET", path, &[]).await;
        assert_eq!(resp.body().len(), 4096);
    }
    assert_eq!(origin.hits(path), 2);
    // Streamed without a length: the copy stops at the limit and nothing is stored.
    let small = "/small?cc=max-age%3D60&size=1000";
    for _ in 0..2 {
        request(lb.addr, "GET", small, &[]).await;
    }
    assert_eq!(origin.hits(small), 1);
}

#[tokio::test]
async fn a_flood_of_distinct_urls_stays_within_max_size_and_purge_empties_the_cache() {
    let origin = Origin::start().await;
    let lb = LbProcess::start(&cached_config(&origin, "max_size = 65536\nmax_object_size = 2048"));
    for i in 0..300 {
        request(lb.addr, "GET", &format!("/k{i}?cc=max-age%3D600&size=1024"), &[]).await;
    }
    let bytes = lb.metric("lb_cache_bytes{cache=\"c\"}").await.unwrap();
    assert!(bytes <= 65536.0, "{bytes} bytes stored over a 64 KiB cache");
    assert!(lb.metric("lb_cache_evictions_total{cache=\"c\"}").await.unwrap() > 0.0);
    // Purge by URL, then by prefix, on the admin listener.
    let url = "/k299?cc=max-age%3D600&size=1024";
    // A full cache admits a URL once it is asked for more often than what it would evict (TinyLFU).
    let mut hit = false;
    for _ in 0..20 {
        if status_of(&request(lb.addr, "GET", url, &[]).await) == "lb; hit" {
            hit = true;
            break;
        }
    }
    assert!(hit, "a URL asked for 20 times was never stored");
    let (status, doc) = lb
        .admin_post(
            "/cache/purge",
            &format!("{{\"cache\": \"c\", \"url\": \"http://127.0.0.1:{}{url}\"}}", lb.addr.port()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(status_of(&request(lb.addr, "GET", url, &[]).await), "lb; fwd=miss; stored");
    let (status, doc) = lb.admin_post("/cache/purge", "{\"cache\": \"c\", \"prefix\": \"http://\"}").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(status_of(&request(lb.addr, "GET", url, &[]).await), "lb; fwd=miss; stored");
    let (status, _) = lb.admin_post("/cache/purge", "{\"cache\": \"nope\", \"prefix\": \"/\"}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn cache_settings_are_validated_with_their_key_paths() {
    let bad = "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{ addr = \"127.0.0.1:1\" }]\n\n[[routes]]\npool = \"web\"\ncache = \"missing\"\n\n[caches.c]\nmax_object_size = \"2MiB\"\nmax_size = \"1MiB\"\nmethods = [\"POST\"]\n";
    let err = lb::config::Config::from_toml(bad).unwrap_err().to_string();
    assert!(err.contains("routes[0].cache: unknown cache \"missing\""), "{err}");
    assert!(err.contains("caches.c.max_object_size"), "{err}");
    assert!(err.contains("caches.c.methods[0]: \"POST\": only GET and HEAD are cached"), "{err}");
}

/// Two lb processes with one shared tier in a real `redis-server`.
fn shared_config(origin: &Origin, redis: SocketAddr) -> String {
    config_with(
        &[("o", origin.addr)],
        &format!(
            "[[routes]]\npool = \"web\"\ncache = \"c\"\n\n[caches.c]\nredis = true\n\n\
             [redis]\nnodes = [\"{redis}\"]\ntimeout = \"200ms\"\nbreaker = \"300ms\"\n"
        ),
    )
}

#[tokio::test]
async fn two_lb_processes_share_one_cache_through_redis_and_go_on_alone_without_it() {
    let Some(redis) = common::redis::Redis::start().await else { return };
    let origin = Origin::start().await;
    let toml = shared_config(&origin, redis.addr);
    let (a, b) = (LbProcess::start(&toml), LbProcess::start(&toml));
    let path = "/shared?cc=max-age%3D600";
    // One name for the fleet, as clients use it (each process has its own port here).
    const HOST: &[(&str, &str)] = &[("host", "shop.example")];
    assert_eq!(status_of(&request(a.addr, "GET", path, HOST).await), "lb; fwd=miss; stored");
    // The write to Redis is made in the background: b finds it once it is there.
    let mut shared = None;
    for _ in 0..50 {
        let resp = request(b.addr, "GET", path, HOST).await;
        if status_of(&resp) == "lb; hit; detail=shared" {
            shared = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shared = shared.expect("b never found a's object in Redis");
    assert_eq!(shared.body(), "answer 1");
    // b keeps it in its own cache now.
    assert_eq!(status_of(&request(b.addr, "GET", path, HOST).await), "lb; hit");
    // A purge through one instance removes the shared copy (its own copy too; b keeps its own
    // until it expires or is purged there).
    let url = format!("http://shop.example{path}");
    let (status, _) = a.admin_post("/cache/purge", &format!("{{\"url\": \"{url}\"}}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_of(&request(a.addr, "GET", path, HOST).await), "lb; fwd=miss; stored");
    assert_eq!(origin.hits(path), 2);

    // Redis gone: both go on with their own caches.
    drop(redis);
    let alone = "/alone?cc=max-age%3D600";
    for lb in [&a, &b] {
        assert_eq!(request(lb.addr, "GET", alone, HOST).await.status(), StatusCode::OK);
        assert_eq!(status_of(&request(lb.addr, "GET", alone, HOST).await), "lb; hit");
    }
    assert_eq!(origin.hits(alone), 2);
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_stores_nothing_partial() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/long?cc=max-age%3D60&size=600000";
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    assert!(s.read(&mut first).await.unwrap() > 0);
    drop(s);
    // Whatever the next request gets (the cache's copy or the origin's), it is the whole body.
    for _ in 0..3 {
        let resp = request(lb.addr, "GET", path, &[]).await;
        assert_eq!(resp.body().len(), 600_000);
    }
}

#[tokio::test]
async fn vary_cookie_matches_the_whole_cookie_even_when_split_in_crumbs() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let path = "/private-ish?cc=public%2C%20max-age%3D60&vary=cookie";
    let victim = request(lb.addr, "GET", path, &[("cookie", "consent=1"), ("cookie", "session=V")]).await;
    assert_eq!(victim.body(), "answer 1");
    let other = request(lb.addr, "GET", path, &[("cookie", "consent=1")]).await;
    assert_eq!(other.body(), "answer 2", "a client with part of the cookie got the victim's page");
}

#[tokio::test]
async fn default_ttl_never_overrides_no_cache_nor_a_client_asking_for_a_newer_answer() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "default_ttl = \"60s\"")).await;
    // The origin says no-cache: each reuse is revalidated (here: refetched, no validator).
    let no_cache = "/nc?cc=no-cache";
    for _ in 0..2 {
        request(lb.addr, "GET", no_cache, &[]).await;
    }
    assert_eq!(origin.hits(no_cache), 2);
    // Fresh by default_ttl only: a client's max-age=0 or no-cache goes to the origin.
    let silent = "/quiet";
    request(lb.addr, "GET", silent, &[]).await;
    assert_eq!(status_of(&request(lb.addr, "GET", silent, &[]).await), "lb; hit");
    request(lb.addr, "GET", silent, &[("cache-control", "max-age=0")]).await;
    request(lb.addr, "GET", silent, &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.hits(silent), 3);
}

#[tokio::test]
async fn empty_bodies_are_stored_and_upgrades_bypass_the_cache() {
    let origin = Origin::start().await;
    let lb = Lb::start(&cached_config(&origin, "")).await;
    let empty = "/empty?cc=max-age%3D60&size=0";
    request(lb.addr, "GET", empty, &[]).await;
    let again = request(lb.addr, "GET", empty, &[]).await;
    assert_eq!((again.body().as_str(), status_of(&again).as_str()), ("", "lb; hit"));
    let upgrade =
        request(lb.addr, "GET", empty, &[("connection", "upgrade"), ("upgrade", "websocket")]).await;
    assert_ne!(status_of(&upgrade), "lb; hit");
    assert_eq!(origin.hits(empty), 2);
}
