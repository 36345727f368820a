//! The reference router: the ordered scan lb used before the index, kept so that tests can check
//! that [`Router`](super::Router) answers exactly as the scan does.
//!
//! Routes must be ordered most specific first (as config validation orders them), so that the first
//! match is the answer.

use super::{host_matches, prefix_matches};
use crate::config::RouteConfig;

/// First matching route of an ordered table, found by trying each route in turn.
#[derive(Debug, Clone)]
pub(crate) struct ScanRouter {
    routes: Box<[RouteConfig]>,
}

impl ScanRouter {
    /// A scan over `routes` in the order given.
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        Self { routes: routes.into() }
    }

    /// Pool of the first route matching host (port ignored) and path.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| host_matches(r.host.as_ref(), host) && prefix_matches(r.path_prefix.as_deref(), path))
            .map(|r| r.pool)
    }
}

/// The host without its port, as the scan always did it (the index has its own, checked against
/// this one by the property test).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
