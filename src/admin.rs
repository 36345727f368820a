//! The admin listener (default `127.0.0.1:9901`, loopback only unless configured): `GET /metrics`
//! (Prometheus text format), `GET /healthz` (the process is alive), `GET /readyz` (config loaded and
//! listeners bound; 503 once shutdown began), `GET /status` (JSON: generation, pools, servers with
//! readiness and in-flight counts). Plain hyper, one small handler: nothing here is on the proxy path.

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
}

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
                async move { Ok::<_, Infallible>(handle(&admin, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => match &admin.metrics {
            Some(handle) => {
                crate::metrics::refresh(&admin.runtime.snapshot());
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
            let mut resp =
                Response::new(Full::new(Bytes::from(status(&admin.runtime.snapshot()).to_string())));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /status\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// The `/status` document.
pub fn status(snap: &Snapshot) -> serde_json::Value {
    let pools: Vec<_> = snap
        .pools
        .iter()
        .map(|p| {
            let strategy =
                snap.config.pools.iter().find(|c| *c.name == *p.name).map(|c| format!("{:?}", c.strategy));
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
            let queued = p.stats.queued.load(std::sync::atomic::Ordering::Relaxed);
            let ejected = p.stats.ejected.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({
                "name": &*p.name,
                "strategy": strategy,
                "queued": queued,
                "ejected": ejected,
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({ "generation": snap.generation, "pools": pools })
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
