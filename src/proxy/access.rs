//! Access log: one line per request, through `tracing` on the target [`TARGET`], in the text
//! format (close to the combined log format) or as JSON. Off by default. The line is written when the
//! response is over (body sent, failed, or the client left), so it carries the real byte count and
//! total time. `main.rs` routes this target to stdout through a non-blocking, bounded writer.

use crate::config::AccessLog;
use http::{header, HeaderValue, Method, Uri, Version};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The `tracing` target of access-log events.
pub const TARGET: &str = "lb::access";

/// Everything an access-log line says about one request except its final byte count and time.
/// Fields are cheap clones of the request's own parts (reference-counted), not copies.
#[derive(Debug)]
pub struct AccessRecord {
    format: AccessLog,
    at: SystemTime,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: HeaderValue,
    /// Response status.
    pub status: u16,
    /// The pool and server that answered, if any.
    pub server: Option<(Arc<str>, Arc<str>)>,
    /// Upstream time to response head.
    pub upstream_time: Option<Duration>,
    /// The `[[rate_limits]]` rule that refused the request, if one did.
    pub rate_limit: Option<Arc<str>>,
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// Escapes `"` and `\` (as Apache does in its combined format), so a field cannot close its quotes
/// and forge the fields after it.
fn quoted(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['"', '\\']) {
        std::borrow::Cow::Owned(s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The JSON shape of a line, serialized straight from borrowed fields.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: SocketAddr,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    host: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    server: &'a str,
    request_id: &'a str,
    referer: &'a str,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<&'a str>,
}

impl AccessRecord {
    /// Captures the request side of a record.
    pub fn new(
        format: AccessLog,
        client: SocketAddr,
        parts: &http::request::Parts,
        request_id: &HeaderValue,
    ) -> Self {
        Self {
            format,
            at: SystemTime::now(),
            client,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            host: parts.headers.get(header::HOST).cloned(),
            referer: parts.headers.get(header::REFERER).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            request_id: request_id.clone(),
            status: 0,
            server: None,
            upstream_time: None,
            rate_limit: None,
        }
    }

    /// Writes the line, now that the response is over.
    pub fn emit(&self, bytes: u64, total: Duration) {
        let upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0);
        let server = self.server.as_ref().map_or_else(|| "-".to_owned(), |(p, s)| format!("{p}/{s}"));
        let host = self.uri.authority().map_or_else(|| text(self.host.as_ref()), |a| a.as_str());
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let protocol = match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        let time = timestamp(self.at);
        let request_id = self.request_id.to_str().unwrap_or("-");
        match self.format {
            AccessLog::Off => {}
            AccessLog::Text => {
                let upstream = upstream_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.3}", ms / 1000.0));
                let limit = self.rate_limit.as_deref().map(|r| format!(" limit={r}")).unwrap_or_default();
                tracing::info!(
                    target: TARGET,
                    "{} - - [{time}] \"{} {} {protocol}\" {} {bytes} \"{}\" \"{}\" rt={:.3} urt={upstream} server={server} host={} rid={}{limit}",
                    self.client.ip(),
                    self.method,
                    quoted(path),
                    self.status,
                    quoted(text(self.referer.as_ref())),
                    quoted(text(self.user_agent.as_ref())),
                    total.as_secs_f64(),
                    quoted(host),
                    quoted(request_id),
                );
            }
            AccessLog::Json => {
                let line = JsonLine {
                    time: &time,
                    client: self.client,
                    method: self.method.as_str(),
                    path,
                    protocol,
                    host,
                    status: self.status,
                    bytes,
                    duration_ms: total.as_secs_f64() * 1000.0,
                    upstream_ms,
                    server: &server,
                    request_id,
                    referer: text(self.referer.as_ref()),
                    user_agent: text(self.user_agent.as_ref()),
                    rate_limit: self.rate_limit.as_deref(),
                };
                if let Ok(json) = serde_json::to_string(&line) {
                    tracing::info!(target: TARGET, "{json}");
                }
            }
        }
    }
}

/// `2026-11-24T15:30:00.123Z` (UTC, milliseconds): sortable and unambiguous.
fn timestamp(at: SystemTime) -> String {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quoted(r#"x" rt=0 server=web/b "#), r#"x\" rt=0 server=web/b "#);
        assert_eq!(quoted(r"a\b"), r"a\\b");
        assert!(matches!(quoted("plain"), std::borrow::Cow::Borrowed("plain")));
    }

    #[test]
    fn formats_utc_timestamps() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_967_400_123);
        assert_eq!(timestamp(at), "2026-11-29T15:50:00.123Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
