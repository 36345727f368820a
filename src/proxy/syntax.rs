//! Strict request syntax (RFC 9112 and RFC 9110) for what hyper lets through: hyper parses every byte,
//! and these checks refuse, on the parsed head, the forms that are valid to hyper but ambiguous or
//! invalid to the RFCs, so that no server behind lb reads them differently from lb. See docs/http.md.

use super::error::ProxyError;
use crate::config::UnderscoreHeaders;
use http::{header, HeaderMap, Method};

/// Checks the request target's form and the framing fields; every failure is answered before any
/// server is chosen.
pub(super) fn check_head(parts: &http::request::Parts) -> Result<(), ProxyError> {
    check_target(&parts.method, &parts.uri)?;
    check_transfer_encoding(&parts.headers)
}

/// RFC 9112 section 3.2: asterisk-form only for OPTIONS, authority-form only for CONNECT (which lb
/// refuses before this).
fn check_target(method: &Method, uri: &http::Uri) -> Result<(), ProxyError> {
    if uri == "*" && method != Method::OPTIONS {
        return Err(ProxyError::BadRequest("asterisk-form target on a method other than OPTIONS"));
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(ProxyError::BadRequest("authority-form target on a method other than CONNECT"));
    }
    Ok(())
}

/// RFC 9112 section 6.1: the only transfer coding lb forwards is exactly one `chunked` (hyper has
/// already refused codings that do not end in `chunked`, and HTTP/2 carries none). An unknown coding
/// is 501 (section 6.1: "SHOULD respond with 501"); `chunked` twice, or in several fields, is 400.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut fields = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = fields.next() else { return Ok(()) };
    if fields.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Transfer-Encoding field"));
    }
    // Empty list elements are ignored, as RFC 9110 section 5.6.1.2 asks.
    let codings = first.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty());
    let mut chunked = 0;
    for coding in codings {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else {
            return Err(ProxyError::UnknownTransferCoding);
        }
    }
    if chunked != 1 {
        return Err(ProxyError::BadRequest("Transfer-Encoding is not exactly one \"chunked\""));
    }
    Ok(())
}

/// RFC 9110 section 7.2: `Host = uri-host [ ":" port ]`, with `uri-host` an IP literal in brackets, an
/// IPv4 address or a reg-name (unreserved characters, percent-encodings and sub-delims). No userinfo,
/// no spaces, no empty host.
pub(super) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..end];
        let parsed = std::str::from_utf8(literal).ok().and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
        if parsed.is_none() && !valid_ipvfuture(literal) {
            return false;
        }
        match &value[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (None, port),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (Some(&value[..colon]), &value[colon + 1..]),
            None => (Some(value), &[][..]),
        }
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    host.is_none_or(|h| !h.is_empty() && valid_reg_name(h))
}

/// The bytes a reg-name holds as they are (unreserved and sub-delims), one look-up per byte: every
/// request's host goes through here.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (an IPv4 address is one too).
fn valid_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if REG_NAME[usize::from(b)] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn valid_ipvfuture(literal: &[u8]) -> bool {
    let Some(rest) = literal.strip_prefix(b"v").or_else(|| literal.strip_prefix(b"V")) else { return false };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else { return false };
    let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !tail.is_empty()
        && tail.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b))
}

/// Applies `http.underscore_headers` to request fields whose name contains `_`: drops them (default),
/// refuses the request, or leaves them.
pub(super) fn underscore_headers(headers: &mut HeaderMap, rule: UnderscoreHeaders) -> Result<(), ProxyError> {
    if rule == UnderscoreHeaders::Pass || !headers.keys().any(|k| k.as_str().as_bytes().contains(&b'_')) {
        return Ok(());
    }
    if rule == UnderscoreHeaders::Reject {
        return Err(ProxyError::BadRequest("header field name with an underscore"));
    }
    let names: Vec<header::HeaderName> =
        headers.keys().filter(|k| k.as_str().contains('_')).cloned().collect();
    for name in names {
        headers.remove(&name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%2Db.example",
            "host:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok} should be valid");
        }
        for bad in [
            "",
            ":80",
            "user@example.com",
            "exa mple.com",
            "example.com:80a",
            "example.com/path",
            "[::1",
            "[::1]x",
            "[zz]",
            "a%zzb",
            "a\"b",
            "example.com:80:80x",
            "ex\\ample",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn transfer_encodings() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            check_transfer_encoding(&h).map_err(|e| e.status().as_u16())
        };
        assert_eq!(te(&[]), Ok(()));
        assert_eq!(te(&["chunked"]), Ok(()));
        assert_eq!(te(&["Chunked "]), Ok(()));
        assert_eq!(te(&["chunked, chunked"]), Err(400));
        assert_eq!(te(&["chunked", "chunked"]), Err(400));
        assert_eq!(te(&["gzip, chunked"]), Err(501));
        assert_eq!(te(&["identity"]), Err(501));
        assert_eq!(te(&[",chunked"]), Ok(()), "empty list elements are ignored");
        assert_eq!(te(&[""]), Err(400));
    }

    #[test]
    fn targets() {
        let t = |m: Method, u: &str| check_target(&m, &u.parse().unwrap()).is_ok();
        assert!(t(Method::OPTIONS, "*"));
        assert!(!t(Method::GET, "*"));
        assert!(!t(Method::GET, "example.com:80"));
        assert!(t(Method::GET, "/x"));
        assert!(t(Method::GET, "http://example.com/x"));
    }

    #[test]
    fn underscores() {
        let mut h = HeaderMap::new();
        h.insert("x_forwarded_for", "1.2.3.4".parse().unwrap());
        h.insert("x-ok", "1".parse().unwrap());
        assert!(underscore_headers(&mut h.clone(), UnderscoreHeaders::Reject).is_err());
        let mut passed = h.clone();
        underscore_headers(&mut passed, UnderscoreHeaders::Pass).unwrap();
        assert_eq!(passed.len(), 2);
        underscore_headers(&mut h, UnderscoreHeaders::Drop).unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ok"));
    }
}
