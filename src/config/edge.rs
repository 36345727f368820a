//! Validation of the edge keys: `[client_address]`, a listener's `proxy_protocol`, and a route's
//! `allow`, `deny`, `auth`, `redirect`, `prefix_rewrite`, `request_headers` and `response_headers`.

use super::raw::{RawClientAddress, RawHeaderRules, RawListener, RawRoute};
use super::validate::Issues;
use crate::edge::auth::BasicAuth;
use crate::edge::cidr::{Cidr, CidrList};
use crate::edge::client_addr::{ClientAddress, ForwardedHeader};
use crate::edge::header_rules::{HeaderOps, Template, PROTECTED};
use crate::edge::policy::{Redirect, RoutePolicy};
use http::{HeaderName, StatusCode};
use std::sync::Arc;

/// A list of ranges; each bad one is reported under `path[i]`.
pub(super) fn cidrs(path: &str, raw: &[String], out: &mut Issues<'_>) -> CidrList {
    let mut list = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        match Cidr::parse(text) {
            Ok(c) => list.push(c),
            Err(e) => out.push(format!("{path}[{i}]"), e),
        }
    }
    CidrList(list)
}

pub(super) fn client_address(raw: &RawClientAddress, out: &mut Issues<'_>) -> ClientAddress {
    let trusted_proxies =
        cidrs("client_address.trusted_proxies", raw.trusted_proxies.as_deref().unwrap_or(&[]), out);
    let header = match raw.header.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
        Some("forwarded") => ForwardedHeader::Forwarded,
        Some(_) => {
            out.push("client_address.header", "expected \"x-forwarded-for\" or \"forwarded\"");
            ForwardedHeader::XForwardedFor
        }
    };
    if raw.header.is_some() && trusted_proxies.is_empty() {
        out.push("client_address.header", "only used with trusted_proxies: whose header should be believed?");
    }
    ClientAddress { trusted_proxies, header }
}

/// A listener's `proxy_protocol` and `proxy_protocol_from`.
pub(super) fn proxy_protocol(base: &str, l: &RawListener, out: &mut Issues<'_>) -> Option<CidrList> {
    let from = l.proxy_protocol_from.as_deref();
    if l.proxy_protocol != Some(true) {
        if from.is_some() {
            out.push(format!("{base}.proxy_protocol_from"), "only used with proxy_protocol = true");
        }
        return None;
    }
    let Some(from) = from.filter(|f| !f.is_empty()) else {
        out.push(
            format!("{base}.proxy_protocol_from"),
            "required with proxy_protocol = true: the addresses of the balancers that send the header \
             (\"0.0.0.0/0\" and \"::/0\" trust anyone)",
        );
        return None;
    };
    Some(cidrs(&format!("{base}.proxy_protocol_from"), from, out))
}

/// Whether the route names any edge key (a redirect route needs no pool).
pub(super) fn redirects(r: &RawRoute) -> bool {
    r.redirect.is_some()
}

