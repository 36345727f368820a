//! Host and path-prefix routing to a pool.
//!
//! Routes arrive from config already ordered most specific first (exact host, then longer wildcard,
//! then any host; longer path prefix first within each), so the first match wins. Matching never
//! allocates: hosts compare case-insensitively in place and the port is ignored.

use crate::config::{HostMatch, RouteConfig};

/// The compiled routing table of one snapshot.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Box<[RouteConfig]>,
}

impl Router {
    /// Builds a router from config routes (already ordered and validated).
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self { routes: routes.into() }
    }

    /// Index of the pool for a request with this host (may include a port) and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| host_matches(r.host.as_ref(), host) && prefix_matches(r.path_prefix.as_deref(), path))
            .map(|r| r.pool)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn host_matches(rule: Option<&HostMatch>, host: Option<&str>) -> bool {
    let (rule, host) = match (rule, host) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(rule), Some(host)) => (rule, host.trim_end_matches('.')),
    };
    match rule {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// Segment-boundary prefix match: `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
fn prefix_matches(prefix: Option<&str>, path: &str) -> bool {
    match prefix {
        None | Some("/") => true,
        Some(p) => path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let r = |host: Option<HostMatch>, prefix: Option<&str>, pool| RouteConfig {
            host,
            path_prefix: prefix.map(str::to_owned),
            pool,
        };
        Router::new(&[
            r(Some(HostMatch::Exact("api.example.com".into())), Some("/v1"), 0),
            r(Some(HostMatch::Exact("api.example.com".into())), None, 1),
            r(Some(HostMatch::Suffix(".example.com".into())), None, 2),
            r(None, Some("/static"), 3),
        ])
    }

    #[test]
    fn matches_host_then_prefix() {
        let r = router();
        assert_eq!(r.route(Some("api.example.com"), "/v1/users"), Some(0));
        assert_eq!(r.route(Some("API.Example.com:8443"), "/v1"), Some(0));
        assert_eq!(r.route(Some("api.example.com"), "/v10"), Some(1));
        assert_eq!(r.route(Some("www.example.com"), "/v1"), Some(2));
        assert_eq!(r.route(Some("example.com"), "/static/a.css"), Some(3));
        assert_eq!(r.route(None, "/static"), Some(3));
        assert_eq!(r.route(Some("other.org"), "/staticky"), None);
        assert_eq!(r.route(Some("[::1]:8080"), "/"), None);
    }

    #[test]
    fn strips_ports_and_brackets() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
