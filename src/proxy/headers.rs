//! Header hygiene (RFC 9110 section 7.6.1) and the X-Forwarded-* headers.
//!
//! Hop-by-hop fields describe one connection and must not travel past it: `Connection` and every
//! field it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`.
//! hyper frames each side's body itself, so dropping `Transfer-Encoding` never loses the body.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Upgrade` token of an HTTP/1.1 request that asks for a protocol switch lb is configured to
/// tunnel, lowercased. `None` when there is no upgrade, it is not allowed, or it is `h2c` (never).
pub fn allowed_upgrade(version: Version, headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    if version != Version::HTTP_11 || !connection_has(headers, "upgrade") {
        return None;
    }
    let value = headers.get(header::UPGRADE)?.to_str().ok()?;
    // Only a single protocol is tunnelled: lists ("websocket, foo") are ambiguous about the result.
    let token = value.trim().to_ascii_lowercase();
    let name = token.split('/').next().unwrap_or("");
    (name != "h2c" && allowed.iter().any(|a| a == name)).then_some(token)
}

/// Whether any `Connection` field lists `option` (case-insensitive).
fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(option))
}

/// The fields removed from every message, besides those `Connection` names.
const HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Whether the request's `TE` field lists `trailers`.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")))
    })
}

/// Whether `name` is one of the hop-by-hop fields lb never relays.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether the message has any hop-by-hop field. Most have none: one pass of cheap name comparisons
/// instead of seven hashed removals.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| HOP_BY_HOP.contains(&name))
}

/// Removes every hop-by-hop field, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !has_hop_by_hop(headers) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Restores the two fields a protocol switch needs after hop-by-hop stripping.
pub fn set_upgrade(headers: &mut HeaderMap, token: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, token);
}

/// The client address as an `X-Forwarded-For` element; computed once per connection.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    let ip = client.to_canonical().to_string();
    HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
/// Proto and Host are overwritten, never trusted from the client: only lb knows how it was reached.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // One hashed look-up for both the prior field and the new one.
    match headers.entry(&X_FORWARDED_FOR) {
        // The common case (no prior field) reuses the connection's value.
        Entry::Vacant(slot) => {
            slot.insert(client.clone());
        }
        Entry::Occupied(mut prior) => {
            let mut values = prior.iter().filter_map(|v| v.to_str().ok());
            let joined = match values.next() {
                Some(first) => {
                    let ip = client.to_str().unwrap_or("unknown");
                    let all = values.fold(first.to_owned(), |acc, v| acc + ", " + v);
                    HeaderValue::from_str(&format!("{all}, {ip}")).ok()
                }
                None => Some(client.clone()),
            };
            if let Some(value) = joined {
                // Replaces every prior value.
                prior.insert(value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "foo"),
            ("x-secret", "1"),
            ("foo", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn appends_forwarded_for_and_overwrites_proto_and_host() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(&mut h, &client_ip_value("10.0.0.9".parse().unwrap()), "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &client_ip_value("::ffff:10.0.0.1".parse().unwrap()), "http", None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn only_configured_upgrades_and_never_h2c() {
        let allowed = vec!["websocket".to_owned(), "h2c".to_owned()];
        let ws = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert_eq!(allowed_upgrade(Version::HTTP_11, &ws, &allowed).as_deref(), Some("websocket"));
        assert_eq!(allowed_upgrade(Version::HTTP_10, &ws, &allowed), None);
        let h2c = map(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(allowed_upgrade(Version::HTTP_11, &h2c, &allowed), None);
        let other = map(&[("connection", "upgrade"), ("upgrade", "foo")]);
        assert_eq!(allowed_upgrade(Version::HTTP_11, &other, &allowed), None);
        let no_conn = map(&[("upgrade", "websocket")]);
        assert_eq!(allowed_upgrade(Version::HTTP_11, &no_conn, &allowed), None);
    }
}
