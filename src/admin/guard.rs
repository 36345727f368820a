//! The rules every mutating admin request (`POST /reload`, `POST /pools/...`) must pass, checked
//! before its body is read:
//!
//! * `Host` names the admin listener (its IP, or `localhost` on loopback, and its port): a page on
//!   another name that resolves to us (DNS rebinding) is refused;
//! * no cross-site `Origin` (and no `Sec-Fetch-Site: cross-site`): a form or script on another site
//!   cannot act through the operator's browser (CSRF);
//! * a JSON `Content-Type`: browsers send that cross-site only after a CORS preflight, which lb never
//!   grants, so even an `Origin`-less old browser cannot forge the request;
//! * `Authorization: Bearer <token>` when `admin.token` (or `token_file`) is set, compared in constant
//!   time. The token is never logged or echoed.
//!
//! Pure functions over the request head, tested here.

use crate::config::Secret;
use http::{header, HeaderMap, StatusCode};
use std::net::{IpAddr, SocketAddr};

/// Why a mutating request was refused: the status and a message naming the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 401, 403 or 415.
    pub status: StatusCode,
    /// What was wrong, for the JSON answer.
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal { status, message: message.into() })
}

/// Checks a mutating request's head against every rule. `local` is the admin listener's bound
/// address, `token` the configured one.
pub fn check(headers: &HeaderMap, local: SocketAddr, token: Option<&Secret>) -> Result<(), Refusal> {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "a Host header naming the admin address is required");
    };
    if !host_names(host, local) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} does not name the admin address {local} (DNS rebinding protection)"),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return refuse(StatusCode::FORBIDDEN, "cross-site request refused: Origin is not the admin page");
        }
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return refuse(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    if let Some(token) = token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        match given {
            None => {
                return refuse(StatusCode::UNAUTHORIZED, "Authorization: Bearer <admin token> is required")
            }
            Some(given) if !same_secret(given.as_bytes(), &token.0) => {
                return refuse(StatusCode::UNAUTHORIZED, "the admin token is not right")
            }
            Some(_) => {}
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type: application/json is required");
    }
    Ok(())
}

/// Whether a `Host` value names the listener at `local`: same port, and its IP (any IP literal when
/// bound to all addresses), or `localhost` when bound to loopback or all addresses. Other names are
/// refused: that is what stops DNS rebinding.
pub fn host_names(host: &str, local: SocketAddr) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else { return false };
    if authority.port_u16() != Some(local.port()) {
        return false;
    }
    let name = authority.host().trim_start_matches('[').trim_end_matches(']');
    let ip = local.ip();
    match name.parse::<IpAddr>() {
        Ok(given) => given == ip || ip.is_unspecified(),
        Err(_) => name.eq_ignore_ascii_case("localhost") && (ip.is_loopback() || ip.is_unspecified()),
    }
}

/// Compares two secrets in time independent of where they differ (and of their lengths): both are
/// hashed first, then every byte of the digests is compared.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter().zip(b.iter()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    fn local() -> SocketAddr {
        "127.0.0.1:9901".parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn good() -> Vec<(&'static str, String)> {
        vec![
            ("host", "127.0.0.1:9901".into()),
            ("content-type", "application/json".into()),
            ("authorization", format!("Bearer {TOKEN}")),
        ]
    }

    fn with(changes: &[(&'static str, Option<&str>)]) -> HeaderMap {
        let mut pairs = good();
        for (k, v) in changes {
            pairs.retain(|(name, _)| name != k);
            if let Some(v) = v {
                pairs.push((k, (*v).to_owned()));
            }
        }
        headers(&pairs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    }

    fn status(h: &HeaderMap) -> Option<StatusCode> {
        check(h, local(), Some(&Secret(TOKEN.as_bytes().to_vec()))).err().map(|r| r.status)
    }

    #[test]
    fn a_well_formed_request_passes() {
        assert_eq!(status(&with(&[])), None);
        assert_eq!(status(&with(&[("origin", Some("http://127.0.0.1:9901"))])), None, "same origin");
        assert_eq!(status(&with(&[("content-type", Some("application/json; charset=utf-8"))])), None);
        assert_eq!(status(&with(&[("host", Some("localhost:9901"))])), None);
    }

    #[test]
    fn tokens_are_required_and_compared() {
        assert_eq!(status(&with(&[("authorization", None)])), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(&with(&[("authorization", Some("Bearer nope"))])), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(&with(&[("authorization", Some(TOKEN))])), Some(StatusCode::UNAUTHORIZED));
        let no_token = check(&with(&[("authorization", None)]), local(), None);
        assert_eq!(no_token, Ok(()), "without a configured token none is needed");
        let refusal =
            check(&with(&[("authorization", Some("Bearer wrong"))]), local(), Some(&Secret(TOKEN.into())));
        assert!(!refusal.unwrap_err().message.contains("wrong"), "the given token is never echoed");
    }

    #[test]
    fn cross_site_and_rebinding_are_refused() {
        let forbidden = Some(StatusCode::FORBIDDEN);
        assert_eq!(status(&with(&[("origin", Some("http://evil.example"))])), forbidden);
        assert_eq!(status(&with(&[("origin", Some("null"))])), forbidden);
        assert_eq!(status(&with(&[("sec-fetch-site", Some("cross-site"))])), forbidden);
        assert_eq!(status(&with(&[("host", Some("evil.example:9901"))])), forbidden);
        assert_eq!(status(&with(&[("host", Some("127.0.0.1:9902"))])), forbidden);
        assert_eq!(status(&with(&[("host", Some("127.0.0.1"))])), forbidden, "the port is part of it");
        assert_eq!(status(&with(&[("host", None)])), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn only_json_is_accepted() {
        let refused = Some(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(status(&with(&[("content-type", None)])), refused);
        assert_eq!(status(&with(&[("content-type", Some("text/plain"))])), refused);
        assert_eq!(status(&with(&[("content-type", Some("application/x-www-form-urlencoded"))])), refused);
    }

    #[test]
    fn hosts_name_the_listener() {
        let any: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert!(host_names("10.1.2.3:9901", any) && host_names("localhost:9901", any));
        assert!(!host_names("lb.example:9901", any));
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        assert!(host_names("[::1]:9901", v6) && host_names("localhost:9901", v6));
        let public: SocketAddr = "192.0.2.7:9901".parse().unwrap();
        assert!(host_names("192.0.2.7:9901", public) && !host_names("localhost:9901", public));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"abcd") && !same_secret(b"", b"a"));
    }
}
