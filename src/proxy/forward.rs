//! One request's way upstream and back: route and read the body under its rules, pick a server,
//! [`rewrite`] the head, [`send_with_retries`], and build the [`client_response`].

use super::body::{BodyRules, RequestBody, ResponseBody, Upload};
use super::error::ProxyError;
use super::spare::SpareHead;
use super::{headers, syntax, tunnel, Shared, Trace, X_REQUEST_ID};
use crate::edge::header_rules::Vars;
use crate::health::passive::Outcome;
use crate::metrics;
use crate::runtime::{Choice, NoServer, Pool, Snapshot};
use crate::server::ActiveRequest;
use crate::sticky;
use crate::upstream::connect::ConnectError;
use crate::upstream::lease::{self, ConnSettings, Lease, SendError};
use crate::upstream::InFlight;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Who sent a request: address, its `X-Forwarded-For` element, whether over TLS, and the request's
/// id (`X-Request-Id`, as `Proxy::call` set it).
pub(super) struct Requester<'a> {
    pub(super) addr: SocketAddr,
    pub(super) ip: &'a HeaderValue,
    pub(super) tls: bool,
    pub(super) request_id: Option<&'a HeaderValue>,
}

impl Requester<'_> {
    /// What the route's header rules may use for this request, whose host is `host`. Built where
    /// the rules apply, so that it is not kept across the send.
    fn vars<'b>(&'b self, host: Option<&'b HeaderValue>) -> Vars<'b> {
        Vars { client: self.addr.ip(), request_id: self.request_id, host, tls: self.tls }
    }
}

