//! A route's edge policy on the request path: check credentials (401), answer a redirect, or change the
//! request (path prefix, headers) and later the response headers. Only routes that have a policy
//! come here; see `crate::edge::policy`.

use super::body::ResponseBody;
use super::error::ProxyError;
use crate::edge::auth::Refusal;
use crate::edge::policy::{replace_prefix, RoutePolicy};
use http::{header, HeaderValue, Response};

/// Checks credentials; answers the redirect when the route is one. The `Authorization` header is
/// taken out once checked, unless the route forwards it. The access lists were checked earlier (see
/// `forward`), before the rate limits.
pub(super) async fn admit(
    policy: &RoutePolicy,
    parts: &mut http::request::Parts,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
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

/// The path with the matched `prefix` replaced by the route's `prefix_rewrite`, if it has one.
pub(super) fn rewritten_path(policy: &RoutePolicy, prefix: Option<&str>, path: &str) -> Option<String> {
    let (Some(replacement), Some(prefix)) = (policy.prefix_rewrite.as_deref(), prefix) else { return None };
    Some(replace_prefix(path, prefix, replacement))
}
