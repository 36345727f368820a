//! Test fixtures: named upstream servers that count what they see, and lb started in-process on
//! 127.0.0.1 port 0. Nothing here sleeps to wait for state: readiness comes from bound sockets and
//! `eventually` polls with a bound.
#![allow(dead_code, unreachable_pub)]

pub mod pki;
pub mod redis;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb::config::Config;
use lb::runtime::Runtime;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What a backend has seen.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    /// Proxied requests: everything but lb's own health probes, which are counted in `probes`, so a
    /// probe arriving at any moment never changes what a test sees of the traffic it sent.
    pub requests: AtomicUsize,
    /// lb's active health probes (recognised by their `User-Agent: lb-health-check`).
    pub probes: AtomicUsize,
    /// Requests that reached the handler and are not yet answered.
    pub in_progress: AtomicUsize,
    /// Request heads, in arrival order.
    pub heads: Mutex<Vec<http::request::Parts>>,
    /// `/health` answers 503 while set.
    pub sick: std::sync::atomic::AtomicBool,
    /// Requests being handled now, and the most ever at once.
    pub active: AtomicUsize,
    pub peak_active: AtomicUsize,
    /// Connections open now, and the most ever at once.
    pub open: AtomicUsize,
    pub peak_open: AtomicUsize,
}

/// Counts one more in `now` and raises `peak` to it.
fn rise(now: &AtomicUsize, peak: &AtomicUsize) {
    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(n, Ordering::SeqCst);
}

/// A named upstream server on 127.0.0.1:0. Paths:
/// `/` answers its name; `/slow?ms=N` answers after N ms; `/big?bytes=N` streams N bytes;
/// `/echo` streams the request body back; `/sink` reads the whole body and answers its length; `/stall` sends a first chunk and then nothing; `/ws` switches protocols and echoes raw bytes;
/// `/health` answers 200, or 503 while `seen.sick`; `/error` answers 500; `/drop` reads the body and
/// then closes the connection without an answer.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before answering every request (a slow server).
    pub async fn start_with_delay(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener, delay)
    }

    /// A backend on a given address (a stopped server coming back).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(name, listener, Duration::ZERO)
    }

    /// A backend speaking TLS with `config` (HTTP/1.1, or HTTP/2 if its ALPN allows).
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_with(name, listener, Duration::ZERO, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    fn serve(name: &str, listener: TcpListener, delay: Duration) -> Self {
        Self::serve_with(name, listener, delay, None)
    }

    fn serve_with(
        name: &str,
        listener: TcpListener,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (n, s) = (name.to_owned(), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the backend closes them all (a real stop).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                rise(&s.open, &s.peak_open);
                let (n, s) = (n.clone(), Arc::clone(&s));
                let s2 = Arc::clone(&s);
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, s) = (n.clone(), Arc::clone(&s));
                        async move {
                            rise(&s.active, &s.peak_active);
                            if !delay.is_zero() {
                                s.in_progress.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(delay).await;
                                s.in_progress.fetch_sub(1, Ordering::SeqCst);
                            }
                            let result = if req.uri().path() == "/drop" {
                                s.requests.fetch_add(1, Ordering::SeqCst);
                                let _ = req.into_body().collect().await;
                                Err(std::io::Error::other("dropped on purpose"))
                            } else {
                                Ok(handle(n, Arc::clone(&s), req).await.unwrap_or_else(|e| match e {}))
                            };
                            s.active.fetch_sub(1, Ordering::SeqCst);
                            result
                        }
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                                    .await;
                            }
                        }
                    }
                    s2.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { name: name.to_owned(), addr, seen, task }
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn last_head(&self) -> http::request::Parts {
        self.seen.heads.lock().unwrap().last().cloned().expect("backend saw no request")
    }
}