/// Takes one request from its head to the client's response head: checks the head, routes it,
/// applies the route's policy, rate limits and cache, takes the body under its rules ([`intake`]),
/// claims a server, [`rewrite`]s the head, [`send_with_retries`] and builds the
/// [`client_response`].
///
/// Not an `async fn`: those keep each argument twice in their state (as received and as the
/// local it becomes), and this future is copied whole as hyper moves the request's future about.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn` (above)
pub(super) fn forward<'a>(
    shared: &'a Arc<Shared>,
    snap: &'a Arc<Snapshot>,
    from: Requester<'a>,
    parts: &'a mut http::request::Parts,
    body: Incoming,
    active: &'a mut Option<ActiveRequest>,
    trace: &'a mut Trace,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
    async move {
        if parts.method == http::Method::CONNECT {
            // lb is a reverse proxy: it does not open tunnels to arbitrary destinations.
            return Err(ProxyError::MethodNotAllowed);
        }
        // An HTTP/1 client has a task per request in flight; an HTTP/2 client's streams share their
        // connection's task (see `ConnSettings::apart`).
        let task_each = parts.version != Version::HTTP_2;
        syntax::check_head(parts)?;
        let host = request_host(parts)?;
        syntax::underscore_headers(&mut parts.headers, snap.config.http.underscore_headers)?;
        // Routes, their rules and the server all see the path in one normal form.
        if let Some(path) = super::normal_path::normalize(parts.uri.path()) {
            set_path(parts, path)?;
        }
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        let route_index = snap.router.route(host_str, parts.uri.path()).ok_or(ProxyError::NoRoute)?;
        let route = snap.config.routes.get(route_index).ok_or(ProxyError::NoRoute)?;
        // `None` for a route that only redirects.
        let pool = snap.pools.get(route.pool);
        trace.pool = pool.map(|_| route.pool);
        let policy = route.policy.as_deref();
        if policy.is_some_and(|p| !p.admits(from.addr.ip())) {
            return Err(ProxyError::Forbidden);
        }
        // Counted before credentials are checked (as nginx's `limit_req` runs before `auth_basic`),
        // so guessed passwords are refused at the rule's rate rather than each costing a bcrypt check;
        // and before the body is read or a server chosen: a refused request costs no upstream work.
        let mut limit_headers = None;
        if !snap.rate_limits.is_empty() {
            let request = crate::ratelimit::Request { client: from.addr, parts, host: host_str, route };
            let route_rules = policy.map_or(&[][..], |p| &p.rate_limits[..]);
            match Box::pin(snap.rate_limits.check(request, route_rules)).await {
                Ok(headers) => limit_headers = headers,
                Err(limited) => return Err(ProxyError::RateLimited(Box::new(limited))),
            }
        }
        if let Some(policy) = policy {
            // Boxed: only routes with a policy pay for its future.
            if let Some(answer) = Box::pin(super::edge::admit(policy, parts)).await? {
                return Ok(answer);
            }
        }
        // A cached route answers from its cache, or notes what the upstream's answer means to it.
        let mut cache = None;
        if let Some(store) = route.cache.and_then(|i| snap.caches.get(i)) {
            let refresh = |upstream, pending| {
                let requester =
                    Refresher { addr: from.addr, ip: from.ip.clone(), tls: from.tls, host: host.clone() };
                let snap = Arc::clone(snap);
                tokio::spawn(super::cache::refresh(
                    Arc::clone(shared),
                    snap,
                    route_index,
                    upstream,
                    pending,
                    requester,
                ));
            };
            match Box::pin(super::cache::lookup(store, parts, host.as_ref(), from.tls, refresh)).await {
                super::cache::Lookup::Answer(resp) => {
                    let mut resp = *resp;
                    let vars = from.vars(host.as_ref());
                    if let Some(policy) = policy.filter(|p| !p.response_headers.is_empty()) {
                        policy.response_headers.apply(resp.headers_mut(), &vars);
                    }
                    if let Some(limit) = limit_headers {
                        limit.apply(resp.headers_mut());
                    }
                    return Ok(resp);
                }
                super::cache::Lookup::Forward(pending) | super::cache::Lookup::Bypass(pending) => {
                    cache = Some((pending, parts.method.clone()));
                }
            }
        }
        let pool = pool.ok_or(ProxyError::NoRoute)?;
        let max_body_size = route.max_body_size.unwrap_or(snap.config.limits.max_body_size);
        let (body, upload, whole) = intake(shared, snap, pool, max_body_size, body).await?;
        // A reserved slot on the chosen server (its in-flight guard), or a wait in the pool's queue.
        let (choice, guard) = match pool.claim(from.addr, parts) {
            Some(claimed) => claimed,
            // Boxed: queueing is the rare path, and its timers would enlarge every request's future.
            None => match Box::pin(pool.wait_for_room(from.addr, parts)).await {
                Ok(claimed) => claimed,
                // No server can take it: a stale object within `stale-if-error` answers instead.
                Err(why) => match cache.as_ref().and_then(|(pending, method)| pending.on_failure(method)) {
                    Some(stale) => return Ok(stale),
                    None => return Err(no_server(pool, why)),
                },
            },
        };
        if let Some(path) = policy
            .and_then(|p| super::edge::rewritten_path(p, route.path_prefix.as_deref(), parts.uri.path()))
        {
            set_path(parts, path)?;
        }
        // In a block of its own: the token is not kept across the send below (an async block keeps
        // a slot for every local still in scope at an await).
        let client_upgrade = {
            let upgrade = headers::allowed_upgrade(parts.version, &parts.headers, &snap.config.http.upgrades);
            let client_upgrade =
                upgrade.as_ref().and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
            let upgrade = upgrade.as_deref().filter(|_| client_upgrade.is_some());
            rewrite(parts, snap, pool, &from, host.as_ref(), upgrade);
            client_upgrade
        };
        // The operator's header rules have the last word, after lb's own (but cannot touch framing).
        if let Some(policy) = policy.filter(|p| !p.request_headers.is_empty()) {
            let vars = from.vars(host.as_ref());
            policy.request_headers.apply(&mut parts.headers, &vars);
        }
        let mut exchange = Exchange {
            shared,
            snap,
            pool,
            client: from.addr,
            // Moved in place: a named local would keep a slot of its own in this future.
            target: std::mem::take(&mut parts.uri),
            spare: None,
            upload,
            whole,
            upgrading: client_upgrade.is_some(),
            task_each,
        };
        // A failed attempt may be retried on another server (see `may_retry`); the head is kept for that
        // only when the pool allows retries and has another server, and never for an upgrade.
        if client_upgrade.is_none() {
            exchange.spare = spare_head(pool, parts);
        }
        let sent = send_with_retries(&exchange, parts, body, choice, guard, trace).await;
        let (resp, guard, lease, choice) = match sent {
            Ok(sent) => sent,
            // The origin failed: a stale object within `stale-if-error` answers instead.
            Err(e) => match cache.as_ref().and_then(|(pending, method)| pending.on_failure(method)) {
                Some(stale) => return Ok(stale),
                None => return Err(e),
            },
        };
        let upstream = cache.as_ref().map(|_| super::cache::upstream_head(&resp));
        let mut resp =
            client_response(snap, pool, from.tls, resp, guard, lease, choice, client_upgrade, active)?;
        if let (Some((pending, method)), Some(upstream)) = (cache, upstream) {
            resp = pending.respond(upstream, resp, &method);
        }
        if let Some(policy) = policy.filter(|p| !p.response_headers.is_empty()) {
            let vars = from.vars(host.as_ref());
            policy.response_headers.apply(resp.headers_mut(), &vars);
        }
        if let Some(limit) = limit_headers {
            limit.apply(resp.headers_mut());
        }
        Ok(resp)
    }
}

