//! Listeners: accept, limit concurrent connections, serve HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! with hyper, and drain gracefully on shutdown.
//!
//! Shutdown: accept loops stop, every connection is told to finish (HTTP/1 closes after its current
//! response, HTTP/2 sends GOAWAY), and [`serve`] returns once all connections are gone or the drain
//! timeout has passed.

mod armed;
mod client_conns;
mod conn;
mod idle;
mod redirect;
mod rewind;
mod streams;

pub use idle::{ActiveRequest, Activity, Idle, IdleIo, ListenerGauges, RELEASE_AFTER};

use crate::config::{Config, Timeouts};
use crate::proxy::{Proxy, Shared};
use crate::runtime::Runtime;
use crate::slots::Slots;
use arc_swap::ArcSwap;
use client_conns::ClientConns;
use conn::ClientConn;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How often an HTTP/2 client connection is pinged, and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Everything a new connection is served with. Rebuilt when a config is applied and read once per
/// accepted connection, so new settings reach new connections while open ones keep theirs.
struct ServeCtx {
    shared: Arc<Shared>,
    h1: http1::Builder,
    /// HTTP/2 settings: each connection gets a builder of its own, for its own stream executor.
    h2: H2Settings,
    timeouts: Timeouts,
    /// Per listener (by configured address): TLS, redirect, HSTS.
    listeners: HashMap<SocketAddr, ListenerCtx>,
    /// `limits.max_connections_per_client` (`0`: no limit), and the open connections it counts
    /// (the server's, kept across reloads).
    per_client: usize,
    clients: Arc<ClientConns>,
}

/// What one listener does with a connection beyond plain HTTP.
#[derive(Clone)]
struct ListenerCtx {
    /// TLS termination; `Some(Err)` if the TLS config could not be built (connections are refused
    /// rather than served in the clear).
    tls: Option<Result<tokio_rustls::TlsAcceptor, ()>>,
    /// Answer every request with a redirect to https on this port.
    redirect_https: Option<u16>,
    /// `Strict-Transport-Security` for responses on this (TLS) listener.
    hsts: Option<http::HeaderValue>,
    /// Connections start with a PROXY protocol header, from peers in these ranges only.
    proxy_from: Option<crate::edge::cidr::CidrList>,
}

impl ListenerCtx {
    fn new(l: &crate::config::ListenerConfig, resumption: &crate::tls::Resumption) -> Self {
        let tls = l.tls.as_ref().map(|tls| {
            crate::tls::server_config(tls, resumption).map(tokio_rustls::TlsAcceptor::from).map_err(|e| {
                tracing::error!(listener = %l.addr, error = %e, "TLS config unusable: refusing connections");
            })
        });
        Self {
            tls,
            redirect_https: l.redirect_https,
            hsts: l.tls.as_ref().and_then(|t| t.hsts.clone()),
            proxy_from: l.proxy_protocol.clone(),
        }
    }
}

impl ServeCtx {
    fn new(
        runtime: &Arc<Runtime>,
        config: &Config,
        resumption: &crate::tls::Resumption,
        clients: &Arc<ClientConns>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared { runtime: Arc::clone(runtime) }),
            h1: http1_builder(config),
            h2: H2Settings::new(config),
            timeouts: config.timeouts,
            listeners: config.listeners.iter().map(|l| (l.addr, ListenerCtx::new(l, resumption))).collect(),
            per_client: config.limits.max_connections_per_client,
            clients: Arc::clone(clients),
        }
    }
}

/// The client-facing side: listeners by configured address, each with its accept loop, and the
/// connection limit they share.
///
/// A reload first [`prepare`](Server::prepare)s (binds the addresses the new config adds; a taken
/// port fails the reload before anything changed), then the runtime swaps its snapshot, then
/// [`commit`](Server::commit) starts the new listeners, stops the removed ones (their connections
/// finish their current request and close) and serves new connections with the new settings. A
/// listener whose address did not change keeps its socket and its connections.
pub struct Server {
    runtime: Arc<Runtime>,
    /// Shared with the accept loops, which load it once per connection.
    ctx: Arc<ArcSwap<ServeCtx>>,
    slots: Arc<Slots>,
    /// Open connections by client, for `limits.max_connections_per_client`.
    clients: Arc<ClientConns>,
    listening: Mutex<Listening>,
    /// TLS session tickets and cache, kept across reloads so clients resume after one too.
    resumption: crate::tls::Resumption,
    /// Sockets handed over by the process this one replaced (`crate::upgrade`), by configured
    /// address: the first config's listeners serve on them instead of binding.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
}

