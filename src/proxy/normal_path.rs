//! The request path in normal form before routing (RFC 3986 section 6.2.2, plus merged slashes as
//! nginx's `merge_slashes`): percent-encoded unreserved characters decoded, dot segments removed,
//! runs of `/` merged. Routes, their access rules and auth, and rate-limit prefixes then see the
//! path a server will act on: `/%61dmin`, `//admin` and `/x/../admin` are all `/admin`, and cannot
//! slip past an `/admin` route to a catch-all. The normal path is also what the server receives, so
//! lb and the server agree on it. Other escapes (`%2F`, `%00`, non-ASCII) are left as sent.

/// The normal form of `path`, or `None` when it already is (the common case, checked in one scan).
pub(super) fn normalize(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let suspect = bytes.windows(2).any(|w| w == b"//" || w == b"/.") || bytes.contains(&b'%');
    if !suspect {
        return None;
    }
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            // Empty segments: runs of `/` merge into one.
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if normal.is_empty() || (trailing && !normal.ends_with('/')) {
        normal.push('/');
    }
    (normal != path).then_some(normal)
}

/// Decodes `%XX` where it stands for an unreserved character (`A-Z a-z 0-9 - . _ ~`), and writes
/// the hex digits of every other escape in upper case, so equal paths are equal strings.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // The path is ASCII (hyper accepts no other bytes in a target), so bytes are chars.
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normal_paths_are_left_alone() {
        for p in ["/", "/admin", "/a/b/", "/a.b/c.d", "/a%2Fb", "/%E2%82%AC"] {
            assert_eq!(normalize(p), None, "{p}");
        }
    }

    #[test]
    fn disguised_paths_become_what_a_server_reads() {
        for (given, normal) in [
            ("/%61dmin", "/admin"),
            ("//admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin/./", "/admin/"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%7Euser", "/~user"),
            ("/50%", "/50%"),
            ("/%zz", "/%zz"),
            ("//", "/"),
        ] {
            assert_eq!(normalize(given).as_deref().unwrap_or(given), normal, "{given}");
        }
    }
}
