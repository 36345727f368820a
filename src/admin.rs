//! The admin listener (default `127.0.0.1:9901`, loopback only unless configured): `GET /metrics`
//! (Prometheus text format), `GET /healthz` (the process is alive), `GET /readyz` (config loaded and
//! listeners bound; 503 once shutdown began), `GET /status` (JSON: config generation and hash, last
//! reload, listeners, pools, servers with readiness and in-flight counts), `POST /reload` (reload the
//! config file now; JSON answer with the changes or the error), and `POST /diff` (a config in the
//! body; answers what reloading it would change, applying nothing). Plain hyper, one small handler:
//! nothing here is on the proxy path.

use crate::reload::{Reloader, Trigger};
use crate::runtime::{Runtime, Snapshot};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The live configuration and server state.
    pub runtime: Arc<Runtime>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// False once shutdown began: `/readyz` then answers 503 so load balancers in front drain us.
    pub ready: Arc<AtomicBool>,
    /// Serves `POST /reload` and the reload and listener parts of `/status`; `None` without a file.
    pub reloader: Option<Arc<Reloader>>,
}

/// Largest config accepted by `POST /diff`.
const MAX_DIFF_BODY: usize = 1 << 20;

/// Time an admin client has to send its request head (and idle time between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often histogram samples are folded into their buckets. The exporter keeps raw samples until
/// upkeep runs, so without this a process nobody scrapes would grow without bound.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves the admin endpoints on `listener` until the task is dropped, and runs metric upkeep.
pub async fn serve(listener: TcpListener, admin: Admin) {
    if let Some(handle) = admin.metrics.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/reload") => return reload(admin).await,
        (&Method::POST, "/diff") => return diff(admin, req).await,
        (&Method::GET, _) => {}
        (_, "/reload" | "/diff") => return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "only GET, or POST /reload and /diff\n"),
    }
    match req.uri().path() {
        "/metrics" => match &admin.metrics {
            Some(handle) => {
                crate::metrics::refresh(&admin.runtime.snapshot());
                crate::metrics::request_buffers(admin.runtime.request_buffers().held());
                handle.run_upkeep();
                let mut resp = Response::new(Full::new(Bytes::from(handle.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if admin.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        "/status" => {
            let mut doc = status_of(&admin.runtime.snapshot(), &StatusQuery::parse(req.uri().query()));
            if let Some(reloader) = &admin.reloader {
                reload_status(reloader, &mut doc);
            }
            json(StatusCode::OK, &doc)
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /status\n"),
    }
}

fn json(status: StatusCode, doc: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{doc}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

/// `POST /reload`: 200 with the generation and changes, or 400 (invalid file) / 500 (a listener
/// could not be bound) with the reason; the running config stays on any error.
async fn reload(admin: &Admin) -> Response<Full<Bytes>> {
    let Some(reloader) = &admin.reloader else {
        return text(StatusCode::NOT_FOUND, "this lb has no config file to reload\n");
    };
    match reloader.reload(Trigger::Admin).await {
        Ok(applied) => json(
            StatusCode::OK,
            &serde_json::json!({
                "result": "ok",
                "generation": applied.generation,
                "hash": applied.digest.to_string(),
                "changes": applied.changes,
            }),
        ),
        Err(e) => {
            let status = match e {
                crate::reload::ReloadError::Config(_) => StatusCode::BAD_REQUEST,
                crate::reload::ReloadError::Listen(_) => StatusCode::INTERNAL_SERVER_ERROR,
                crate::reload::ReloadError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            json(status, &serde_json::json!({ "result": "error", "error": e.to_string() }))
        }
    }
}

/// `POST /diff` with a config as the body: what reloading it would change against the running one.
/// Nothing is applied. 400 with every problem if the config is invalid.
async fn diff(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), MAX_DIFF_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "a config of at most 1 MiB, please\n")
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "the request body could not be read\n"),
    };
    let Ok(src) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the config is not UTF-8\n");
    };
    // Validation may read files the config names (secret files) and diffing rebuilds hash rings:
    // both off the async workers.
    let src = src.to_owned();
    let snap = admin.runtime.snapshot();
    let old = Arc::clone(&snap.config);
    let parsed = tokio::task::spawn_blocking(move || {
        crate::config::Config::from_toml(&src).map(|new| (new.digest, crate::reload::diff(&old, &new)))
    })
    .await;
    match parsed {
        Ok(Ok((digest, changes))) => {
            let doc = serde_json::json!({
                "result": "ok",
                "running": { "generation": snap.generation, "hash": snap.config.digest.to_string() },
                "hash": digest.to_string(),
                "changes": changes,
            });
            json(StatusCode::OK, &doc)
        }
        Ok(Err(e)) => {
            json(StatusCode::BAD_REQUEST, &serde_json::json!({ "result": "error", "error": e.to_string() }))
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "validation failed\n"),
    }
}

/// Adds the config file, the last reload and the listeners to a `/status` document.
fn reload_status(reloader: &Reloader, doc: &mut serde_json::Value) {
    let last = reloader.last().map(|l| {
        let at = l.at.duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        serde_json::json!({ "at_unix": at, "trigger": l.trigger.as_str(), "error": l.error })
    });
    let listeners: Vec<_> = reloader
        .server()
        .listeners()
        .into_iter()
        .map(|(configured, local)| serde_json::json!({ "addr": configured, "bound": local }))
        .collect();
    if let Some(config) = doc.get_mut("config") {
        config["file"] = serde_json::json!(reloader.path().display().to_string());
        config["last_reload"] = serde_json::json!(last);
    }
    doc["listeners"] = serde_json::json!(listeners);
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// What a `/status` request asks for: `?pool=NAME` keeps one pool, `?summary` counts each pool's
/// servers instead of listing them (10,000 servers list as about 1.3 MB).
#[derive(Debug, Default)]
pub struct StatusQuery<'a> {
    /// Only this pool.
    pub pool: Option<&'a str>,
    /// Counts instead of server lists.
    pub summary: bool,
}

impl<'a> StatusQuery<'a> {
    /// From a URI query such as `pool=web&summary`; unknown parameters are ignored.
    pub fn parse(query: Option<&'a str>) -> Self {
        let mut q = Self::default();
        for param in query.unwrap_or("").split('&') {
            match param.split_once('=') {
                Some(("pool", name)) => q.pool = Some(name),
                None if param == "summary" => q.summary = true,
                Some(("summary", v)) => q.summary = v != "false" && v != "0",
                _ => {}
            }
        }
        q
    }
}

/// The whole `/status` document.
pub fn status(snap: &Snapshot) -> serde_json::Value {
    status_of(snap, &StatusQuery::default())
}

/// The `/status` document, or the part of it `query` asks for.
pub fn status_of(snap: &Snapshot, query: &StatusQuery<'_>) -> serde_json::Value {
    let pools: Vec<_> = snap
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| query.pool.is_none_or(|name| *p.name == *name))
        .map(|(i, p)| {
            // Snapshot pools are in config order: look by index first, so 10,000 pools stay linear.
            let config = snap.config.pools.get(i).filter(|c| *c.name == *p.name);
            let config = config.or_else(|| snap.config.pools.iter().find(|c| *c.name == *p.name));
            let strategy = config.map(|c| c.strategy.name());
            let queued = p.stats.queued.load(std::sync::atomic::Ordering::Relaxed);
            let ejected = p.stats.ejected.load(std::sync::atomic::Ordering::Relaxed);
            if query.summary {
                return serde_json::json!({
                    "name": &*p.name,
                    "strategy": strategy,
                    "queued": queued,
                    "ejected": ejected,
                    "servers": p.upstreams.len(),
                    "ready": p.upstreams.iter().filter(|u| u.is_ready()).count(),
                    "in_flight": p.upstreams.iter().map(|u| u.stats.in_flight()).sum::<usize>(),
                });
            }
            let servers: Vec<_> = p
                .upstreams
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "name": &*u.key.name,
                        "addr": u.addr,
                        "weight": u.weight,
                        "ready": u.is_ready(),
                        "health": health_state(u),
                        "warmup_permille": u.stats.health.warmup(),
                        "in_flight": u.stats.in_flight(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": &*p.name,
                "strategy": strategy,
                "queued": queued,
                "ejected": ejected,
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({
        "generation": snap.generation,
        "config": { "generation": snap.generation, "hash": snap.config.digest.to_string() },
        "pools": pools,
    })
}

/// `up`, `down` (active checks fail), `ejected` (passive checks) or `down+ejected`.
fn health_state(u: &crate::upstream::Upstream) -> &'static str {
    match (u.checked && u.stats.health.is_down(), u.stats.health.is_ejected()) {
        (false, false) => "up",
        (true, false) => "down",
        (false, true) => "ejected",
        (true, true) => "down+ejected",
    }
}