#[derive(Default)]
struct Listening {
    by_addr: Vec<Listener>,
    /// Set by [`Server::shutdown`]: no listener starts after it.
    closed: bool,
}

struct Listener {
    /// The address as configured (port 0 stays 0 here, so it matches the next config).
    configured: SocketAddr,
    local: SocketAddr,
    /// `true` stops the accept loop and drains the listener's connections.
    stop: watch::Sender<bool>,
    /// A second descriptor of the socket, to hand to a new binary at an upgrade; dropped with the
    /// listener, so a removed listener stops listening.
    handoff: Option<std::net::TcpListener>,
}

/// Sockets bound for a config but not yet accepting.
#[derive(Debug, Default)]
pub struct Bound(Vec<(SocketAddr, TcpListener)>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("listeners", &self.listeners()).finish_non_exhaustive()
    }
}

impl Server {
    /// Binds every listener of the runtime's config and starts accepting, and starts the health
    /// checks. Fails fast on a taken port.
    pub async fn start(runtime: Arc<Runtime>) -> io::Result<Arc<Self>> {
        Self::start_inheriting(runtime, HashMap::new()).await
    }

    /// As [`Server::start`], serving on `inherited` sockets (by configured address) where the config
    /// has their address, and binding the rest.
    pub async fn start_inheriting(
        runtime: Arc<Runtime>,
        inherited: HashMap<SocketAddr, std::net::TcpListener>,
    ) -> io::Result<Arc<Self>> {
        let snap = runtime.snapshot();
        let resumption = crate::tls::Resumption::new();
        let clients = Arc::new(ClientConns::default());
        let server = Arc::new(Self {
            ctx: Arc::new(ArcSwap::from_pointee(ServeCtx::new(
                &runtime,
                &snap.config,
                &resumption,
                &clients,
            ))),
            resumption,
            slots: Slots::new(snap.config.limits.max_connections),
            clients,
            listening: Mutex::default(),
            runtime,
            inherited: Mutex::new(inherited),
        });
        let bound = server.prepare(&snap.config).await?;
        // Sockets the new config has no listener for close here (the old process drains them).
        server.inherited.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        server.runtime.start_health_checks();
        server.runtime.start_conn_sweep();
        server.commit(bound);
        Ok(server)
    }

