//! What a route lets through, and how it changes a request, before any server is chosen: access
//! lists, basic auth, a redirect answered by lb itself, a path prefix rewrite and header rules.
//! A route without any of these has no policy at all (`None`), so it pays nothing for them.

use super::auth::BasicAuth;
use super::cidr::CidrList;
use super::header_rules::HeaderOps;
use http::{StatusCode, Uri};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// One route's edge policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Only these clients, when not empty.
    pub allow: CidrList,
    /// Never these clients (wins over `allow`).
    pub deny: CidrList,
    /// Basic auth.
    pub auth: Option<Arc<BasicAuth>>,
    /// Answer a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Replaces the route's `path_prefix` in the path the server sees.
    pub prefix_rewrite: Option<String>,
    /// Rules for the request's headers, applied last before forwarding.
    pub request_headers: HeaderOps,
    /// Rules for the server's response headers.
    pub response_headers: HeaderOps,
    /// Indices of the `[[rate_limits]]` rules this route names (they apply here only).
    pub rate_limits: Vec<usize>,
    /// Their names, for `lb check --diff`.
    pub rate_limit_names: Vec<String>,
}

impl RoutePolicy {
    /// Whether the client at `ip` may use the route: not denied, and allowed if there is an allow list.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

/// A redirect answered by lb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: StatusCode,
    /// The target: a URL, or a path on the same host.
    pub to: String,
    /// Append the request's path to the target.
    pub keep_path: bool,
    /// Append the request's query to the target.
    pub keep_query: bool,
}

impl Redirect {
    /// The `Location` for a request to `uri`.
    pub fn location(&self, uri: &Uri) -> String {
        let mut location = self.to.clone();
        if self.keep_path {
            // Never `//host` or `/\host` at the start: a browser reads those as another site.
            let rest = uri.path().trim_start_matches(['/', '\\']);
            let owned = format!("/{rest}");
            let path = owned.as_str();
            if location.ends_with('/') && path.starts_with('/') {
                location.pop();
            }
            location.push_str(path);
        }
        if let Some(q) = uri.query().filter(|_| self.keep_query) {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(q);
        }
        location
    }
}

/// The path after replacing `prefix` (which the route matched, on a segment boundary) with
/// `replacement`: `/api/v1/x` with `/api/v1` -> `/` is `/x`; never empty, never `//` at the seam.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    match (out.ends_with('/'), rest.starts_with('/')) {
        (true, true) => out.push_str(&rest[1..]),
        (false, false) if !rest.is_empty() => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

impl fmt::Display for RoutePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.allow.is_empty() {
            parts.push(format!("allow {}", self.allow));
        }
        if !self.deny.is_empty() {
            parts.push(format!("deny {}", self.deny));
        }
        if let Some(a) = &self.auth {
            parts.push(a.to_string());
        }
        if let Some(r) = &self.redirect {
            let keep = match (r.keep_path, r.keep_query) {
                (true, true) => " + path?query",
                (true, false) => " + path",
                (false, true) => " + ?query",
                (false, false) => "",
            };
            parts.push(format!("redirect {} {}{keep}", r.status.as_u16(), r.to));
        }
        if let Some(p) = &self.prefix_rewrite {
            parts.push(format!("prefix_rewrite {p}"));
        }
        if !self.request_headers.is_empty() {
            parts.push(format!("request headers {}", self.request_headers));
        }
        if !self.response_headers.is_empty() {
            parts.push(format!("response headers {}", self.response_headers));
        }
        if !self.rate_limits.is_empty() {
            parts.push(format!("rate limits {}", self.rate_limit_names.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cidr::Cidr;

    #[test]
    fn deny_wins_over_allow() {
        let list = |r: &[&str]| CidrList(r.iter().map(|c| Cidr::parse(c).unwrap()).collect());
        let p = RoutePolicy { allow: list(&["10.0.0.0/8"]), deny: list(&["10.0.0.5"]), ..Default::default() };
        assert!(p.admits("10.1.2.3".parse().unwrap()));
        assert!(!p.admits("10.0.0.5".parse().unwrap()));
        assert!(!p.admits("192.0.2.1".parse().unwrap()));
        let deny_only = RoutePolicy { deny: list(&["192.0.2.0/24"]), ..Default::default() };
        assert!(deny_only.admits("198.51.100.1".parse().unwrap()));
        assert!(!deny_only.admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn redirects_keep_what_they_say() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let r = |to: &str, keep_path, keep_query| Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            to: to.into(),
            keep_path,
            keep_query,
        };
        assert_eq!(r("https://new.example/", true, true).location(&uri), "https://new.example/a/b?x=1");
        assert_eq!(r("https://new.example", true, false).location(&uri), "https://new.example/a/b");
        assert_eq!(r("https://new.example/home", false, true).location(&uri), "https://new.example/home?x=1");
        assert_eq!(r("/home?lang=en", false, true).location(&uri), "/home?lang=en&x=1");
        assert_eq!(r("/home", false, false).location(&uri), "/home");
        for sneaky in ["//evil.example/x", "/\\evil.example/x", "/\\/evil.example/x"] {
            let uri: Uri = sneaky.parse().unwrap();
            let location = r("", true, true).location(&uri);
            assert!(
                location.starts_with('/') && !location[1..].starts_with(['/', '\\']),
                "{sneaky} -> {location}"
            );
        }
    }

    #[test]
    fn prefixes_are_replaced_at_the_seam() {
        assert_eq!(replace_prefix("/api/v1/x", "/api/v1", "/"), "/x");
        assert_eq!(replace_prefix("/api/v1", "/api/v1", "/"), "/");
        assert_eq!(replace_prefix("/api/v1/x/y", "/api/v1", "/v2"), "/v2/x/y");
        assert_eq!(replace_prefix("/api/v1/x", "/api/v1", "/v2/"), "/v2/x");
        assert_eq!(replace_prefix("/api/v1/x", "/api/v1", ""), "/x");
        assert_eq!(replace_prefix("/x", "/", "/app"), "/app/x");
        assert_eq!(replace_prefix("/", "/", "/app/"), "/app/");
    }
}