/// Whether `req` is one of lb's active health probes rather than proxied traffic.
fn is_probe<B>(req: &Request<B>) -> bool {
    req.headers().get(http::header::USER_AGENT).is_some_and(|v| v == "lb-health-check")
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(
    name: String,
    seen: Arc<Seen>,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let probe = is_probe(&req);
    if probe {
        seen.probes.fetch_add(1, Ordering::SeqCst);
    } else {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        seen.heads.lock().unwrap().push(clone_parts(&req));
        seen.in_progress.fetch_add(1, Ordering::SeqCst);
    }
    let full = |s: String| Full::new(Bytes::from(s)).map_err(|e: Infallible| match e {}).boxed();
    let resp = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            Response::new(full(name))
        }
        "/big" => {
            let total = query_num(&req, "bytes");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = futures_frames(total, chunk);
            let mut resp = Response::new(StreamBody::new(frames).boxed());
            resp.headers_mut().insert("content-length", total.into());
            resp
        }
        "/stall" => {
            // Headers and a first chunk, then nothing, forever.
            let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"partial")))]);
            let frames = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            Response::new(StreamBody::new(frames).boxed())
        }
        "/health" if seen.sick.load(Ordering::SeqCst) => {
            let mut resp = Response::new(full("sick".into()));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
        "/error" => {
            let mut resp = Response::new(full("error".into()));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
        "/sink" => {
            // Reads the whole body, then answers with its length.
            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            Response::new(full(n.to_string()))
        }
        "/echo" => {
            let body = req.into_body().map_err(std::io::Error::other).boxed();
            Response::new(body)
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut resp = Response::new(full(String::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
            resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            resp
        }
        _ => {
            let mut resp = Response::new(full(name));
            resp.headers_mut().insert("connection", "x-backend-hop".parse().unwrap());
            resp.headers_mut().insert("x-backend-hop", "secret".parse().unwrap());
            resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
            // An end-to-end field a response header rule can remove.
            resp.headers_mut().insert("x-powered-by", "backend".parse().unwrap());
            resp
        }
    };
    if !probe {
        seen.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
    Ok(resp)
}

fn futures_frames(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send {
    let mut left = total;
    futures_util::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = left.min(chunk.len() as u64);
        left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n as usize)))))
    })
}

fn clone_parts(req: &Request<Incoming>) -> http::request::Parts {
    let mut b = Request::builder().method(req.method()).uri(req.uri()).version(req.version());
    for (k, v) in req.headers() {
        b = b.header(k, v);
    }
    b.body(()).unwrap().into_parts().0
}