    /// `(configured, bound)` address of every listener, in config order of their start.
    pub fn listeners(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.lock().by_addr.iter().map(|l| (l.configured, l.local)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listening> {
        self.listening.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Binds the addresses `config` has and the running listeners do not. Changes nothing else.
    pub async fn prepare(&self, config: &Config) -> io::Result<Bound> {
        let running: Vec<SocketAddr> = self.lock().by_addr.iter().map(|l| l.configured).collect();
        let mut bound = Bound::default();
        for l in config.listeners.iter().filter(|l| !running.contains(&l.addr)) {
            let inherited =
                self.inherited.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&l.addr);
            let listener = match inherited {
                Some(socket) => socket.set_nonblocking(true).and_then(|()| TcpListener::from_std(socket)),
                None => bind(l.addr, l.freebind),
            }
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.addr)))?;
            bound.0.push((l.addr, listener));
        }
        Ok(bound)
    }

    /// Serves the runtime's current config: new settings for new connections, the connection limit
    /// resized, `bound` listeners started and listeners the config no longer has stopped.
    pub fn commit(&self, bound: Bound) {
        let snap = self.runtime.snapshot();
        let config = &snap.config;
        let mut listening = self.lock();
        if listening.closed {
            return;
        }
        let ctx = ServeCtx::new(&self.runtime, config, &self.resumption, &self.clients);
        self.ctx.store(Arc::new(ctx));
        self.slots.resize(config.limits.max_connections);
        listening.by_addr.retain(|l| {
            let keep = config.listeners.iter().any(|c| c.addr == l.configured);
            if !keep {
                tracing::info!(addr = %l.local, "listener removed: no new connections, draining");
                let _ = l.stop.send(true);
            }
            keep
        });
        for (configured, listener) in bound.0 {
            let local = listener.local_addr().unwrap_or(configured);
            tracing::info!(%local, "listener started");
            let handoff = handoff_of(&listener);
            let (stop, stop_rx) = watch::channel(false);
            listening.by_addr.push(Listener { configured, local, stop, handoff });
            tokio::spawn(accept_loop(listener, self.accept_ctx(configured, stop_rx)));
        }
    }

    /// A second descriptor of every listening socket, by configured address, for an upgrade.
    pub fn handoff_sockets(&self) -> Vec<(SocketAddr, std::net::TcpListener)> {
        let listening = self.lock();
        listening
            .by_addr
            .iter()
            .filter_map(|l| Some((l.configured, l.handoff.as_ref()?.try_clone().ok()?)))
            .collect()
    }

    fn accept_ctx(&self, configured: SocketAddr, stop: watch::Receiver<bool>) -> AcceptCtx {
        AcceptCtx { serve: Arc::clone(&self.ctx), slots: Arc::clone(&self.slots), stop, configured }
    }

    /// Stops every listener and the health checks, and tells every connection to finish, without
    /// waiting.
    pub fn close(&self) {
        let mut listening = self.lock();
        listening.closed = true;
        for l in listening.by_addr.drain(..) {
            let _ = l.stop.send(true);
        }
        self.runtime.stop_health_checks();
        self.runtime.stop_conn_sweep();
    }

    /// Stops every listener, tells every connection to finish, and waits until all are closed or
    /// the drain timeout passed. The health checks stop too.
    pub async fn shutdown(&self) {
        self.close();
        let drain = self.runtime.snapshot().config.timeouts.drain;
        tracing::info!(?drain, "shutting down: no new connections, draining");
        if tokio::time::timeout(drain, self.slots.closed()).await.is_ok() {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!(open = self.slots.open(), "drain timeout: closing remaining connections");
        }
    }
}

