//! Sticky sessions by cookie.
//!
//! A pool with `sticky = { ... }` sends a request that carries a valid cookie for a ready server to
//! that server, whatever its strategy. Any other request (no cookie, a tampered or foreign one, or one
//! naming a server that is gone or not ready) is balanced as usual, and its response sets a fresh
//! cookie. Nothing about a cookie is ever an error.
//!
//! The cookie value is a *token*: HMAC-SHA256 over the pool and server *names*, keyed by the sticky
//! secret, truncated to 128 bits and base64url-encoded (22 characters). So it:
//! * reveals no address or name (it is a MAC output);
//! * cannot be forged or altered without the secret (any change fails the lookup);
//! * is the same for the same server across restarts, reloads and every lb instance that shares the
//!   secret, so a fleet of balancers honours each other's cookies with no shared state.
//!
//! Tokens and complete `Set-Cookie` values are computed once per snapshot; the request path only
//! looks a token up and clones a prepared header value.

use crate::config::{SameSite, StickyConfig};
use crate::upstream::Upstream;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;

/// Token length in bytes (128 bits).
const TOKEN_LEN: usize = 16;
/// Domain separation: tokens of a future format will never collide with these.
const CONTEXT: &[u8] = b"lb sticky v1\0";

/// A server's token.
pub type Token = [u8; TOKEN_LEN];

/// The token of `server` in `pool` under `secret`.
pub fn token(secret: &[u8], pool: &str, server: &str) -> Token {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(CONTEXT);
    mac.update(pool.as_bytes());
    mac.update(b"\0");
    mac.update(server.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(&digest[..TOKEN_LEN]);
    out
}

/// The cookie value for a token.
pub fn encode(token: &Token) -> String {
    URL_SAFE_NO_PAD.encode(token)
}

/// The token in a cookie value; `None` for anything that is not exactly a canonical encoding.
pub fn decode(value: &[u8]) -> Option<Token> {
    let mut out = [0u8; TOKEN_LEN];
    match URL_SAFE_NO_PAD.decode_slice(value, &mut out) {
        Ok(TOKEN_LEN) if value.len() == 22 => Some(out),
        _ => None,
    }
}

/// One pool's sticky state as of one snapshot.
#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    by_token: HashMap<Token, usize>,
    /// Complete `Set-Cookie` value per server index, for plain and for TLS clients.
    set_cookie: Box<[[Option<HeaderValue>; 2]]>,
}

impl Sticky {
    /// Prepares tokens and `Set-Cookie` values for a pool's servers.
    pub fn new(config: &StickyConfig, secret: &[u8], pool: &str, ups: &[Arc<Upstream>]) -> Self {
        let mut by_token = HashMap::with_capacity(ups.len());
        let mut set_cookie = Vec::with_capacity(ups.len());
        for (i, u) in ups.iter().enumerate() {
            let t = token(secret, pool, &u.key.name);
            by_token.insert(t, i);
            let line = |tls| HeaderValue::from_str(&cookie_line(config, &encode(&t), tls)).ok();
            set_cookie.push([line(false), line(true)]);
        }
        Self { cookie: config.cookie.clone(), by_token, set_cookie: set_cookie.into() }
    }

    /// The server index a valid cookie in `headers` names, if any.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<usize> {
        cookie_values(headers, &self.cookie)
            .find_map(|v| decode(v).and_then(|t| self.by_token.get(&t).copied()))
    }

    /// The `Set-Cookie` value that pins a client to server `index`; `tls`: the client came over TLS
    /// (the cookie is then `Secure` unless configured otherwise).
    pub fn set_cookie(&self, index: usize, tls: bool) -> Option<&HeaderValue> {
        self.set_cookie.get(index).and_then(|v| v[usize::from(tls)].as_ref())
    }
}

/// Removes every cookie named in `names` (all of lb's sticky cookies, whichever pool set them) from
/// the request's `Cookie` fields; every other cookie passes untouched, and a request carrying none of
/// them is not rewritten at all.
pub fn strip_cookies(headers: &mut HeaderMap, names: &[String]) {
    let ours = |pair: &[u8]| names.iter().any(|n| name_of(pair) == n.as_bytes());
    let present = headers.get_all(COOKIE).iter().any(|v| pairs(v.as_bytes()).any(ours));
    if !present {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| {
            let rest: Vec<&[u8]> = pairs(v.as_bytes()).filter(|pair| !ours(pair)).collect();
            (!rest.is_empty()).then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok()).flatten()
        })
        .collect();
    headers.remove(COOKIE);
    for v in kept {
        headers.append(COOKIE, v);
    }
}

/// HTTP/2 clients may split `Cookie` into several fields; an HTTP/1.1 upstream must get one, joined
/// with "; " (RFC 9113 section 8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, value);
    }
}