/// An address nothing listens on: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub const QUIET_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An upstream answering every request on a connection with [`QUIET_RESPONSE`], allocating nothing
/// per request (for the tests that count lb's allocations).
pub async fn quiet_upstream() -> std::net::SocketAddr {
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
                        if s.write_all(QUIET_RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// lb served in-process from TOML text; its first listener is `addr`.
pub struct Lb {
    pub addr: SocketAddr,
    pub runtime: Arc<Runtime>,
    pub server: Arc<lb::server::Server>,
}

impl Lb {
    pub async fn start(toml: &str) -> Self {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        let runtime = Arc::new(Runtime::new(config));
        let server = lb::server::Server::start(Arc::clone(&runtime)).await.unwrap();
        let addr = server.listeners()[0].1;
        Self { addr, runtime, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits until connections are drained.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.server.close();
    }
}

/// `[[listeners]]` on port 0 plus one pool `web` of `servers` (as `(name, addr)`).
pub fn config_with(servers: &[(&str, SocketAddr)], extra: &str) -> String {
    let list: Vec<String> =
        servers.iter().map(|(n, a)| format!("{{ name = \"{n}\", addr = \"{a}\" }}")).collect();
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// GET `url`; returns status and the whole body as text.
pub async fn get(client: &Client, url: &str) -> (StatusCode, String) {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `method path` on `addr` with extra headers; the response with its whole body as text.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<String> {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, String::from_utf8_lossy(&body).into_owned())
}

/// Spawns an outside tool the test needs (`package`: its Debian package). Where it cannot run, the
/// test is skipped with a message (`None`), unless the environment variable `required` is set, as
/// `.ci/run` sets it: then the test fails.
pub fn spawn_tool(
    command: &mut std::process::Command,
    required: &str,
    package: &str,
) -> Option<std::process::Child> {
    match command.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            let program = command.get_program().to_string_lossy().into_owned();
            assert!(std::env::var_os(required).is_none(), "{program} required but not runnable: {e}");
            eprintln!("{program} not installed: skipped (apt-get install {package})");
            None
        }
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes (bounded by 10s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` with a second request smuggled behind it on one fresh connection, and checks that
/// lb answered the first with `status` and nothing more: one response, then the connection closed.
pub async fn refused_alone(addr: SocketAddr, request: &[u8], status: u16, what: &str) {
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = raw(addr, &bytes).await;
    assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{what}: {answer:?}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{what}: one answer, then close: {answer:?}");
}

/// Polls `check` every 10ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running `lb` binary, killed on drop.
pub struct LbProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The admin listener (always on port 0 in tests).
    pub admin: SocketAddr,
    /// lb's stdout after its startup lines: access-log lines, when enabled.
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Holds `lb.toml`, alone, so the reload watcher sees only its own events.
    dir: tempfile::TempDir,
}

impl LbProcess {
    /// Writes `toml` to a temporary file, starts `lb --config` on it and waits for its "listening"
    /// line (its readiness signal), which also tells the port-0 address.
    pub fn start(toml: &str) -> Self {
        Self::start_with(toml, std::process::Command::new(env!("CARGO_BIN_EXE_lb")))
    }

    /// As `start`, with lb alone on CPU 0 (`taskset`), so its runtime has one worker, as in the
    /// load benchmark's pinned runs.
    pub fn start_pinned(toml: &str) -> Self {
        let mut taskset = std::process::Command::new("taskset");
        taskset.args(["-c", "0", env!("CARGO_BIN_EXE_lb")]);
        Self::start_with(toml, taskset)
    }

    fn start_with(toml: &str, mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lb.toml");
        std::fs::write(&config, with_test_admin(toml)).unwrap();
        let mut child = command
            .args(["--config", config.to_str().unwrap()])
            .env("LB_LOG", std::env::var("TEST_LB_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("lb listening on http://")
            .unwrap_or_else(|| panic!("{line:?}"))
            .parse()
            .unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let admin = line
            .trim()
            .strip_prefix("lb admin on http://")
            .unwrap_or_else(|| panic!("{line:?}"))
            .parse()
            .unwrap();
        Self { child, addr, admin, stdout, dir }
    }

    /// The config file lb was started with (and reloads).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// Replaces the config file the way editors do: a new file renamed over the old one.
    pub fn replace_config(&self, toml: &str) {
        let tmp = self.dir.path().join(".lb.toml.swp");
        std::fs::write(&tmp, with_test_admin(toml)).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// `POST {path}` on the admin listener (as JSON, the content type mutating endpoints require):
    /// status and the JSON answer.
    pub async fn admin_post(&self, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::post(format!("http://{}{path}", self.admin))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&body))),
        )
    }

    /// The admin `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = get(&client(), &format!("http://{}/status", self.admin)).await;
        serde_json::from_str(&body).unwrap()
    }

    /// The value of the metric line that starts with `series` (name and labels as rendered).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = get(&client(), &format!("http://{}/metrics", self.admin)).await;
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }
}

/// Puts the admin listener on port 0 (unless the config sets one), so parallel tests never collide
/// on the default 127.0.0.1:9901.
pub fn with_test_admin(toml: &str) -> String {
    if toml.contains("[admin]") {
        toml.to_owned()
    } else {
        format!("{toml}\n[admin]\naddr = \"127.0.0.1:0\"\n")
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `backend` holds at least `n` requests in progress.
pub async fn wait_in_progress(backend: &Backend, n: usize) {
    let seen = backend.seen.clone();
    eventually(Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { seen.in_progress.load(Ordering::SeqCst) >= n }
    })
    .await;
}

/// Reads a response head byte by byte (so nothing after it is consumed), lowercased.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before the head ended");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// Steady GET traffic from `loops` clients until stopped; counts answers and collects failures.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    pub fn start(url: String, loops: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..loops)
            .map(|_| {
                let (url, stop, ok, client) = (url.clone(), Arc::clone(&stop), Arc::clone(&ok), client());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    // Bounded: at most 60s or 200k requests, whichever comes first.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                            break;
                        }
                        match client.get(url.parse().unwrap()).await {
                            Ok(resp) if resp.status() == StatusCode::OK => {
                                let _ = resp.into_body().collect().await;
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(resp) => failures.push(format!("status {}", resp.status())),
                            Err(e) => failures.push(format!("error {e}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { stop, ok, tasks }
    }

    /// Waits until `n` more requests were answered OK.
    pub async fn pass(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let ok = Arc::clone(&self.ok);
        eventually(Duration::from_secs(20), || {
            let ok = Arc::clone(&ok);
            async move { ok.load(Ordering::SeqCst) >= target }
        })
        .await;
    }

    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::SeqCst), failures)
    }
}
