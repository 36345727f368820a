//! Fills the cache from a response while the client receives it: each data frame is copied as it
//! passes (up to the object limit) and the object is stored only once the body has ended cleanly.
//! A body that fails, carries trailers, grows past the limit, or is dropped because the client went
//! away stores nothing, so a partial copy is never served.

use super::{Fetching, Object, Store};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;
use std::sync::Arc;

/// The recorder a response body carries on its way to the client.
pub struct Fill {
    store: Arc<Store>,
    key: String,
    request: http::request::Parts,
    policy: CachePolicy,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    /// Given up: too large, or broken.
    spoiled: bool,
    /// Waiters for this key wake when the fill ends, stored or not.
    _fetching: Option<Fetching>,
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("key", &self.key)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Fill {
    /// Records the body of a response with this head, to store under `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        key: String,
        request: http::request::Parts,
        policy: CachePolicy,
        status: StatusCode,
        headers: HeaderMap,
        fetching: Option<Fetching>,
    ) -> Self {
        Self {
            store,
            key,
            request,
            policy,
            status,
            headers,
            body: BytesMut::new(),
            spoiled: false,
            _fetching: fetching,
        }
    }

    /// A data frame passed to the client.
    pub fn data(&mut self, data: &Bytes) {
        if self.spoiled {
            return;
        }
        if (self.body.len() + data.len()) as u64 > self.store.settings.max_object_size {
            // Passed through, not stored.
            self.spoiled = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// The body failed, or carried trailers: nothing is stored.
    pub fn spoil(&mut self) {
        self.spoiled = true;
    }

    /// The body ended cleanly: store it.
    pub fn finish(self) {
        if self.spoiled {
            return;
        }
        let now = self.store.now();
        let default_ttl = self.store.settings.default_ttl;
        let object =
            Object::new(self.policy, self.status, self.headers, self.body.freeze(), now, default_ttl);
        self.store.insert(&self.key, &self.request, object, true);
    }
}
