//! `POST /cache/purge`: removes stored responses by URL or by key prefix, in one cache or all.
//!
//! The body is JSON: `{"cache": "NAME", "url": "https://example.com/a?b"}` removes every variant
//! of that URL; `{"prefix": "https://example.com/static/"}` removes every URL that starts with it.
//! Without `cache`, every cache is purged. A cache shared through Redis is purged there too (by
//! URL in the background; by prefix before the answer, which is 502 if Redis did not answer).

use super::{json, Reply};
use crate::runtime::Runtime;
use http::StatusCode;
use serde_json::json;

/// Largest request body accepted.
pub(super) const MAX_BODY: usize = 16 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    cache: Option<String>,
    url: Option<String>,
    prefix: Option<String>,
}

/// Applies a purge request.
pub(super) async fn purge(runtime: &Runtime, body: &[u8]) -> Reply {
    let request: Purge = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json(StatusCode::BAD_REQUEST, &json!({ "error": format!("{e}") })),
    };
    let snap = runtime.snapshot();
    let stores: Vec<_> = snap
        .caches
        .iter()
        .filter(|s| request.cache.as_deref().is_none_or(|n| *s.settings.name == *n))
        .collect();
    if stores.is_empty() {
        let error = match &request.cache {
            Some(name) => format!("no cache named {name:?}"),
            None => "no caches are configured".to_owned(),
        };
        return json(StatusCode::NOT_FOUND, &json!({ "error": error }));
    }
    match (&request.url, &request.prefix) {
        (Some(url), None) => {
            let Some(key) = crate::cache::key_of_url(url) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({ "error": "url: an absolute http(s) URL, please" }),
                );
            };
            for store in &stores {
                if let Err(e) = store.purge_url(&key).await {
                    let error =
                        format!("purged here, but Redis did not answer ({}): its copy stays", e.label());
                    return json(StatusCode::BAD_GATEWAY, &json!({ "error": error }));
                }
            }
            tracing::info!(%url, "cache purged by URL");
        }
        (None, Some(prefix)) => {
            for store in &stores {
                if let Err(e) = store.purge_prefix(prefix).await {
                    let error =
                        format!("purged here, but Redis did not answer ({}): its copies stay", e.label());
                    return json(StatusCode::BAD_GATEWAY, &json!({ "error": error }));
                }
            }
            tracing::info!(%prefix, "cache purged by prefix");
        }
        _ => return json(StatusCode::BAD_REQUEST, &json!({ "error": "give exactly one of url and prefix" })),
    }
    let names: Vec<&str> = stores.iter().map(|s| &*s.settings.name).collect();
    json(StatusCode::OK, &json!({ "purged": names }))
}
