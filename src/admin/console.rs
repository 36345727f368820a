//! The operators' console: one page (HTML, CSS and JavaScript compiled into the binary, no CDN) that
//! polls `/status`, shows every pool and server live, and drains, parks or readies servers through
//! `POST /pools/{pool}/servers/{name}`. docs/console.md describes it.
//!
//! The page computes rates and percentiles itself by differencing successive `/status` readings, so
//! lb keeps only cumulative counters. A strict Content-Security-Policy (scripts and styles from this
//! origin only, no framing) keeps the page from running anything but its own script, and keeps other
//! sites from framing its buttons.

use super::Reply;
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

const PAGE: &str = include_str!("console/index.html");
const STYLESHEET: &str = include_str!("console/console.css");
const SCRIPT: &str = include_str!("console/console.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /`: the page.
pub(super) fn page() -> Reply {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /console.css`.
pub(super) fn stylesheet() -> Reply {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

/// `GET /console.js`.
pub(super) fn script() -> Reply {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}
