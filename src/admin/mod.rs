//! The admin listener (default `127.0.0.1:9901`, loopback only unless a token is configured):
//! `GET /` (the operators' console, [`console`]), `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process is alive), `GET /readyz` (config loaded and listeners bound; 503 once
//! shutdown began), `GET /status` (JSON: config, pools, servers with their live state, overrides and
//! traffic counters, [`status`]), `POST /reload` (reload the config file now; JSON answer with the
//! changes or the error), `POST /pools/{pool}/servers/{name}` (drain, park or re-weight a server,
//! [`servers`]) and `POST /diff` (a config in the body; answers what reloading it would change and
//! which runtime overrides stay in force, applying nothing). The two mutating endpoints pass the
//! [`guard`] rules first (token, Host, Origin, JSON). Plain hyper, one small handler: nothing here
//! is on the proxy path.

mod cache;
mod console;
pub mod guard;
pub mod servers;
pub mod status;

pub use status::{status, status_of, status_with, StatusQuery};

use crate::reload::{Reloader, Trigger};
use crate::runtime::Runtime;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::net::SocketAddr;
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
    /// Held by every admin connection (each holds a clone of `Admin`): a process handing over to a
    /// new one waits for its admin connections to end.
    pub open: Arc<()>,
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

/// An admin answer.
pub(crate) type Reply = Response<Full<Bytes>>;

/// Serves the admin endpoints on `listener` until the task is dropped, and runs metric upkeep.
pub async fn serve(listener: TcpListener, admin: Admin) {
    // Mutating requests must name this address in their Host (DNS rebinding protection).
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(e) => {
            tracing::error!(error = %e, "admin listener has no address; not serving it");
            return;
        }
    };
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
                async move { Ok::<_, Infallible>(handle(&admin, local, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(admin: &Admin, local: SocketAddr, req: Request<Incoming>) -> Reply {
    let server = servers::parse_path(req.uri().path());
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/reload") => {
            if let Some(refused) = refusal(admin, local, &req) {
                return refused;
            }
            return reload(admin).await;
        }
        (&Method::POST, "/diff") => return diff(admin, req).await,
        (&Method::POST, "/cache/purge") => {
            if let Some(refused) = refusal(admin, local, &req) {
                return refused;
            }
            return match read_body(req, cache::MAX_BODY).await {
                Ok(body) => cache::purge(&admin.runtime, &body).await,
                Err(refused) => *refused,
            };
        }
        (&Method::POST, _) if server.is_some() => {
            if let Some(refused) = refusal(admin, local, &req) {
                return refused;
            }
            let body = match read_body(req, servers::MAX_BODY).await {
                Ok(body) => body,
                Err(refused) => return *refused,
            };
            let (pool, name) = server.unwrap_or_default();
            return servers::apply(&admin.runtime, &pool, &name, &body);
        }
        (&Method::GET, _) if server.is_none() => {}
        (_, "/reload" | "/diff" | "/cache/purge") => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (_, _) if server.is_some() => return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET, or POST /reload, /diff, /cache/purge and /pools/...\n",
            )
        }
    }
    match req.uri().path() {
        "/" => console::page(),
        "/console.css" => console::stylesheet(),
        "/console.js" => console::script(),
        "/metrics" => match &admin.metrics {
            Some(handle) => {
                let snapshot = admin.runtime.snapshot();
                crate::metrics::refresh(&snapshot, &admin.runtime.overrides());
                snapshot.caches.iter().for_each(|c| {
                    c.usage();
                });
                crate::metrics::request_buffers(admin.runtime.request_buffers().held());
                handle.run_upkeep();
                // Only the series of what the current config has (see `live_only`).
                let text = crate::metrics::live_only(&handle.render(), &snapshot);
                let mut resp = Response::new(Full::new(Bytes::from(text)));
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
            let overrides = admin.runtime.overrides();
            let query = StatusQuery::parse(req.uri().query());
            let mut doc = status_with(&admin.runtime.snapshot(), &query, &overrides);
            if let Some(reloader) = &admin.reloader {
                reload_status(reloader, &mut doc);
            }
            json(StatusCode::OK, &doc)
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /, /metrics, /healthz, /readyz or /status\n"),
    }
}

/// Checks a mutating request against the [`guard`] rules: `Some` JSON answer if it is refused.
fn refusal(admin: &Admin, local: SocketAddr, req: &Request<Incoming>) -> Option<Reply> {
    let snap = admin.runtime.snapshot();
    guard::check(req.headers(), local, snap.config.admin_token.as_ref()).err().map(|refusal| {
        tracing::warn!(path = req.uri().path(), status = refusal.status.as_u16(), reason = %refusal.message,
            "admin request refused");
        let mut resp = json(refusal.status, &serde_json::json!({ "error": refusal.message }));
        if refusal.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    })
}

/// The whole request body, at most `max` bytes.
async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Box<Reply>> {
    use http_body_util::BodyExt;
    let refused = |status, error: String| Box::new(json(status, &serde_json::json!({ "error": error })));
    match http_body_util::Limited::new(req.into_body(), max).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(refused(StatusCode::PAYLOAD_TOO_LARGE, format!("a body of at most {max} bytes, please")))
        }
        Err(_) => Err(refused(StatusCode::BAD_REQUEST, "the body could not be read".to_owned())),
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
    let overrides = admin.runtime.overrides();
    let parsed = tokio::task::spawn_blocking(move || {
        crate::config::Config::from_toml(&src).map(|new| {
            let kept = overrides_in(&new, &overrides);
            (new.digest, crate::reload::diff(&old, &new), kept)
        })
    })
    .await;
    match parsed {
        Ok(Ok((digest, changes, overrides))) => {
            let doc = serde_json::json!({
                "result": "ok",
                "running": { "generation": snap.generation, "hash": snap.config.digest.to_string() },
                "hash": digest.to_string(),
                "changes": changes,
                "overrides": overrides,
            });
            json(StatusCode::OK, &doc)
        }
        Ok(Err(e)) => {
            json(StatusCode::BAD_REQUEST, &serde_json::json!({ "result": "error", "error": e.to_string() }))
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "validation failed\n"),
    }
}

/// One line per operator override, as `config` would find it: in force for a server it keeps (which
/// the file's own weight or state would not show), or dropped because the server leaves.
fn overrides_in(
    config: &crate::config::Config,
    overrides: &std::collections::HashMap<crate::upstream::UpstreamKey, crate::control::Override>,
) -> Vec<String> {
    let mut lines: Vec<String> = overrides
        .iter()
        .map(|(key, over)| {
            let server = config
                .pools
                .iter()
                .find(|p| *p.name == *key.pool)
                .and_then(|p| p.servers.iter().find(|s| *s.name == *key.name));
            match server {
                Some(s) => format!(
                    "pools.{}: server {:?}: runtime override in force: {}",
                    key.pool,
                    key.name,
                    over.describe(Some(s.weight))
                ),
                None => format!(
                    "pools.{}: server {:?}: runtime override dropped (the server leaves): {}",
                    key.pool,
                    key.name,
                    over.describe(None)
                ),
            }
        })
        .collect();
    lines.sort();
    lines
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