/// Listens on `addr` (address reuse on, a backlog of 1,024, as tokio's `bind`), with
/// `IP_FREEBIND` / `IPV6_FREEBIND` when asked: the address need not be on the host yet.
fn bind(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if freebind {
        if addr.is_ipv4() {
            rustix::net::sockopt::set_ip_freebind(&socket, true)?;
        } else {
            rustix::net::sockopt::set_ipv6_freebind(&socket, true)?;
        }
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A second descriptor of the listener's socket, to hand over at an upgrade (`None` if it could not
/// be duplicated, e.g. out of descriptors: an upgrade then leaves that address to be bound anew).
pub fn handoff_of(listener: &TcpListener) -> Option<std::net::TcpListener> {
    use std::os::fd::AsFd;
    listener.as_fd().try_clone_to_owned().ok().map(std::net::TcpListener::from)
}

/// Set once a new process took this one's sockets: draining connections then close gently.
static REPLACED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as replaced by a new one (an upgrade), before [`Server::shutdown`]: idle HTTP/1
/// connections then close after their next request instead of at once (see `conn.rs`).
pub fn drain_for_replacement() {
    REPLACED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn replaced() -> bool {
    REPLACED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Serves the runtime's config until `shutdown` completes, then drains (the whole life of a server
/// without reloads, as tests and embedders use it).
pub async fn serve(runtime: Arc<Runtime>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let server = Server::start(runtime).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
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

fn http1_builder(config: &Config) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    let limits = &config.limits;
    // Header and idle timeouts are enforced by IdleIo; hyper's own timer would merge the two.
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes);
    if limits.max_headers != crate::config::Limits::default().max_headers {
        // hyper keeps the default count on the stack; any other count costs a heap allocation.
        h1.max_headers(limits.max_headers);
    }
    h1
}

/// What an HTTP/2 connection is served with.
#[derive(Debug, Clone, Copy)]
struct H2Settings {
    max_streams: u32,
    max_header_list_size: u32,
}

impl H2Settings {
    fn new(config: &Config) -> Self {
        let limits = &config.limits;
        Self {
            max_streams: limits.h2_max_streams,
            max_header_list_size: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
        }
    }

    /// A builder whose streams run on `exec` (see [`streams`]).
    fn builder(self, exec: streams::StreamExec) -> http2::Builder<streams::StreamExec> {
        let mut builder = http2::Builder::new(exec);
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_streams)
            // Detects HTTP/2 peers that vanished without closing (the socket itself stays quiet).
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_header_list_size(self.max_header_list_size);
        builder
    }
}

struct AcceptCtx {
    serve: Arc<ArcSwap<ServeCtx>>,
    slots: Arc<Slots>,
    stop: watch::Receiver<bool>,
    /// The listener's configured address: its key in `ServeCtx::listeners`.
    configured: SocketAddr,
}

async fn accept_loop(listener: TcpListener, mut ctx: AcceptCtx) {
    let local = listener.local_addr().ok();
    let label = local.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let accepted_total = metrics::counter!(crate::metrics::CONNECTIONS, "listener" => label.clone());
    let gauges = Arc::new(ListenerGauges {
        open: metrics::gauge!(crate::metrics::OPEN_CONNECTIONS, "listener" => label.clone()),
        in_flight: metrics::gauge!(crate::metrics::LISTENER_IN_FLIGHT, "listener" => label.clone()),
        idle: metrics::gauge!(crate::metrics::IDLE_CONNECTIONS, "listener" => label.clone()),
        refused_per_client: metrics::counter!(
            crate::metrics::CONNECTIONS_REFUSED,
            "listener" => label.clone(),
            "reason" => "per_client"
        ),
    });
    loop {
        // Take a connection slot first: at the limit, clients wait in the kernel's backlog.
        let slot = tokio::select! {
            s = ctx.slots.acquire() => s,
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
        let conn = Accepted {
            serve: ctx.serve.load_full(),
            stop: ctx.stop.clone(),
            listener: ctx.configured,
            label: label.clone(),
        };
        accepted_total.increment(1);
        let activity = Arc::new(Activity::holding(Some(slot), Some(Arc::clone(&gauges))));
        conn.spawn(stream, peer, activity);
    }
}

/// A connection just accepted, with what serving it needs.
struct Accepted {
    serve: Arc<ServeCtx>,
    stop: watch::Receiver<bool>,
    /// Configured address of the listener that accepted it.
    listener: SocketAddr,
    /// Its bound address, as metrics label it.
    label: String,
}

impl Accepted {
    /// Spawns the connection's task. A plain connection's task is the connection's state machine
    /// alone; a TLS one's also holds the handshake and the TLS session.
    fn spawn(self, stream: TcpStream, peer: SocketAddr, activity: Arc<Activity>) {
        // A listener removed by the config this connection loaded: never serve it with defaults
        // (a TLS port would answer in the clear).
        let Some(listener) = self.serve.listeners.get(&self.listener) else { return };
        if listener.proxy_from.is_some() {
            tokio::spawn(self.proxied(stream, peer, activity));
            return;
        }
        self.start(stream, peer, activity);
    }

    /// Reads the PROXY protocol header (within `client_header`, before TLS), then serves the
    /// connection as coming from the client it names. A peer outside `proxy_protocol_from`, or a
    /// missing or bad header, closes the connection: its bytes cannot be trusted to say who sent them.
    async fn proxied(self, mut stream: TcpStream, peer: SocketAddr, activity: Arc<Activity>) {
        let Some(from) = self.serve.listeners.get(&self.listener).and_then(|l| l.proxy_from.as_ref()) else {
            return;
        };
        let result = if from.contains(peer.ip()) {
            let limit = self.serve.timeouts.client_header;
            crate::edge::proxy_protocol::read_header(&mut stream, peer, limit).await
        } else {
            Err(crate::edge::proxy_protocol::HeaderError::Untrusted)
        };
        let reason = result.as_ref().map_or_else(|e| e.reason(), |_| "ok");
        metrics::counter!(crate::metrics::PROXY_HEADERS, "listener" => self.label.clone(), "result" => reason)
            .increment(1);
        match result {
            Ok(client) => self.start(stream, client, activity),
            // Debug only: anyone can open connections, and the metric counts them by reason.
            Err(e) => tracing::debug!(%peer, listener = %self.label, error = %e, "connection refused"),
        }
    }

    /// Serves a connection whose client is `peer`: plain HTTP, or TLS first. A client that has
    /// `limits.max_connections_per_client` open already is closed at once, before any TLS work.
    fn start(self, stream: TcpStream, peer: SocketAddr, activity: Arc<Activity>) {
        let Some(listener) = self.serve.listeners.get(&self.listener) else { return };
        if self.serve.per_client > 0 {
            match self.serve.clients.open(peer.ip(), self.serve.per_client) {
                Some(slot) => activity.hold_client(slot),
                None => {
                    if let Some(g) = &activity.gauges {
                        g.refused_per_client.increment(1);
                    }
                    // Debug only: the client chooses how often this happens; the metric counts it.
                    return tracing::debug!(client = %peer, listener = %self.label, "connection refused: limits.max_connections_per_client");
                }
            }
        }
        match &listener.tls {
            None => {
                let io = IdleIo::new(stream, Arc::clone(&activity), &self.serve.timeouts);
                match listener.redirect_https {
                    Some(port) => {
                        let service = redirect::service(port);
                        tokio::spawn(self.conn(io, activity, peer, service));
                    }
                    None => {
                        let service = self.proxy(peer, &activity, listener, false);
                        tokio::spawn(self.conn(io, activity, peer, service));
                    }
                }
            }
            Some(Err(())) => {}
            Some(Ok(acceptor)) => {
                let acceptor = acceptor.clone();
                tokio::spawn(self.tls(stream, peer, activity, acceptor));
            }
        }
    }

    fn conn<I, S>(
        &self,
        io: IdleIo<I>,
        activity: Arc<Activity>,
        peer: SocketAddr,
        service: S,
    ) -> ClientConn<I, S>
    where
        S: hyper::service::HttpService<hyper::body::Incoming>,
    {
        ClientConn::new(Arc::clone(&self.serve), io, activity, self.stop.clone(), peer, service)
    }

    fn proxy(
        &self,
        peer: SocketAddr,
        activity: &Arc<Activity>,
        listener: &ListenerCtx,
        tls: bool,
    ) -> impl hyper::service::HttpService<
        hyper::body::Incoming,
        ResBody = crate::proxy::body::ResponseBody,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
           + Unpin
           + Send
           + 'static {
        let proxy = Proxy::new(Arc::clone(&self.serve.shared), peer, Some(Arc::clone(activity)))
            .behind(tls, listener.hsts.clone());
        hyper::service::service_fn(move |req| proxy.call(req))
    }

    /// Completes the TLS handshake (within `client_header`), then serves HTTP over it.
    async fn tls(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        activity: Arc<Activity>,
        acceptor: tokio_rustls::TlsAcceptor,
    ) {
        // The handshake counts against the header timeout: a client that stalls it is gone.
        let limit = self.serve.timeouts.client_header;
        let handshake = tokio::time::timeout(limit, acceptor.accept(stream)).await;
        let result = match &handshake {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => crate::tls::failure_reason(e),
            Err(_) => "timeout",
        };
        metrics::counter!(crate::metrics::TLS_HANDSHAKES, "listener" => self.label.clone(), "result" => result)
            .increment(1);
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
        };
        let Some(listener) = self.serve.listeners.get(&self.listener) else { return };
        let io = IdleIo::new(tls, Arc::clone(&activity), &self.serve.timeouts);
        match listener.redirect_https {
            Some(port) => self.conn(io, activity, peer, redirect::service(port)).await,
            None => {
                let service = self.proxy(peer, &activity, listener, true);
                self.conn(io, activity, peer, service).await;
            }
        }
    }
}
