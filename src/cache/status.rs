//! The response directives the cache reads beyond RFC 9111's freshness (RFC 5861's stale windows,
//! `must-revalidate`), and the `Cache-Status` field (RFC 9211) it answers with.

use http::{HeaderMap, HeaderValue};
use std::time::Duration;

/// `Cache-Status`'s name for this cache.
const CACHE: &str = "lb";

/// What a stored response's `Cache-Control` says beyond what `http-cache-semantics` reads.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Directives {
    /// `stale-while-revalidate=N`.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error=N`.
    pub stale_if_error: Duration,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `s-maxage`: for a shared cache it implies `proxy-revalidate`.
    pub s_maxage: bool,
    /// `no-cache` (or `Pragma: no-cache`): no reuse without the origin.
    pub no_cache: bool,
    /// `max-age`, `s-maxage` or `Expires` is present: the origin stated a lifetime.
    pub explicit_expiry: bool,
}

impl Directives {
    /// Reads them from a response's fields.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Self {
            explicit_expiry: headers.contains_key(http::header::EXPIRES),
            no_cache: pragma_no_cache(headers),
            ..Self::default()
        };
        each_directive(headers, |name, arg| {
            let seconds = || arg.parse::<u64>().map(Duration::from_secs).unwrap_or_default();
            match name {
                "stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                "stale-if-error" => d.stale_if_error = seconds(),
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "max-age" => d.explicit_expiry = true,
                "s-maxage" => {
                    d.explicit_expiry = true;
                    d.s_maxage = true;
                }
                "no-cache" => d.no_cache = true,
                _ => {}
            }
        });
        d
    }
}

/// What a request's `Cache-Control` (and `Pragma`) asks of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RequestDirectives {
    /// `no-store`: neither answered from the cache nor kept in it.
    pub no_store: bool,
    /// `no-cache`, `max-age` or `min-fresh` (or `Pragma: no-cache`): the client wants an answer at
    /// least that new, so the cache's own lifetimes (`default_ttl`, the stale windows) do not apply.
    pub wants_newer: bool,
}

impl RequestDirectives {
    /// Reads them from a request's fields.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Self { wants_newer: pragma_no_cache(headers), ..Self::default() };
        each_directive(headers, |name, _| match name {
            "no-store" => d.no_store = true,
            "no-cache" | "max-age" | "min-fresh" => d.wants_newer = true,
            _ => {}
        });
        d
    }
}

/// Calls `f` with each `Cache-Control` directive's lower-case name and its argument (unquoted).
fn each_directive(headers: &HeaderMap, mut f: impl FnMut(&str, &str)) {
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
            f(&name.trim().to_ascii_lowercase(), arg.trim().trim_matches('"'));
        }
    }
}

/// `Pragma: no-cache`, HTTP/1.0's `Cache-Control: no-cache`.
fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::PRAGMA)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache")))
}

/// How the cache answered a request, as `Cache-Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Served from the cache, fresh.
    Hit,
    /// Served from the cache after waiting for another request's fetch.
    Collapsed,
    /// Served from what another instance stored in the shared tier.
    SharedHit,
    /// Served stale while one refresh goes upstream.
    StaleWhileRevalidate,
    /// Served stale because the origin failed (its status, or none for a connection failure).
    StaleIfError(Option<u16>),
    /// Revalidated with the origin, which answered 304.
    Revalidated,
    /// Forwarded: nothing stored suited the request; `stored` if the answer is being stored.
    Miss {
        /// The answer is being stored.
        stored: bool,
    },
    /// Forwarded: a stored object was stale and the origin sent a new one.
    Refreshed {
        /// The origin's status.
        status: u16,
        /// The answer is being stored.
        stored: bool,
    },
    /// Forwarded without looking: the request forbids stored answers (`no-store`).
    Bypass,
}

impl Answer {
    /// The `Cache-Status` field value.
    pub fn header(self) -> HeaderValue {
        let text = match self {
            Self::Hit => format!("{CACHE}; hit"),
            Self::Collapsed => format!("{CACHE}; hit; collapsed"),
            Self::SharedHit => format!("{CACHE}; hit; detail=shared"),
            Self::StaleWhileRevalidate => format!("{CACHE}; hit; detail=stale-while-revalidate"),
            Self::StaleIfError(Some(s)) => {
                format!("{CACHE}; hit; fwd=stale; fwd-status={s}; detail=stale-if-error")
            }
            Self::StaleIfError(None) => format!("{CACHE}; hit; fwd=stale; detail=stale-if-error"),
            Self::Revalidated => format!("{CACHE}; fwd=stale; fwd-status=304"),
            Self::Miss { stored: true } => format!("{CACHE}; fwd=miss; stored"),
            Self::Miss { stored: false } => format!("{CACHE}; fwd=miss"),
            Self::Refreshed { status, stored: true } => {
                format!("{CACHE}; fwd=stale; fwd-status={status}; stored")
            }
            Self::Refreshed { status, stored: false } => format!("{CACHE}; fwd=stale; fwd-status={status}"),
            Self::Bypass => format!("{CACHE}; fwd=request"),
        };
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("lb"))
    }
}

/// The `Cache-Status` field name.
pub static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
