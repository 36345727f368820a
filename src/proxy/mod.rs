//! The request path: route -> pool -> strategy -> upstream connection -> streamed response.
//!
//! [`Proxy`] is built once per client connection and answers its requests ([`Proxy::call`]). Each request loads the runtime
//! snapshot once and uses it to the end; `forward.rs` takes it from the route to the response head. Failures become responses in exactly one place
//! ([`error::error_response`]), called from `Proxy::call`, which logs each with its cause first.

pub mod access;
pub mod access_writer;
pub mod body;
mod cache;
mod edge;
pub mod error;
mod forward;
pub mod headers;
mod normal_path;
mod spare;
mod syntax;
pub mod tunnel;

use crate::config::AccessLog;
use crate::runtime::Runtime;
use crate::runtime::Snapshot;
use crate::server::ActiveRequest;
use access::AccessRecord;
use body::{Finish, ResponseBody};
use error::ProxyError;
use forward::{forward, Requester};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What every request of one client connection shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Current routing state, and the upstream connection limits.
    pub runtime: Arc<Runtime>,
}

/// The proxy service for one client connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    /// The client's `X-Forwarded-For` element, formatted once per connection.
    client_ip: HeaderValue,
    /// Counts this connection's active requests for its idle timer; `None` outside a server.
    conn: Option<Arc<crate::server::Activity>>,
    /// The client came over TLS: `X-Forwarded-Proto: https`, `Secure` sticky cookies.
    tls: bool,
    /// `Strict-Transport-Security` to add to responses that lack one.
    hsts: Option<HeaderValue>,
}

impl Proxy {
    /// A service for requests arriving from `client_addr`.
    pub fn new(
        shared: Arc<Shared>,
        client_addr: SocketAddr,
        conn: Option<Arc<crate::server::Activity>>,
    ) -> Self {
        let client_ip = headers::client_ip_value(client_addr.ip());
        Self { shared, client_addr, client_ip, conn, tls: false, hsts: None }
    }

    /// For a connection on a TLS listener (`tls`), with its HSTS header if configured.
    pub fn behind(mut self, tls: bool, hsts: Option<HeaderValue>) -> Self {
        self.tls = tls;
        self.hsts = hsts;
        self
    }

    /// Answers one request. The future is returned unboxed: hyper keeps an HTTP/1 connection's
    /// request future in a slot it allocates once per connection, so a boxed future here would cost
    /// an allocation and a copy of the whole future (2,440 bytes) per request (wrapped for hyper by
    /// `hyper::service::service_fn`, which names its type).
    pub fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
        let start = tokio::time::Instant::now();
        let active = self.conn.as_ref().map(ActiveRequest::begin);
        let shared = Arc::clone(&self.shared);
        let client = self.client_addr;
        let client_ip = self.client_ip.clone();
        let (tls, hsts) = (self.tls, self.hsts.clone());
        // Taken apart here, not in the future: it would keep the request and its parts both.
        let (mut parts, body) = req.into_parts();
        async move {
            let snap = shared.runtime.snapshot();
            let version = parts.version;
            // Behind a trusted proxy, the address it names; every use below sees this one.
            let client = snap.config.client_address.resolve(client, &parts.headers);
            let request_id = request_id(&parts.headers);
            parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
            let format = snap.config.access_log;
            let access = (format != AccessLog::Off)
                .then(|| Box::new(AccessRecord::new(format, client, &parts, &request_id)));
            let mut active = active;
            // Armed until a response exists: if the client goes away first, hyper drops this future
            // and the guard records the request as 499 (client closed), as nginx does.
            let mut watch =
                Unanswered { start, snap: Arc::clone(&snap), trace: Trace::default(), access, armed: true };
            let from = Requester { addr: client, ip: &client_ip, tls, request_id: Some(&request_id) };
            let result = forward(&shared, &snap, from, &mut parts, body, &mut active, &mut watch.trace).await;
            watch.armed = false;
            let (trace, mut access) = (std::mem::take(&mut watch.trace), watch.access.take());
            let mut resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    log_failure(&e, client);
                    if let (ProxyError::RateLimited(limited), Some(record)) = (&e, access.as_mut()) {
                        record.rate_limit = Some(Arc::clone(&limited.rule));
                    }
                    error::error_response(&e, &snap.config.error_pages)
                }
            };
            if let Some(hsts) = hsts {
                // The operator's policy, unless the application set its own.
                resp.headers_mut().entry(header::STRICT_TRANSPORT_SECURITY).or_insert(hsts);
            }
            let status = resp.status().as_u16();
            let (pool, server) = trace.resolve(&snap);
            count_answer(&snap, pool, server, status);
            if let Some(record) = access.as_mut() {
                record.status = status;
                record.upstream_time = trace.upstream_time;
                record.server = server.map(|u| (Arc::clone(&u.key.pool), Arc::clone(&u.key.name)));
            }
            resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
            resp.body_mut().finish_with(Finish::new(start, pool.map(|p| &p.metrics), access));
            if let Some(active) = active {
                // The process is being replaced: the client's next request goes to the new one.
                if active.closing() && !matches!(version, http::Version::HTTP_2 | http::Version::HTTP_3) {
                    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp.body_mut().hold_conn(active);
            }
            Ok(resp)
        }
    }
}

