//! Hash keys: the part of a request a consistent-hash pool hashes, hashed with a fixed seed.
//!
//! The hash is xxHash3 with a fixed seed: a specified algorithm, so every lb build, every restart and
//! every instance maps the same key to the same point (never `RandomState`, which differs per process).
//! Extraction does not allocate.

use crate::config::HashKey;
use http::header::COOKIE;
use http::request::Parts;
use std::net::{IpAddr, SocketAddr};

/// Seed for request keys. Changing it moves every key: never change it.
const KEY_SEED: u64 = 0x6c62_5f6b_6579_7331;
/// Seed for ring points. Changing it moves every key: never change it.
const RING_SEED: u64 = 0x6c62_5f72_696e_6731;

/// Hashes request-key bytes.
pub fn hash_key_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, KEY_SEED)
}

/// Hashes a ring point's identity (server name and point number).
pub fn hash_point(name: &str, point: u32) -> u64 {
    let mut buf = Vec::with_capacity(name.len() + 5);
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&point.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&buf, RING_SEED)
}

/// Hash of the client's address (IPv4-mapped IPv6 counts as IPv4).
pub fn client_ip(client: SocketAddr) -> u64 {
    match client.ip().to_canonical() {
        IpAddr::V4(v4) => hash_key_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_key_bytes(&v6.octets()),
    }
}

/// The hash of `key` in this request, or `None` when the request does not carry it.
pub fn extract(key: &HashKey, client: SocketAddr, parts: &Parts) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(client_ip(client)),
        HashKey::Path => Some(hash_key_bytes(parts.uri.path().as_bytes())),
        HashKey::Header(name) => parts.headers.get(name).map(|v| hash_key_bytes(v.as_bytes())),
        HashKey::Cookie(name) => cookie(parts, name).map(hash_key_bytes),
        HashKey::Query(name) => query(parts, name).map(hash_key_bytes),
    }
}

/// The value of cookie `name` from any `Cookie` field (HTTP/2 may split them).
fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a [u8]> {
    parts.headers.get_all(COOKIE).iter().flat_map(|v| v.as_bytes().split(|&b| b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
    })
}

/// The raw (not percent-decoded) value of query parameter `name`; `""` for a bare `?name`.
fn query<'a>(parts: &'a Parts, name: &str) -> Option<&'a [u8]> {
    parts.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 5000);

    #[test]
    fn extracts_each_kind() {
        let p = parts("/a/b?x=1&user=alice&flag", &[("cookie", "a=1; session=s3cr3t"), ("x-user", "bob")]);
        let get = |k: HashKey| extract(&k, CLIENT, &p);
        assert_eq!(get(HashKey::Path), Some(hash_key_bytes(b"/a/b")));
        assert_eq!(get(HashKey::Query("user".into())), Some(hash_key_bytes(b"alice")));
        assert_eq!(get(HashKey::Query("flag".into())), Some(hash_key_bytes(b"")));
        assert_eq!(get(HashKey::Query("nope".into())), None);
        assert_eq!(get(HashKey::Cookie("session".into())), Some(hash_key_bytes(b"s3cr3t")));
        assert_eq!(get(HashKey::Cookie("sess".into())), None);
        assert_eq!(get(HashKey::Header("x-user".parse().unwrap())), Some(hash_key_bytes(b"bob")));
        assert_eq!(get(HashKey::Header("x-none".parse().unwrap())), None);
        assert_eq!(get(HashKey::ClientIp), Some(hash_key_bytes(&[10, 0, 0, 1])));
    }

    #[test]
    fn mapped_ipv6_hashes_like_ipv4_and_the_hash_is_pinned() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
        assert_eq!(client_ip(mapped), client_ip(CLIENT));
        // Pinned values: if these change, every deployed ring moves. Never update them casually.
        assert_eq!(hash_key_bytes(b"alice"), 0xf881_044a_e899_caa5);
        assert_eq!(hash_point("app1", 0), 0x1f19_e069_9916_61d3);
    }
}