/// Who a background refresh is made for: the client whose request found the object stale (its
/// address, `X-Forwarded-For` element, TLS) and the request's host, as routing saw it.
pub(super) struct Refresher {
    pub(super) addr: SocketAddr,
    pub(super) ip: HeaderValue,
    pub(super) tls: bool,
    pub(super) host: Option<HeaderValue>,
}

/// Sends a cache refresh (a bodyless GET made by lb, `stale-while-revalidate`) through the route's
/// pool as a client's request would go, and makes its answer the response a client would get.
pub(super) async fn send_refresh(
    shared: &Shared,
    snap: &Snapshot,
    route_index: usize,
    mut parts: http::request::Parts,
    requester: &Refresher,
) -> Result<(Response<ResponseBody>, (StatusCode, http::HeaderMap)), ProxyError> {
    let (client, ip, tls, host) = (requester.addr, &requester.ip, requester.tls, requester.host.as_ref());
    let route = snap.config.routes.get(route_index).ok_or(ProxyError::NoRoute)?;
    let pool = snap.pools.get(route.pool).ok_or(ProxyError::NoRoute)?;
    let (choice, guard) = match pool.claim(client, &parts) {
        Some(claimed) => claimed,
        None => Box::pin(pool.wait_for_room(client, &parts)).await.map_err(|why| no_server(pool, why))?,
    };
    if let Some(path) = route
        .policy
        .as_deref()
        .and_then(|p| super::edge::rewritten_path(p, route.path_prefix.as_deref(), parts.uri.path()))
    {
        set_path(&mut parts, path)?;
    }
    let from = Requester { addr: client, ip, tls, request_id: None };
    rewrite(&mut parts, snap, pool, &from, host, None);
    // The route's header rules, as for the request that found the object stale.
    if let Some(policy) = route.policy.as_deref().filter(|p| !p.request_headers.is_empty()) {
        let request_id = parts.headers.get(&X_REQUEST_ID).cloned();
        let vars = Vars { client: client.ip(), request_id: request_id.as_ref(), host, tls };
        policy.request_headers.apply(&mut parts.headers, &vars);
    }
    let target = std::mem::take(&mut parts.uri);
    let spare = spare_head(pool, &parts);
    // A revalidation runs in a task of its own, as an HTTP/1 client's request does.
    let exchange = Exchange {
        shared,
        snap,
        pool,
        client,
        target,
        spare,
        upload: None,
        whole: None,
        upgrading: false,
        task_each: true,
    };
    let mut trace = Trace::default();
    let (resp, guard, lease, choice) =
        send_with_retries(&exchange, &mut parts, RequestBody::empty(), choice, guard, &mut trace).await?;
    let upstream = super::cache::upstream_head(&resp);
    let resp = client_response(snap, pool, tls, resp, guard, lease, choice, None, &mut None)?;
    Ok((resp, upstream))
}

/// Replaces the request's path, keeping its query (and scheme and authority, for HTTP/2).
fn set_path(parts: &mut http::request::Parts, mut path: String) -> Result<(), ProxyError> {
    if let Some(q) = parts.uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query =
        Some(http::uri::PathAndQuery::try_from(path).map_err(|_| ProxyError::BadRequest("invalid path"))?);
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    Ok(())
}