/// `X-Request-Id`: passed to the upstream and echoed to the client.
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Counts an answered request under its server, or under its pool (or none) if no server answered.
fn count_answer(
    snap: &Snapshot,
    pool: Option<&crate::runtime::Pool>,
    server: Option<&Arc<crate::upstream::Upstream>>,
    status: u16,
) {
    match (server, pool) {
        (Some(u), _) => u.metrics.answered(status),
        (None, Some(p)) => p.metrics.unserved.answered(&p.name, status),
        (None, None) => snap.unrouted.answered("none", status),
    }
}

/// nginx's status for a request whose client closed the connection before the response.
const CLIENT_CLOSED: u16 = 499;

/// Records a request that never got a response because its client went away (see `Proxy::call`).
struct Unanswered {
    start: tokio::time::Instant,
    snap: Arc<Snapshot>,
    trace: Trace,
    access: Option<Box<AccessRecord>>,
    armed: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pool, server) = self.trace.resolve(&self.snap);
        count_answer(&self.snap, pool, server, CLIENT_CLOSED);
        let elapsed = self.start.elapsed();
        if let Some(p) = pool {
            p.metrics.duration.record(elapsed.as_secs_f64());
        }
        if let Some(mut record) = self.access.take() {
            record.status = CLIENT_CLOSED;
            record.server = server.map(|u| (Arc::clone(&u.key.pool), Arc::clone(&u.key.name)));
            record.emit(0, elapsed);
        }
    }
}

/// What the request path learned about one request, for metrics and the access log.
#[derive(Debug, Default)]
struct Trace {
    /// Index of the routed pool.
    pool: Option<usize>,
    /// Index of the server that answered.
    server: Option<usize>,
    /// Upstream time to response head.
    upstream_time: Option<Duration>,
}

impl Trace {
    /// The pool and server this trace names, in `snap`.
    fn resolve<'s>(
        &self,
        snap: &'s Snapshot,
    ) -> (Option<&'s crate::runtime::Pool>, Option<&'s Arc<crate::upstream::Upstream>>) {
        let pool = self.pool.and_then(|p| snap.pools.get(p));
        let server = pool.zip(self.server).and_then(|(p, s)| p.upstreams.get(s));
        (pool, server)
    }
}

/// The client's `X-Request-Id` if it is a sane token (printable, at most 128 bytes), else a new
/// random 128-bit id in hex. Marked sensitive, which to HTTP/2's header compression means "never
/// index": a value unique to one message would only evict reusable entries from the connection's
/// table, and every later id would be compared against the ones it holds.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    let mut id = new_request_id(headers);
    id.set_sensitive(true);
    id
}

fn new_request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return v.clone();
        }
    }
    static IDS: std::sync::OnceLock<crate::balance::rng::Rng> = std::sync::OnceLock::new();
    let rng = IDS.get_or_init(crate::balance::rng::Rng::from_entropy);
    // Rendered on the stack, two digits per byte: the header value's own copy is the only
    // allocation.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bytes = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())).to_be_bytes();
    for (pair, byte) in id.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn log_failure(e: &ProxyError, client: SocketAddr) {
    let status = e.status().as_u16();
    match e.source() {
        // Anyone can send any host or a malformed request: not worth a warning each time.
        error::Source::Client => tracing::debug!(%client, status, error = %e, "request refused"),
        // A wrong password is worth a line (repeated ones are how guessing shows); the rest of
        // what policies refuse is routine.
        error::Source::Policy if matches!(e, ProxyError::Unauthorized { wrong: true, .. }) => {
            tracing::info!(%client, status, error = %e, "request refused")
        }
        error::Source::Policy => tracing::debug!(%client, status, error = %e, "request refused"),
        _ if matches!(e, ProxyError::NoRoute) => {
            tracing::debug!(%client, status, error = %e, "request refused")
        }
        _ => tracing::warn!(%client, status, error = %e, "request failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_made_otherwise_and_never_indexed() {
        let mut headers = http::HeaderMap::new();
        let made = request_id(&headers);
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        // Unique per message: HTTP/2's header compression must not add it to its table.
        assert!(made.is_sensitive());

        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let kept = request_id(&headers);
        assert_eq!(kept, "abc-123");
        assert!(kept.is_sensitive());

        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 32);
    }
}
