//! A cached route's request path: answer from the cache, or forward and store what comes back.
//!
//! [`lookup`] runs before a server is chosen. A fresh object is the answer; a stale one is served
//! at once within `stale-while-revalidate` (one background [`refresh`] goes upstream), otherwise it
//! is revalidated (the request goes upstream with its validators). On a miss, the first request for
//! a key fetches it and later ones wait for that fetch (up to `lock_timeout`), then look again.
//! [`Pending::respond`] then turns the upstream's answer into the client's: a 304 to a revalidation
//! serves the stored body with the merged head, a failure within `stale-if-error` serves the stale
//! object, and a storable response is copied into the cache as it streams to the client.

use super::body::ResponseBody;
use crate::cache::fill::Fill;
use crate::cache::status::{Answer, CACHE_STATUS};
use crate::cache::{Fetching, Found, Object, Store};
use http::{header, HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// What the cache decided before the request goes upstream.
pub(super) enum Lookup {
    /// The answer, from the cache.
    Answer(Box<Response<ResponseBody>>),
    /// Go upstream; the answer passes through [`Pending::respond`].
    Forward(Box<Pending>),
    /// Go upstream, and then run [`Pending::respond`] for what a response means to the cache
    /// (an unsafe method invalidates the URL), storing nothing.
    Bypass(Box<Pending>),
}

/// A cached route's request on its way upstream.
pub(super) struct Pending {
    store: Arc<Store>,
    key: String,
    /// The request as the cache judges it (see `cache::policy_request`).
    request: http::request::Parts,
    /// The stored object being revalidated (or to serve if the origin fails, `stale-if-error`).
    stale: Option<Arc<Object>>,
    /// This request fetches the key for the others waiting on it.
    fetching: Option<Fetching>,
    /// An unsafe method: a successful answer makes the stored URL invalid.
    invalidates: bool,
    /// The answer may be stored (not for a bypass).
    store_allowed: bool,
    /// A stored object was found stale: the answer refreshes it.
    had_stale: bool,
    /// The request said `no-store`.
    request_forbids: bool,
    /// The client sent conditions of its own (`If-None-Match`, `If-Modified-Since`).
    client_conditional: bool,
}

/// Looks `parts` up in `store`; may add revalidation fields to `parts`. `refresh` starts a
/// background refresh of the key (for `stale-while-revalidate`).
pub(super) async fn lookup(
    store: &Arc<Store>,
    parts: &mut http::request::Parts,
    host: Option<&http::HeaderValue>,
    tls: bool,
    refresh: impl FnOnce(http::request::Parts, Box<Pending>),
) -> Lookup {
    let host_str = host.and_then(|h| h.to_str().ok()).map(crate::router::strip_port);
    let key = crate::cache::key(tls, host_str, parts);
    // An upgrade (WebSocket) is never answered from a cache nor made to wait for a fetch.
    let cacheable = (parts.method == Method::GET || (parts.method == Method::HEAD && store.settings.head))
        && !parts.headers.contains_key(header::UPGRADE);
    let client_conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
        || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
    let mut request = crate::cache::policy_request(parts, host);
    if request.method == Method::HEAD && store.settings.head {
        // Answered from a stored GET: judged as one.
        request.method = Method::GET;
    }
    let pending = |request, stale: Option<Arc<Object>>, fetching, invalidates, store_allowed| {
        Box::new(Pending {
            store: Arc::clone(store),
            key: key.clone(),
            request,
            had_stale: stale.is_some(),
            stale,
            fetching,
            invalidates,
            store_allowed,
            request_forbids: false,
            client_conditional,
        })
    };
    let asks = crate::cache::status::RequestDirectives::of(&parts.headers);
    if !cacheable || asks.no_store {
        store.metrics.bypass.increment(1);
        let invalidates = !parts.method.is_safe();
        let mut bypass = pending(request, None, None, invalidates, false);
        bypass.request_forbids = cacheable;
        return Lookup::Bypass(bypass);
    }
    let (mut waited, mut asked_shared, mut from_shared) = (false, false, false);
    loop {
        match store.lookup(&key, &request) {
            Found::Fresh(object) => {
                let (answer, counter) = if from_shared {
                    (Answer::SharedHit, &store.metrics.shared)
                } else if waited {
                    (Answer::Collapsed, &store.metrics.collapsed)
                } else {
                    (Answer::Hit, &store.metrics.hit)
                };
                counter.increment(1);
                return Lookup::Answer(Box::new(serve(store, &object, &parts.method, answer)));
            }
            Found::Stale { object, validators } => {
                let now = store.now();
                // A client asking for a newer answer (`no-cache`, `max-age`) is not given a stale one.
                if object.within_swr(now) && !asks.wants_newer {
                    store.metrics.stale.increment(1);
                    if let Ok(fetching) = store.fetch(&key) {
                        let mut upstream = super::forward::copy_head(parts);
                        upstream.method = Method::GET;
                        upstream.headers.extend(validators);
                        let mut judged = request.clone();
                        judged.method = Method::GET;
                        refresh(
                            upstream,
                            pending(judged, Some(Arc::clone(&object)), Some(fetching), false, true),
                        );
                    }
                    return Lookup::Answer(Box::new(serve(
                        store,
                        &object,
                        &parts.method,
                        Answer::StaleWhileRevalidate,
                    )));
                }
                if parts.method == Method::HEAD {
                    // A HEAD is forwarded as it came; only a GET's answer revalidates the object.
                    return Lookup::Bypass(pending(request, Some(object), None, false, false));
                }
                store.metrics.miss.increment(1);
                // The client's own conditions stay; the cache's validators fill in the rest.
                for (name, value) in &validators {
                    if !parts.headers.contains_key(name) {
                        parts.headers.insert(name.clone(), value.clone());
                    }
                }
                let fetching = store.fetch(&key).ok();
                return Lookup::Forward(pending(request, Some(object), fetching, false, true));
            }
            Found::Miss if waited || parts.method == Method::HEAD => {
                store.metrics.miss.increment(1);
                return Lookup::Forward(pending(request, None, None, false, parts.method == Method::GET));
            }
            Found::Miss => match store.fetch(&key) {
                Ok(fetching) => {
                    // Another instance may have it: the shared tier, once, before the origin.
                    if let Some(shared) = store.shared.as_ref().filter(|_| !asked_shared) {
                        asked_shared = true;
                        if let Ok(Some(object)) = shared.get(&key).await {
                            store.insert(&key, &request, object, false);
                            from_shared = true;
                            drop(fetching);
                            continue;
                        }
                    }
                    store.metrics.miss.increment(1);
                    return Lookup::Forward(pending(request, None, Some(fetching), false, true));
                }
                // Another request is fetching it: wait for that (bounded), then look again once.
                Err(mut done) => {
                    waited = true;
                    let _ = tokio::time::timeout(store.settings.lock_timeout, done.changed()).await;
                }
            },
        }
    }
}

impl Pending {
    /// The client's answer for the upstream's `resp`, already made into the client's response by
    /// `forward` (hop-by-hop fields gone, lb's sticky cookie added). `upstream` is the head as the
    /// upstream sent it, for the cache's judgement.
    pub(super) fn respond(
        mut self,
        upstream: (StatusCode, HeaderMap),
        mut resp: Response<ResponseBody>,
        method: &Method,
    ) -> Response<ResponseBody> {
        let (status, mut headers) = upstream;
        if self.invalidates {
            if status.is_success() || status.is_redirection() {
                self.store.invalidate(&self.key);
            }
            return resp;
        }
        if let Some(stale) = self.stale.take() {
            if status == StatusCode::NOT_MODIFIED {
                return self.revalidated(&stale, &headers, method).unwrap_or(resp);
            }
            if status.is_server_error() && stale.within_sie(self.store.now()) {
                self.store.metrics.stale.increment(1);
                return serve(&self.store, &stale, method, Answer::StaleIfError(Some(status.as_u16())));
            }
        }
        let had_stale = self.had_stale;
        crate::proxy::headers::strip_hop_by_hop(&mut headers);
        let policy = (self.store_allowed && *method == Method::GET)
            .then(|| self.store.storable(&self.request, status, &mut headers))
            .flatten();
        // Stored (when `allow_set_cookie` allows) without it: one client's cookie is never another's.
        headers.remove(header::SET_COOKIE);
        let stored = policy.is_some();
        if let Some(policy) = policy {
            let fill = Fill::new(
                Arc::clone(&self.store),
                self.key,
                self.request,
                policy,
                status,
                headers,
                self.fetching,
            );
            resp.body_mut().fill(fill);
        }
        let answer = if self.request_forbids {
            Answer::Bypass
        } else if had_stale {
            Answer::Refreshed { status: status.as_u16(), stored }
        } else {
            Answer::Miss { stored }
        };
        resp.headers_mut().insert(CACHE_STATUS.clone(), answer.header());
        resp
    }

    /// The origin answered `304` to a revalidation: the stored body with the merged head, stored
    /// again with its new lifetime.
    fn revalidated(
        &self,
        stale: &Object,
        headers: &HeaderMap,
        method: &Method,
    ) -> Option<Response<ResponseBody>> {
        let mut not_modified = http::Response::new(());
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        *not_modified.headers_mut() = headers.clone();
        let now = self.store.now();
        // When the client sent conditions of its own, the 304 may be about them: the crate checks
        // it is about the stored response (its validators). When only the cache's validators
        // went, it is (an origin may leave a `Last-Modified` out of a 304, RFC 9110 section 15.4.5).
        if self.client_conditional
            && !matches!(
                stale.policy.after_response(&self.request, &not_modified, now),
                http_cache_semantics::AfterResponse::NotModified(..)
            )
        {
            return None;
        }
        // RFC 9111 section 3.2: every field of the 304 replaces or joins the stored ones, except
        // those that describe the body (which is not resent); the crate only replaces.
        let mut merged = stale.headers.clone();
        for name in headers.keys() {
            let skip =
                [header::CONTENT_LENGTH, header::CONTENT_ENCODING, header::CONTENT_RANGE, header::SET_COOKIE];
            if skip.contains(name) || crate::proxy::headers::is_hop_by_hop(name) {
                continue;
            }
            merged.remove(name);
            for value in headers.get_all(name) {
                merged.append(name.clone(), value.clone());
            }
        }
        merged.remove(header::AGE);
        let policy = self.store.policy_for(&self.request, stale.status, &merged);
        let storable = policy.is_storable();
        let kept = crate::cache::kept_bytes(&self.request, &merged);
        let object = Object::new(
            policy,
            stale.status,
            merged,
            stale.body.clone(),
            now,
            self.store.settings.default_ttl,
        )
        .counting(kept);
        let object = Arc::new(object);
        self.store.metrics.revalidated.increment(1);
        let resp = serve(&self.store, &object, method, Answer::Revalidated);
        if !storable {
            // The 304 made it `private` or `no-store`: this client gets it, nobody else.
            self.store.invalidate(&self.key);
        } else if let Ok(object) = Arc::try_unwrap(object) {
            self.store.insert(&self.key, &self.request, object, true);
        }
        Some(resp)
    }

    /// The upstream failed (no response): the stale object within `stale-if-error`, if any.
    pub(super) fn on_failure(&self, method: &Method) -> Option<Response<ResponseBody>> {
        let stale = self.stale.as_ref()?;
        if !stale.within_sie(self.store.now()) {
            return None;
        }
        self.store.metrics.stale.increment(1);
        Some(serve(&self.store, stale, method, Answer::StaleIfError(None)))
    }
}

/// The client's answer from a stored object (no body for `HEAD`).
fn serve(store: &Store, object: &Object, method: &Method, answer: Answer) -> Response<ResponseBody> {
    let (status, headers) = object.head(store.now());
    let body = if *method == Method::HEAD {
        ResponseBody::full("")
    } else {
        ResponseBody::full(object.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if *method == Method::HEAD {
        // The stored GET's length, as a HEAD answer states it.
        resp.headers_mut().insert(header::CONTENT_LENGTH, object.body.len().into());
    }
    resp.headers_mut().insert(CACHE_STATUS.clone(), answer.header());
    resp
}

/// Refreshes a stored object in the background (`stale-while-revalidate`): a GET with its
/// validators through the route's pool; a 304 renews it, a storable answer replaces it.
pub(super) async fn refresh(
    shared: Arc<super::Shared>,
    snap: Arc<crate::runtime::Snapshot>,
    route_index: usize,
    parts: http::request::Parts,
    pending: Box<Pending>,
    requester: super::forward::Refresher,
) {
    use http_body_util::BodyExt;
    let method = Method::GET;
    let result = super::forward::send_refresh(&shared, &snap, route_index, parts, &requester).await;
    let (resp, upstream) = match result {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(cache = %pending.store.settings.name, key = %pending.key, error = %e, "background refresh failed");
            return;
        }
    };
    let resp = pending.respond(upstream, resp, &method);
    // Read to the end: the fill stores it then.
    let _ = resp.into_body().collect().await;
}

/// The status and head of an upstream response, before `forward` makes it the client's.
pub(super) fn upstream_head(resp: &Response<Incoming>) -> (StatusCode, HeaderMap) {
    (resp.status(), resp.headers().clone())
}