/// The request head as the upstream gets it: lb's sticky cookie out (and HTTP/2's split `cookie`
/// fields joined), hop-by-hop fields out (an allowed `upgrade` token and gRPC's `te: trailers` put
/// back), the request id, `Host` (or none for HTTP/2 upstreams), X-Forwarded-*, HTTP/1.1.
fn rewrite(
    parts: &mut http::request::Parts,
    snap: &Snapshot,
    pool: &Pool,
    from: &Requester<'_>,
    host: Option<&HeaderValue>,
    upgrade: Option<&str>,
) {
    if parts.version == Version::HTTP_2 {
        sticky::join_cookies(&mut parts.headers);
    }
    if !snap.sticky_cookies.is_empty() {
        sticky::strip_cookies(&mut parts.headers, &snap.sticky_cookies);
    }

    if headers::has_hop_by_hop(&parts.headers) {
        let request_id = parts.headers.get(&X_REQUEST_ID).cloned();
        // gRPC needs `te: trailers` end to end; forwarded to pools that speak HTTP/2 (as nginx's
        // grpc_pass does), stripped as hop-by-hop everywhere else.
        let te_trailers = pool.http2() && headers::accepts_trailers(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(id) = request_id {
            // Even if the client named it in `Connection`: the upstream always gets the id.
            parts.headers.insert(X_REQUEST_ID.clone(), id);
        }
    }
    if let Some(token) = upgrade {
        if let Ok(value) = HeaderValue::from_str(token) {
            headers::set_upgrade(&mut parts.headers, value);
        }
    }
    if pool.http2() {
        // HTTP/2 upstream: `:authority` (the server's address) must be the only host; the client's
        // travels in X-Forwarded-Host.
        parts.headers.remove(header::HOST);
    } else if let Some(h) = host {
        // The upstream speaks HTTP/1.1: the host travels as Host (taken from :authority or an
        // absolute-form target when the client sent one). Usually it is the client's own Host
        // field, already in place.
        if parts.headers.get(header::HOST) != Some(h) {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    let proto = if from.tls { "https" } else { "http" };
    headers::set_forwarded(&mut parts.headers, from.ip, proto, host);
    parts.version = Version::HTTP_11;
}

/// What every attempt of one request shares.
struct Exchange<'a> {
    shared: &'a Shared,
    snap: &'a Snapshot,
    pool: &'a Pool,
    client: SocketAddr,
    /// The client's target (the upstream gets its origin form).
    target: Uri,
    /// A copy of the head for another attempt, when the pool may retry.
    spare: Option<SpareHead>,
    /// The client's upload, while it is still streaming.
    upload: Option<Arc<Upload>>,
    /// The body, when it was read whole and can be sent again.
    whole: Option<RequestBody>,
    /// The request asks to switch protocols (and the client side can).
    upgrading: bool,
    /// The client's request has a task of its own (HTTP/1), not a stream of a shared connection.
    task_each: bool,
}

/// Sends the request to the chosen server and, when an attempt fails and the pool's rules allow it,
/// to another (see `Attempt::may_retry`). Returns the response head, the in-flight guard and the
/// connection lease of the attempt that answered, and which server that was.
///
/// Not an `async fn`, for the reason given at [`forward`].
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn` (above)
fn send_with_retries<'a, 'b>(
    x: &'b Exchange<'a>,
    parts: &'b mut http::request::Parts,
    mut body: RequestBody,
    mut choice: Choice<'a>,
    mut guard: InFlight,
    trace: &'b mut Trace,
) -> impl Future<Output = Result<(Response<Incoming>, InFlight, Option<Lease>, Choice<'a>), ProxyError>> + Send + 'b
where
    'a: 'b,
{
    async move {
        let (snap, pool, client, target, spare, upload, whole) =
            (x.snap, x.pool, x.client, &x.target, &x.spare, &x.upload, &x.whole);
        let idempotent = is_idempotent(&parts.method);
        let timeout = pool.response_timeout;
        let limits = x.shared.runtime.conn_limits();
        let conn_settings = ConnSettings {
            connect: pool.connect_timeout,
            idle: snap.config.timeouts.upstream_idle,
            idle_per_server: snap.config.limits.upstream_idle_per_server,
            // Only for HTTP/1 clients: an HTTP/2 connection's task polls all its streams, and
            // upstream connections in tasks of their own would wake it once per response instead of
            // letting one poll move many (HTTP/2 with 64 x 16 streams: 29.8 µs per request apart,
            // 20.3 driven; docs/performance.md).
            apart: x.task_each && pool.take_apart(snap.config.limits.upstream_tasks_above),
        };
        let mut tried = Vec::new();
        // Held while a retry is in progress: the retry budget counts it.
        let mut _retrying = None;
        loop {
            let upstream = choice.upstream;
            // Recorded before the attempt, so a failure is counted and logged against this server.
            trace.server = Some(choice.index);
            parts.uri = origin_form(target);
            let bodyless = body.is_end_stream();
            let handback = (spare.is_some() && !bodyless && whole.is_none()).then(|| body.returnable());
            let sent_at = tokio::time::Instant::now();
            // Built in place: a named local would be a second copy of the send future (kilobytes) in
            // this function's state.
            let sending =
                |parts, body| lease::send(limits, upstream, conn_settings, parts, body, x.upgrading);
            let answered =
                respond_within(timeout, sent_at, upload.as_deref(), sending(&mut *parts, body)).await;
            // An answer a retry would replace (`retry.on_status`); it stands if no retry is made.
            // Declared after the await, so it takes no room in this future's state.
            let mut standing = None;
            let (failure, attempt) = match answered {
                Some(Ok((resp, lease))) if ambiguous_framing(resp.headers()) => {
                    // hyper let Transfer-Encoding win, but the server meant something lb cannot know:
                    // nothing of it is relayed, and the connection is closed (what follows on it cannot
                    // be trusted either).
                    drop((resp, lease));
                    let reason = "response with both Transfer-Encoding and Content-Length".to_owned();
                    (ProxyError::Upstream { upstream: who(upstream), reason }, Attempt::Invalid)
                }
                Some(Ok((resp, mut lease))) => {
                    // A response that came while the client's body was still being sent leaves the rest
                    // of that body unsent: the connection cannot carry another request.
                    if let (Some(lease), Some(upload)) = (lease.as_mut(), upload.as_ref()) {
                        if upload.done_at.get().is_none() {
                            lease.forbid_reuse();
                        }
                    }
                    let outcome =
                        if resp.status().is_server_error() { Outcome::Status5xx } else { Outcome::Success };
                    pool.observe(upstream, outcome);
                    // The upstream's time starts once the client's upload is over (it is the client's).
                    let from = upload.as_ref().and_then(|u| u.done_at.get().copied()).unwrap_or(sent_at);
                    let elapsed = from.elapsed();
                    upstream.metrics.ttfb.record(elapsed.as_secs_f64());
                    trace.upstream_time = Some(elapsed);
                    let status = resp.status();
                    if !(idempotent && pool.retry.on_status.contains(status)) {
                        return Ok((resp, guard, lease, choice));
                    }
                    // `retry.on_status`: a failed attempt like the others below, except that this
                    // answer stands if no retry is made, as nginx relays the last one once its tries
                    // are spent.
                    standing = Some((resp, lease));
                    let reason = format!("answered {status}, listed in retry.on_status");
                    (ProxyError::Upstream { upstream: who(upstream), reason }, Attempt::Status)
                }
                None => (ProxyError::Timeout { upstream: who(upstream), after: timeout }, Attempt::Timeout),
                Some(Err(_)) if upload.as_ref().is_some_and(|u| u.stalled.load(Ordering::Relaxed)) => {
                    return Err(ProxyError::ClientTimeout);
                }
                Some(Err(_)) if upload.as_ref().is_some_and(|u| u.too_large.load(Ordering::Relaxed)) => {
                    return Err(ProxyError::BodyTooLarge);
                }
                Some(Err(e)) if upload.as_ref().is_some_and(|u| u.broken.load(Ordering::Relaxed)) => {
                    return Err(ProxyError::ClientBody(e.to_string()));
                }
                Some(Err(e)) => classify(&e, upstream),
            };
            metrics::upstream_error(&upstream.key.pool, &upstream.key.name, attempt.label());
            if let Some(outcome) = attempt.outcome() {
                pool.observe(upstream, outcome);
            }
            // A failed attempt's server slot goes back before another is claimed; a standing answer
            // keeps its slot until a retry replaces it.
            let standing = match standing {
                Some((resp, lease)) => Some((resp, lease, guard)),
                None => {
                    drop(guard);
                    None
                }
            };
            let retry = 'retry: {
                // The body, if it can still be sent: empty, read whole ahead of time, or never read
                // by the failed attempt.
                let unsent = if bodyless {
                    Some(RequestBody::empty())
                } else if let Some(whole) = whole {
                    whole.replay()
                } else {
                    handback.and_then(|mut rx| rx.try_recv().ok())
                };
                let (Some(spare), Some(next_body)) = (spare, unsent) else { break 'retry None };
                if tried.len() >= pool.retry.attempts as usize || !attempt.may_retry(idempotent) {
                    break 'retry None;
                }
                // The client's target, as the first choice of server saw it.
                let Some(head) = spare.to_parts(target) else { break 'retry None };
                tried.push(choice.index);
                let Some((next, next_guard)) = pool.claim_other(client, &head, &tried) else {
                    break 'retry None;
                };
                // This request's previous retry, if any, is over: its slot goes back before taking
                // another.
                _retrying = None;
                if attempt.budgeted() {
                    let Some(slot) = pool.retry_slot() else {
                        tracing::warn!(%client, error = %failure, pool = %pool.name, "not retried: retry budget spent");
                        break 'retry None;
                    };
                    _retrying = Some(slot);
                }
                Some((head, next_body, next, next_guard))
            };
            let Some((head, next_body, next, next_guard)) = retry else {
                return match standing {
                    Some((resp, lease, guard)) => Ok((resp, guard, lease, choice)),
                    None => Err(failure),
                };
            };
            drop(standing);
            tracing::warn!(%client, error = %failure, to = %who(next.upstream), "retrying on another server");
            pool.metrics.retries.increment(1);
            *parts = head;
            (body, choice, guard) = (next_body, next, next_guard);
        }
    }
}

/// The client's response: the upstream's head without hop-by-hop fields, the sticky cookie when the
/// pool sets one, and the body streamed with the request's guards and connection lease; or, for a
/// 101, the tunnel started and the head answered.
#[allow(clippy::too_many_arguments)]
fn client_response(
    snap: &Snapshot,
    pool: &Pool,
    tls: bool,
    mut resp: Response<Incoming>,
    guard: InFlight,
    conn_lease: Option<Lease>,
    choice: Choice<'_>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    active: &mut Option<ActiveRequest>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let timeout = pool.response_timeout;
    let upstream = choice.upstream;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream {
                upstream: who(upstream),
                reason: "101 without an upgrade request".into(),
            });
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let token = parts.headers.get(header::UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(token) = token {
            headers::set_upgrade(&mut parts.headers, token);
        }
        if let Some(cookie) = choice.set_cookie.then(|| pool.sticky_cookie(choice.index, tls)).flatten() {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        let guards = (guard, active.take());
        tunnel::spawn(
            client_upgrade,
            upstream_upgrade,
            guards,
            snap.config.timeouts.tunnel_idle,
            who(upstream),
        );
        return Ok(Response::from_parts(parts, ResponseBody::full("")));
    }

    headers::strip_hop_by_hop(resp.headers_mut());
    if let Some(cookie) = choice.set_cookie.then(|| pool.sticky_cookie(choice.index, tls)).flatten() {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    let mut resp = resp.map(|body| ResponseBody::stream(body, timeout));
    resp.body_mut().hold_upstream(guard);
    if let Some(lease) = conn_lease {
        resp.body_mut().drive(lease);
    }
    Ok(resp)
}

/// Takes the client's body under the request's rules: a declared length over `max_body_size` (the
/// route's, else `limits.max_body_size`; `0` for none) is
/// refused at once, and a body of at most `request_buffer` bytes is read whole before a server is
/// chosen, so its framing is checked before any server sees a byte, a slow client holds no server, and
/// the body can be sent again. Returns the body, its upload state (`None` once nothing more comes from
/// the client), and a copy to resend when it was read whole.
async fn intake(
    shared: &Shared,
    snap: &Snapshot,
    pool: &crate::runtime::Pool,
    max_body_size: u64,
    body: Incoming,
) -> Result<(RequestBody, Option<Arc<Upload>>, Option<RequestBody>), ProxyError> {
    let (limits, timeouts) = (&snap.config.limits, &snap.config.timeouts);
    let max_size = match max_body_size {
        0 => u64::MAX,
        n => n,
    };
    if body.size_hint().lower() > max_size {
        return Err(ProxyError::BodyTooLarge);
    }
    let rules = BodyRules {
        stall: timeouts.client_body,
        max_size,
        min_rate: limits.min_body_rate,
        window: timeouts.body_rate_window,
    };
    let (mut body, upload) = RequestBody::watch(body, rules, &pool.metrics.received);
    let Some(state) = upload else { return Ok((body, None, None)) };
    let buffer = limits.request_buffer;
    // Known to be larger than the buffer (Content-Length): it streams.
    let expected = body.size_hint().upper().unwrap_or(buffer as u64);
    if buffer == 0 || expected > buffer as u64 {
        return Ok((body, Some(state), None));
    }
    let Some(hold) = shared.runtime.request_buffers().reserve(expected as usize, limits.request_buffer_total)
    else {
        // Every buffer the process may hold is taken: this body streams, as it would unbuffered.
        return Ok((body, Some(state), None));
    };
    // Boxed: only requests with a body read ahead.
    match Box::pin(body.fill(buffer, hold)).await {
        Ok(true) => {
            let whole = body.replay();
            Ok((body, None, whole))
        }
        Ok(false) => Ok((body, Some(state), None)),
        Err(e) if state.too_large.load(Ordering::Relaxed) => {
            tracing::debug!(error = %e, "request body over limits.max_body_size");
            Err(ProxyError::BodyTooLarge)
        }
        Err(_) if state.stalled.load(Ordering::Relaxed) => Err(ProxyError::ClientTimeout),
        Err(e) => Err(ProxyError::ClientBody(error_chain(&*e))),
    }
}

/// Awaits the upstream's response head, allowing `timeout` from the end of the client's upload (from
/// `sent_at`, the attempt's start, when nothing is still being uploaded): a slow upload is the
/// client's time, not the upstream's. `None` when the timeout passed.
fn respond_within<'a, F: Future>(
    timeout: Duration,
    sent_at: tokio::time::Instant,
    upload: Option<&'a Upload>,
    sending: F,
) -> Within<F, impl Future<Output = ()> + 'a> {
    let deadline = async move {
        match upload {
            Some(upload) => {
                upload.sent.notified().await;
                tokio::time::sleep(timeout).await;
            }
            // From the time already read for the attempt: no second clock read.
            None => tokio::time::sleep_until(sent_at + timeout).await,
        }
    };
    Within { sending, deadline }
}

pin_project_lite::pin_project! {
    /// `sending`, unless `deadline` comes first. A struct rather than an async fn or `select!`, which
    /// would each keep a second copy of `sending` in their state.
    struct Within<F, D> {
        #[pin]
        sending: F,
        #[pin]
        deadline: D,
    }
}

impl<F: Future, D: Future<Output = ()>> Future for Within<F, D> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.sending.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.deadline.poll(cx).map(|()| None)
    }
}

/// How one failed attempt failed, which decides whether it is retried and what passive checks see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// No connection: nothing was sent.
    Connect,
    /// The server stayed at its connection limit: nothing was sent, and the server is not at fault.
    AtLimit,
    /// No response head in time.
    Timeout,
    /// The connection broke before a response head.
    Reset,
    /// The server answered with a response lb refuses to relay (ambiguous framing).
    Invalid,
    /// The server answered an idempotent request with a status its pool's `retry.on_status` lists.
    Status,
}

impl Attempt {
    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::AtLimit => "limit",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Invalid => "invalid",
            Self::Status => "status",
        }
    }

    fn outcome(self) -> Option<Outcome> {
        match self {
            Self::Connect => Some(Outcome::Connect),
            Self::AtLimit => None,
            Self::Timeout => Some(Outcome::Timeout),
            Self::Reset | Self::Invalid => Some(Outcome::Reset),
            // Passive checks saw the answer as an answer (a 5xx) when it arrived.
            Self::Status => None,
        }
    }

    /// Connect failures sent nothing, so any request may go elsewhere; after a timeout or a reset
    /// the server may have acted on it, so only idempotent requests are retried.
    fn may_retry(self, idempotent: bool) -> bool {
        match self {
            Self::Connect | Self::AtLimit => true,
            Self::Timeout | Self::Reset => idempotent,
            // The server answered: it acted on the request, and another would likely answer alike.
            Self::Invalid => false,
            // Only idempotent requests get here (see `retry.on_status`).
            Self::Status => idempotent,
        }
    }

    /// Whether retrying after this failure draws on the pool's retry budget. A timeout does: the
    /// server may still be working on the request, so a retry adds work, and when every server is
    /// slow that is how retries multiply load. So does a listed status: the server did the work,
    /// and the retry repeats it. A failed connect or a connection at its limit sent
    /// nothing, and a broken connection ends the server's work on the request, so resending it
    /// elsewhere moves the request rather than multiplying it (HAProxy's `redispatch` has no budget
    /// either); budgeting those would turn one dead server into a burst of 502s.
    fn budgeted(self) -> bool {
        matches!(self, Self::Timeout | Self::Status)
    }
}

/// A response head whose body length two readers could take differently (RFC 9112 section 6.3: a
/// sender must not send both, and a proxy must not relay such a message as it is).
fn ambiguous_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
}

/// RFC 9110 section 9.2.2's idempotent methods (CONNECT never reaches here).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE, Method::TRACE].contains(method)
}

/// The error a request gets when its pool had no server for it.
fn no_server(pool: &crate::runtime::Pool, why: NoServer) -> ProxyError {
    let pool = pool.name.to_string();
    match why {
        NoServer::NoneReady => ProxyError::NoReadyServer { pool },
        NoServer::QueueFull => ProxyError::QueueFull { pool },
        NoServer::QueueTimeout(after) => ProxyError::QueueTimeout { pool, after },
    }
}

/// "pool/server", for logs and errors.
fn who(upstream: &crate::upstream::Upstream) -> String {
    format!("{}/{}", upstream.key.pool, upstream.key.name)
}

/// The copy of a request head kept for another attempt, when `pool` may retry (retries allowed and
/// another server to take them). The retry gives it the client's target again (`SpareHead::to_parts`),
/// since a consistent-hash pool may hash its path or query again.
fn spare_head(pool: &Pool, parts: &http::request::Parts) -> Option<SpareHead> {
    (pool.retry.attempts > 0 && pool.upstreams.len() > 1).then(|| SpareHead::copy(parts))
}

/// A copy of a request head (method, target, version, headers) for sending it again.
pub(super) fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// The host the request is for. The request target's authority wins when present (HTTP/2's
/// `:authority`, HTTP/1.1's absolute form, RFC 9112 section 3.2.2), otherwise the single `Host` field.
/// Refused (400): a host that is not `uri-host [":" port]` (userinfo included), several `Host` fields, an HTTP/2 `Host` that disagrees with `:authority`, and an
/// HTTP/1.1 request with no host at all (RFC 9112 section 3.2).
fn request_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if host.is_some_and(|h| !syntax::valid_host(h.as_bytes())) {
        return Err(ProxyError::BadRequest("invalid Host"));
    }
    if let Some(authority) = parts.uri.authority() {
        if !syntax::valid_host(authority.as_str().as_bytes()) {
            return Err(ProxyError::BadRequest("invalid authority"));
        }
        if parts.version == Version::HTTP_2
            && host.is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes())
        {
            return Err(ProxyError::BadRequest("Host and :authority disagree"));
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("invalid authority"));
    }
    match host {
        Some(h) => Ok(Some(h.clone())),
        None if parts.version == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        None => Ok(None),
    }
}

/// The target as sent upstream: origin form (`/path?query`), whatever form the client used.
fn origin_form(original: &Uri) -> Uri {
    match original.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// Classifies a failed send: at the connection limit -> 503, connect timeout -> 504, refused or
/// reset -> 502.
fn classify(e: &SendError, upstream: &crate::upstream::Upstream) -> (ProxyError, Attempt) {
    let (upstream, reason) = (who(upstream), e.to_string());
    match e {
        SendError::Connect(ConnectError::AtLimit(_)) => (ProxyError::AtLimit { upstream }, Attempt::AtLimit),
        SendError::Connect(ConnectError::TimedOut(_, after)) => {
            (ProxyError::Timeout { upstream, after: *after }, Attempt::Connect)
        }
        SendError::Connect(ConnectError::Io(_)) => {
            (ProxyError::Connect { upstream, reason }, Attempt::Connect)
        }
        SendError::Http { .. } => (ProxyError::Upstream { upstream, reason }, Attempt::Reset),
    }
}

/// "outer: inner: innermost", so logs show the root cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
