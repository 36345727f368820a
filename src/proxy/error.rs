//! Every way a request can fail, and the one place failures become responses.

use super::body::ResponseBody;
use crate::config::ErrorPages;
use http::{header, HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Who caused a failure, for logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse.
    Client,
    /// The upstream server failed or was too slow.
    Upstream,
    /// lb's own configuration left no answer (no route, no ready server).
    Config,
    /// The route's edge policy refused the client (access list, credentials).
    Policy,
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed in a way hyper does not catch.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke off or was malformed (e.g. an invalid chunk size).
    #[error("client request body: {0}")]
    ClientBody(String),
    /// The client stopped sending its request body for longer than `timeouts.client_body`.
    #[error("client request body stalled")]
    ClientTimeout,
    /// The request's Transfer-Encoding names a coding other than `chunked`.
    #[error("unsupported transfer coding")]
    UnknownTransferCoding,
    /// The request body is larger than `limits.max_body_size` (declared, or found while reading).
    #[error("request body larger than the limit")]
    BodyTooLarge,
    /// `CONNECT`: lb does not open tunnels to arbitrary destinations.
    #[error("CONNECT is not supported")]
    MethodNotAllowed,
    /// The route's access lists refuse the client's address.
    #[error("client address refused by the route's access rules")]
    Forbidden,
    /// The route asks for basic auth and the request has no valid credentials.
    #[error("{}", if *wrong { "wrong user or password" } else { "no credentials" })]
    Unauthorized {
        /// `WWW-Authenticate` of the answer.
        challenge: HeaderValue,
        /// Credentials were sent but are wrong (logged; a missing header is a browser's first try).
        wrong: bool,
    },
    /// Too many basic-auth checks waiting for a turn at bcrypt.
    #[error("too many credential checks waiting")]
    AuthBusy,
    /// Over a `[[rate_limits]]` rule's limit.
    #[error("over rate limit {}", .0.rule)]
    RateLimited(Box<crate::ratelimit::Limited>),
    /// No route matches the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The chosen pool has no ready server.
    #[error("pool {pool}: no server is ready")]
    NoReadyServer {
        /// The pool.
        pool: String,
    },
    /// Every server is at its limits and the pool's queue is full.
    #[error("pool {pool}: every server is at its limits and the queue is full")]
    QueueFull {
        /// The pool.
        pool: String,
    },
    /// Every server stayed at its limits for the whole queue timeout.
    #[error("pool {pool}: no server below its limits within {after:?}")]
    QueueTimeout {
        /// The pool.
        pool: String,
        /// The queue timeout.
        after: Duration,
    },
    /// The chosen server stayed at its connection limit.
    #[error("upstream {upstream}: at its connection limit")]
    AtLimit {
        /// Pool/server.
        upstream: String,
    },
    /// Connecting to the upstream was refused or failed.
    #[error("upstream {upstream}: connect failed: {reason}")]
    Connect {
        /// Pool/server.
        upstream: String,
        /// The underlying error.
        reason: String,
    },
    /// The upstream did not answer (connect or response headers) in time.
    #[error("upstream {upstream}: no response within {after:?}")]
    Timeout {
        /// Pool/server.
        upstream: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The upstream reset the connection or sent an invalid response.
    #[error("upstream {upstream}: {reason}")]
    Upstream {
        /// Pool/server.
        upstream: String,
        /// The underlying error.
        reason: String,
    },
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::AuthBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoReadyServer { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. }
            | Self::AtLimit { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who caused it.
    pub fn source(&self) -> Source {
        match self {
            Self::BadRequest(_)
            | Self::ClientBody(_)
            | Self::ClientTimeout
            | Self::BodyTooLarge
            | Self::UnknownTransferCoding
            | Self::MethodNotAllowed => Source::Client,
            Self::NoRoute | Self::NoReadyServer { .. } => Source::Config,
            Self::Forbidden | Self::Unauthorized { .. } | Self::RateLimited(_) | Self::AuthBusy => {
                Source::Policy
            }
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Upstream { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. }
            | Self::AtLimit { .. } => Source::Upstream,
        }
    }
}

/// The response for a failure: its status, the operator's page for it (`[error_pages]`) or a
/// one-line text body, and `Connection: close` when the client's own bytes were at fault (the
/// connection's framing can no longer be trusted).
pub fn error_response(err: &ProxyError, pages: &ErrorPages) -> Response<ResponseBody> {
    let status = err.status();
    let (body, content_type) = match pages.get(status) {
        Some(page) => (page.body.clone(), page.content_type.clone()),
        None => {
            let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
            (text.into(), HeaderValue::from_static("text/plain; charset=utf-8"))
        }
    };
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if err.source() == Source::Client {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let ProxyError::Unauthorized { challenge, .. } = err {
        headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
    }
    if let ProxyError::RateLimited(limited) = err {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after));
        limited.headers.apply(headers);
    }
    resp
}
