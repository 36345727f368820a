//! Redirect listeners (`redirect_https = true`): every request is answered `308 Permanent Redirect`
//! to the same host, path and query over https, as nginx's `return 308 https://$host$request_uri`.
//! 308 (not 301) keeps the method and body of a POST. Nothing is proxied.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;

/// The service of a redirect listener: every request answered with [`to_https`] on `port`.
pub(super) fn service(port: u16) -> Redirect {
    Redirect(port)
}

/// See [`service`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Redirect(u16);

impl<B> hyper::service::Service<Request<B>> for Redirect {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(to_https(&req, self.0)))
    }
}

/// The redirect for `req` to https on `port` (omitted from the URL when 443). A request without a
/// usable host gets 400: there is nowhere to send it.
fn to_https<B>(req: &Request<B>, port: u16) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(strip_port));
    // Only a plain host name or address: no userinfo, path or `*` may shape the Location.
    let host = host.filter(|h| {
        !h.is_empty()
            && h.parse::<http::uri::Authority>().is_ok()
            && !h.contains(['@', '/', '*', '?', '#', '\\'])
    });
    let location = host.and_then(|host| {
        let port = if port == 443 { String::new() } else { format!(":{port}") };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    match location {
        Some(location) => {
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(header::LOCATION, location);
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> String {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => host[..i].to_owned(),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn location(uri: &str, host: Option<&str>, port: u16) -> (StatusCode, Option<String>) {
        let mut req = Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let resp = to_https(&req.body(()).unwrap(), port);
        let loc = resp.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_owned());
        (resp.status(), loc)
    }

    #[tokio::test]
    async fn keeps_host_path_and_query_and_drops_the_plain_port() {
        let (status, loc) = location("/a/b?x=1", Some("example.com:8080"), 443).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(loc.as_deref(), Some("https://example.com/a/b?x=1"));
        assert_eq!(location("/", Some("[::1]:80"), 8443).await.1.as_deref(), Some("https://[::1]:8443/"));
        assert_eq!(location("/", None, 443).await.0, StatusCode::BAD_REQUEST);
        for bad in ["a@evil.test", "evil.test/x", "*"] {
            assert_eq!(location("/", Some(bad), 443).await.0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