/// The route's policy, or `None` when it sets no edge key.
pub(super) fn policy(
    path: &str,
    r: &RawRoute,
    prefix: Option<&str>,
    rules: &[crate::ratelimit::RateLimitRule],
    out: &mut Issues<'_>,
) -> Option<Arc<RoutePolicy>> {
    let allow = cidrs(&format!("{path}.allow"), r.allow.as_deref().unwrap_or(&[]), out);
    let deny = cidrs(&format!("{path}.deny"), r.deny.as_deref().unwrap_or(&[]), out);
    let auth = r.auth.as_ref().and_then(|a| {
        let Some(file) = a.htpasswd.as_deref() else {
            out.push(format!("{path}.auth.htpasswd"), "is required: an htpasswd file of bcrypt hashes");
            return None;
        };
        let realm = a.realm.as_deref().unwrap_or("lb");
        match BasicAuth::load(file, realm, a.forward.unwrap_or(false)) {
            Ok(auth) => Some(Arc::new(auth)),
            Err(e) => {
                out.push(format!("{path}.auth.htpasswd"), e);
                None
            }
        }
    });
    let redirect = r.redirect.as_ref().and_then(|raw| {
        let base = format!("{path}.redirect");
        let status = match raw.status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s as u16).ok()?,
            s => {
                out.push(format!("{base}.status"), format!("{s}: expected 301, 302, 303, 307 or 308"));
                return None;
            }
        };
        let Some(to) = raw.to.clone() else {
            out.push(
                format!("{base}.to"),
                "is required: a URL (\"https://example.com\") or a path (\"/new\")",
            );
            return None;
        };
        let absolute = to.starts_with("https://") || to.starts_with("http://");
        if !(absolute || to.starts_with('/')) || http::HeaderValue::from_str(&to).is_err() {
            out.push(
                format!("{base}.to"),
                format!("{to:?}: expected a URL (\"https://example.com\") or a path (\"/new\")"),
            );
            return None;
        }
        if absolute && to.parse::<http::Uri>().is_err() {
            out.push(format!("{base}.to"), format!("{to:?} is not a valid URL"));
            return None;
        }
        Some(Redirect {
            status,
            to,
            keep_path: raw.keep_path.unwrap_or(true),
            keep_query: raw.keep_query.unwrap_or(true),
        })
    });
    if r.redirect.is_some() && r.pool.is_some() {
        out.push(format!("{path}.pool"), "a route that redirects answers itself: remove pool or redirect");
    }
    let prefix_rewrite = r.prefix_rewrite.as_ref().and_then(|p| {
        let key = format!("{path}.prefix_rewrite");
        if prefix.is_none() {
            out.push(key, "only used with path_prefix: which prefix should it replace?");
            return None;
        }
        let valid = (p.is_empty() || p.starts_with('/'))
            && !p.contains(['?', '#'])
            && http::uri::PathAndQuery::try_from(if p.is_empty() { "/" } else { p.as_str() }).is_ok();
        if !valid {
            out.push(key, format!("{p:?}: expected a path such as \"/\" or \"/v2\""));
            return None;
        }
        Some(p.clone())
    });
    let request_headers = header_ops(&format!("{path}.request_headers"), r.request_headers.as_ref(), out);
    let response_headers = header_ops(&format!("{path}.response_headers"), r.response_headers.as_ref(), out);
    let (mut rate_limits, mut rate_limit_names) = (Vec::new(), Vec::new());
    for (i, name) in r.rate_limits.iter().flatten().enumerate() {
        match rules.iter().position(|rule| &*rule.name == name) {
            Some(index) => {
                rate_limits.push(index);
                rate_limit_names.push(name.clone());
            }
            None => out.push(
                format!("{path}.rate_limits[{i}]"),
                format!("no [[rate_limits]] rule is named {name:?}"),
            ),
        }
    }
    let policy = RoutePolicy {
        allow,
        deny,
        auth,
        redirect,
        prefix_rewrite,
        request_headers,
        response_headers,
        rate_limits,
        rate_limit_names,
    };
    (policy != RoutePolicy::default()).then(|| Arc::new(policy))
}

fn header_ops(path: &str, raw: Option<&RawHeaderRules>, out: &mut Issues<'_>) -> HeaderOps {
    let Some(raw) = raw else { return HeaderOps::default() };
    let mut remove = Vec::new();
    for (i, n) in raw.remove.iter().flatten().enumerate() {
        remove.extend(header_name(format!("{path}.remove[{i}]"), n, out));
    }
    let set = templated(&format!("{path}.set"), raw.set.as_ref(), out);
    let add = templated(&format!("{path}.add"), raw.add.as_ref(), out);
    HeaderOps { remove, set, add }
}

fn templated(
    path: &str,
    map: Option<&std::collections::BTreeMap<String, String>>,
    out: &mut Issues<'_>,
) -> Vec<(HeaderName, Template)> {
    let mut result = Vec::new();
    for (n, v) in map.into_iter().flatten() {
        let key = format!("{path}.{n}");
        let Some(header) = header_name(key.clone(), n, out) else { continue };
        match Template::parse(v) {
            Ok(t) => result.push((header, t)),
            Err(e) => out.push(key, e),
        }
    }
    result
}

fn header_name(key: String, text: &str, out: &mut Issues<'_>) -> Option<HeaderName> {
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(n) if PROTECTED.contains(&n.as_str()) => {
            out.push(key, format!("{text:?} frames the message or concerns one hop; lb sets it itself"));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            out.push(key, format!("{text:?} is not a valid header name"));
            None
        }
    }
}
