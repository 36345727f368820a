//! A route's edge policy on the request path: refuse (403, 401), answer a redirect, or change the
//! request (path prefix, headers) and later the response headers. Only routes that have a policy
//! come here; see `crate::edge::policy`.

use super::body::ResponseBody;
use super::error::ProxyError;
use crate::edge::auth::Refusal;
use crate::edge::policy::{replace_prefix, RoutePolicy};
use http::{header, HeaderValue, Response};
use std::net::IpAddr;

/// Checks access and credentials, in that order; answers the redirect when the route is one. The
/// `Authorization` header is taken out once checked, unless the route forwards it.
pub(super) async fn admit(
    policy: &RoutePolicy,
    client: IpAddr,
    parts: &mut http::request::Parts,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    if !policy.admits(client) {
        return Err(ProxyError::Forbidden);
    }
    if let Some(auth) = &policy.auth {
        match auth.check(&parts.headers).await {
            Ok(()) => {
                if !auth.forward {
                    parts.headers.remove(header::AUTHORIZATION);
                }
            }
            Err(Refusal::Busy) => return Err(ProxyError::AuthBusy),
            Err(why) => {
                return Err(ProxyError::Unauthorized {
                    challenge: auth.challenge().clone(),
                    wrong: why == Refusal::Wrong,
                })
            }
        }
    }
    let Some(redirect) = &policy.redirect else { return Ok(None) };
    let location = HeaderValue::from_str(&redirect.location(&parts.uri))
        .map_err(|_| ProxyError::BadRequest("the redirect target is not a valid header value"))?;
    let mut resp = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *resp.status_mut() = redirect.status;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(Some(resp))
}

/// Replaces the matched `prefix` of the request's path with the route's `prefix_rewrite`; the query
/// stays.
pub(super) fn rewrite_path(policy: &RoutePolicy, prefix: Option<&str>, parts: &mut http::request::Parts) {
    let (Some(replacement), Some(prefix)) = (policy.prefix_rewrite.as_deref(), prefix) else { return };
    let mut path = replace_prefix(parts.uri.path(), prefix, replacement);
    if let Some(q) = parts.uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    match http::uri::PathAndQuery::try_from(path) {
        Ok(pq) => uri.path_and_query = Some(pq),
        // The pieces were valid in the client's path and the validated replacement.
        Err(e) => tracing::debug!(error = %e, "prefix rewrite gave an invalid path; kept the client's"),
    }
    parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
}
