//! Listeners: accept, limit concurrent connections, serve HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! with hyper, and drain gracefully on shutdown.
//!
//! Shutdown: accept loops stop, every connection is told to finish (HTTP/1 closes after its current
//! response, HTTP/2 sends GOAWAY), and [`serve`] returns once all connections are gone or the drain
//! timeout has passed.

mod idle;

pub use idle::{ActiveRequest, Activity, IdleIo};

use crate::config::Config;
use crate::proxy::{self, Proxy, Shared};
use crate::runtime::Runtime;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How often an HTTP/2 client connection is pinged, and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds every configured listener. Binding happens before serving so that the caller can report the
/// bound addresses (port 0 picks a free port) and fail fast on a taken port.
pub async fn bind(config: &Config) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.addr)))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `listeners` with the runtime's current config until `shutdown` completes, then drains.
pub async fn serve(listeners: Vec<TcpListener>, runtime: Arc<Runtime>, shutdown: impl Future<Output = ()>) {
    let config = Arc::clone(&runtime.snapshot().config);
    let client = proxy::upstream_client(&config, runtime.conn_limits());
    runtime.start_health_checks();
    let shared = Arc::new(Shared { client, runtime: Arc::clone(&runtime) });
    let builder = Arc::new(http_builder(&config));
    let max = config.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    for listener in listeners {
        let ctx = AcceptCtx {
            shared: Arc::clone(&shared),
            builder: Arc::clone(&builder),
            permits: Arc::clone(&permits),
            stop: stop_rx.clone(),
            timeouts: config.timeouts,
        };
        tokio::spawn(accept_loop(listener, ctx));
    }
    shutdown.await;
    runtime.stop_health_checks();
    tracing::info!(drain = ?config.timeouts.drain, "shutting down: no new connections, draining");
    let _ = stop_tx.send(true);
    // Every connection holds one permit: when all are back, every connection has closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(config.timeouts.drain, permits.acquire_many(all)).await.is_ok();
    if drained {
        tracing::info!("all connections closed");
    } else {
        let open = max.saturating_sub(permits.available_permits());
        tracing::warn!(open, "drain timeout: closing remaining connections");
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): the signals that start a graceful shutdown.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop lb");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = &config.limits;
    let mut h1 = builder.http1();
    // Header and idle timeouts are enforced by IdleIo; hyper's own timer would merge the two.
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != crate::config::Limits::default().max_headers {
        // hyper keeps the default count on the stack; any other count costs a heap allocation.
        h1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        // Detects HTTP/2 peers that vanished without closing (the socket itself stays quiet).
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

struct AcceptCtx {
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    timeouts: crate::config::Timeouts,
}

async fn accept_loop(listener: TcpListener, mut ctx: AcceptCtx) {
    let local = listener.local_addr().ok();
    let label = local.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let accepted_total = metrics::counter!(crate::metrics::CONNECTIONS, "listener" => label.clone());
    let open = metrics::gauge!(crate::metrics::OPEN_CONNECTIONS, "listener" => label.clone());
    let in_flight = metrics::gauge!(crate::metrics::LISTENER_IN_FLIGHT, "listener" => label);
    loop {
        // Take a connection slot first: at the limit, clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = Arc::clone(&ctx.permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = ctx.stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = ?local, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            shared: Arc::clone(&ctx.shared),
            builder: Arc::clone(&ctx.builder),
            stop: ctx.stop.clone(),
            timeouts: ctx.timeouts,
        };
        accepted_total.increment(1);
        tokio::spawn(conn.serve(stream, peer, permit, (open.clone(), in_flight.clone())));
    }
}

struct Conn {
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    timeouts: crate::config::Timeouts,
}

impl Conn {
    async fn serve(
        mut self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
        (open, in_flight): (metrics::Gauge, metrics::Gauge),
    ) {
        let activity = Arc::new(Activity::holding(Some(slot), Some(open), Some(in_flight)));
        let io = IdleIo::new(stream, Arc::clone(&activity), &self.timeouts);
        let service = TowerToHyperService::new(Proxy::new(Arc::clone(&self.shared), peer, Some(activity)));
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            // Client-side connection errors (resets, timeouts, malformed heads) are routine.
            tracing::debug!(client = %peer, error = %e, "connection ended with an error");
        }
    }
}
