//! The copy of a request head kept for another attempt ([`SpareHead`]): what a retry sends once
//! hyper has consumed the head of the attempt that failed.
//!
//! Kept as one block of bytes rather than a second `Parts`. Most requests are never retried, and
//! a `HeaderMap` copy is dropped when its request ends, tens of milliseconds later under load, when
//! its buckets and the shared read buffer its values point into have left the cache: dropping it
//! read 18.6 cold cache lines per request at 1,024 connections, and the copy cost about a thousand
//! instructions (docs/performance.md, "The spare head in one block"). Freeing one block reads none
//! of it. A retry, the rare path, builds the head again from the block.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Field layout in the block: name length and value length (each `u32`, little endian), a flag
/// byte (`SENSITIVE` when the value is marked sensitive), then the name's and the value's bytes.
const LENGTHS: usize = 9;
const SENSITIVE: u8 = 1;

/// A request head (method, version, header fields in order) for sending again. The target is kept
/// apart by the caller (the exchange's own copy of it).
pub(super) struct SpareHead {
    method: Method,
    version: Version,
    fields: Box<[u8]>,
    count: usize,
}

impl SpareHead {
    /// Copies the head's method, version and fields (every value of every name, in order).
    pub(super) fn copy(parts: &http::request::Parts) -> Self {
        let size: usize = parts.headers.iter().map(|(n, v)| LENGTHS + n.as_str().len() + v.len()).sum();
        let mut fields = Vec::with_capacity(size);
        let mut count = 0;
        for (name, value) in &parts.headers {
            let (name, flags) = (name.as_str().as_bytes(), if value.is_sensitive() { SENSITIVE } else { 0 });
            // Both fit: hyper refuses heads larger than its buffer limit, far below 4 GiB.
            let (name_len, value_len) = (len_u32(name.len()), len_u32(value.len()));
            fields.extend_from_slice(&name_len.to_le_bytes());
            fields.extend_from_slice(&value_len.to_le_bytes());
            fields.push(flags);
            fields.extend_from_slice(name);
            fields.extend_from_slice(value.as_bytes());
            count += 1;
        }
        Self {
            method: parts.method.clone(),
            version: parts.version,
            fields: fields.into_boxed_slice(),
            count,
        }
    }

    /// The head again, with `target` as its URI; `None` only if the block does not read back as
    /// the fields it was made from (it always does: they were valid when copied).
    pub(super) fn to_parts(&self, target: &Uri) -> Option<http::request::Parts> {
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = self.method.clone();
        head.uri = target.clone();
        head.version = self.version;
        let mut headers = HeaderMap::with_capacity(self.count);
        let mut rest = &self.fields[..];
        while !rest.is_empty() {
            let name_len = read_u32(rest.get(..4)?)?;
            let value_len = read_u32(rest.get(4..8)?)?;
            let flags = *rest.get(8)?;
            let name = rest.get(LENGTHS..LENGTHS + name_len)?;
            let value = rest.get(LENGTHS + name_len..LENGTHS + name_len + value_len)?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(flags & SENSITIVE != 0);
            headers.append(HeaderName::from_bytes(name).ok()?, value);
            rest = rest.get(LENGTHS + name_len + value_len..)?;
        }
        head.headers = headers;
        Some(head)
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn read_u32(bytes: &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = bytes.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_comes_back_whole_and_in_order() {
        let mut req = Request::builder()
            .method(Method::PUT)
            .uri("http://example.com/a/b?c=d")
            .version(Version::HTTP_10)
            .header("host", "example.com")
            .header("x-multi", "one")
            .header("cookie", "a=1")
            .header("x-multi", "two")
            .header("x-custom_name", "é".as_bytes())
            .header("x-empty", "")
            .body(())
            .unwrap();
        let mut secret = HeaderValue::from_static("Bearer abc");
        secret.set_sensitive(true);
        req.headers_mut().insert("authorization", secret);
        let (parts, ()) = req.into_parts();

        let spare = SpareHead::copy(&parts);
        let target: Uri = "/other?x=1".parse().unwrap();
        let back = spare.to_parts(&target).unwrap();

        assert_eq!(back.method, Method::PUT);
        assert_eq!(back.version, Version::HTTP_10);
        assert_eq!(back.uri, target);
        let fields = |h: &HeaderMap| {
            h.iter().map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive())).collect::<Vec<_>>()
        };
        assert_eq!(fields(&back.headers), fields(&parts.headers));
        assert!(back.headers["authorization"].is_sensitive());
        assert_eq!(back.headers.get_all("x-multi").iter().collect::<Vec<_>>(), ["one", "two"]);
    }

    #[test]
    fn a_head_without_fields_comes_back_empty() {
        let (parts, ()) = Request::new(()).into_parts();
        let back = SpareHead::copy(&parts).to_parts(&Uri::from_static("/")).unwrap();
        assert!(back.headers.is_empty());
        assert_eq!(back.method, Method::GET);
    }
}