/// `name=token; Path=/; ...` with the configured attributes.
fn cookie_line(config: &StickyConfig, value: &str, tls: bool) -> String {
    let mut line = format!("{}={value}; Path={}", config.cookie, config.path);
    if let Some(domain) = &config.domain {
        line.push_str("; Domain=");
        line.push_str(domain);
    }
    if let Some(age) = config.max_age {
        line.push_str(&format!("; Max-Age={age}"));
    }
    if config.http_only {
        line.push_str("; HttpOnly");
    }
    if config.secure.unwrap_or(tls) {
        line.push_str("; Secure");
    }
    line.push_str(match config.same_site {
        SameSite::Strict => "; SameSite=Strict",
        SameSite::Lax => "; SameSite=Lax",
        SameSite::None => "; SameSite=None",
    });
    line
}

/// `a=1; b=2` -> `a=1`, `b=2` (trimmed).
fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b';').map(<[u8]>::trim_ascii).filter(|p| !p.is_empty())
}

fn name_of(pair: &[u8]) -> &[u8] {
    pair.iter().position(|&b| b == b'=').map_or(pair, |eq| pair[..eq].trim_ascii())
}

/// Values of every cookie called `name` in the request's `Cookie` fields.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.get_all(COOKIE).iter().flat_map(|v| pairs(v.as_bytes())).filter_map(move |pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::named_pool;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";

    fn config() -> StickyConfig {
        StickyConfig {
            cookie: "lb_web".into(),
            path: "/".into(),
            domain: None,
            max_age: Some(3600),
            http_only: true,
            secure: None,
            same_site: SameSite::Lax,
        }
    }

    fn sticky() -> (Sticky, Vec<Arc<Upstream>>) {
        let ups = named_pool(&["app1".into(), "app2".into(), "app3".into()]);
        (Sticky::new(&config(), SECRET, "web", &ups), ups)
    }

    fn cookie_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn round_trips_and_is_stable() {
        let t = token(SECRET, "web", "app2");
        assert_eq!(decode(encode(&t).as_bytes()), Some(t));
        assert_eq!(encode(&t).len(), 22);
        assert_eq!(t, token(SECRET, "web", "app2"), "same inputs, same token (every instance)");
        assert_ne!(t, token(SECRET, "web", "app3"));
        assert_ne!(t, token(SECRET, "api", "app2"), "pools do not share tokens");
        assert_ne!(t, token(b"another-secret-0123456789", "web", "app2"));
    }

    #[test]
    fn finds_the_server_a_cookie_names_among_other_cookies() {
        let (s, _) = sticky();
        let value = encode(&token(SECRET, "web", "app3"));
        assert_eq!(s.lookup(&cookie_header(&format!("theme=dark; lb_web={value}; x=1"))), Some(2));
        assert_eq!(s.lookup(&cookie_header("theme=dark")), None);
        assert_eq!(s.lookup(&cookie_header("lb_web=garbage")), None);
        assert_eq!(s.lookup(&cookie_header(&format!("lb_other={value}"))), None);
    }

    #[test]
    fn every_single_bit_flip_of_a_cookie_is_rejected() {
        let (s, _) = sticky();
        let value = encode(&token(SECRET, "web", "app1")).into_bytes();
        for byte in 0..value.len() {
            for bit in 0..8 {
                let mut flipped = value.clone();
                flipped[byte] ^= 1 << bit;
                let Ok(text) = std::str::from_utf8(&flipped) else { continue };
                let Ok(header) = HeaderValue::from_str(&format!("lb_web={text}")) else { continue };
                let mut h = HeaderMap::new();
                h.insert(COOKIE, header);
                assert_eq!(s.lookup(&h), None, "flip of bit {bit} in byte {byte} was accepted");
            }
        }
        // And flips of the token itself (not just its text).
        let t = token(SECRET, "web", "app1");
        for i in 0..TOKEN_LEN * 8 {
            let mut f = t;
            f[i / 8] ^= 1 << (i % 8);
            assert!(!s.by_token.contains_key(&f));
        }
    }

    #[test]
    fn set_cookie_carries_the_attributes_and_no_address() {
        let (s, ups) = sticky();
        let line = s.set_cookie(0, false).unwrap().to_str().unwrap().to_owned();
        assert!(line.starts_with("lb_web="), "{line}");
        assert!(line.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"), "{line}");
        assert!(!line.contains("app1") && !line.contains(&ups[0].addr) && !line.contains("127.0.0.1"));
        assert!(s.set_cookie(0, true).unwrap().to_str().unwrap().contains("; Secure"), "behind TLS");
    }

    #[test]
    fn strip_removes_only_lbs_cookies() {
        let names = vec!["lb_web".to_owned(), "lb_api".to_owned()];
        let mut h = cookie_header("theme=dark; lb_web=abc; session=xyz; lb_api=q");
        h.append(COOKIE, HeaderValue::from_static("lb_web=def"));
        strip_cookies(&mut h, &names);
        let all: Vec<_> = h.get_all(COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(all, vec!["theme=dark; session=xyz"]);
        let mut untouched = cookie_header("a=1;b=2");
        strip_cookies(&mut untouched, &names);
        assert_eq!(untouched[COOKIE], "a=1;b=2", "requests without lb's cookies are not rewritten");
    }

    #[test]
    fn split_cookie_fields_are_joined() {
        let mut h = cookie_header("a=1");
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
    }
}
