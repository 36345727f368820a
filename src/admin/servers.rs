//! `POST /pools/{pool}/servers/{name}`: an operator drains, parks or re-weights one server
//! (body `{"state": "ready"|"drain"|"maint"}` and/or `{"weight": N}`, `{"weight": null}` clears).
//! The request has passed the [`super::guard`] rules before this runs.

use super::{json, Reply};
use crate::control::Change;
use crate::runtime::{Runtime, Unknown};
use http::StatusCode;

/// Largest body accepted: a change is a few dozen bytes.
pub const MAX_BODY: usize = 4096;

/// The pool and server names of a `/pools/{pool}/servers/{name}` path (percent-decoded), or `None`
/// if the path has another shape.
pub fn parse_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/pools/")?;
    let (pool, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("servers/")?;
    if pool.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some((percent_decode(pool)?, percent_decode(name)?))
}

/// Decodes `%XX` escapes; `None` on a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Applies `body` to server `name` of `pool`: 200 with the server's state now, 400 for a bad body,
/// 404 for an unknown pool or server.
pub fn apply(runtime: &Runtime, pool: &str, name: &str, body: &[u8]) -> Reply {
    let change = match Change::parse(body) {
        Ok(change) => change,
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e })),
    };
    match runtime.set_override(pool, name, change) {
        Ok(over) => {
            let snap = runtime.snapshot();
            let server = snap
                .pools
                .iter()
                .find(|p| &*p.name == pool)
                .and_then(|p| p.upstreams.iter().find(|u| &*u.key.name == name));
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "pool": pool,
                    "server": name,
                    "state": over.state.unwrap_or_default().as_str(),
                    "weight": server.map(|u| u.weight),
                    "override": (!over.is_empty()).then(|| serde_json::json!({
                        "state": over.state.map(|s| s.as_str()),
                        "weight": over.weight,
                    })),
                    "generation": snap.generation,
                }),
            )
        }
        Err(unknown) => {
            let error = match unknown {
                Unknown::Pool => format!("no pool named {pool:?}"),
                Unknown::Server => format!("pool {pool:?} has no server named {name:?}"),
            };
            json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": error }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_pool_and_a_server() {
        assert_eq!(parse_path("/pools/web/servers/app1"), Some(("web".into(), "app1".into())));
        assert_eq!(parse_path("/pools/web/servers/a%20b"), Some(("web".into(), "a b".into())));
        assert_eq!(parse_path("/pools/web/servers/"), None);
        assert_eq!(parse_path("/pools/web/servers/a/b"), None);
        assert_eq!(parse_path("/pools/web/app1"), None);
        assert_eq!(parse_path("/pools/web/servers/%zz"), None);
        assert_eq!(parse_path("/pools/web/servers/%4"), None);
    }
}
