//! Access log: one line per request, through `tracing` on the target [`TARGET`], in the text
//! format (close to the combined log format) or as JSON. Off by default. The line is written when the
//! response is over (body sent, failed, or the client left), so it carries the real byte count and
//! total time. `main.rs` routes this target to stdout through a non-blocking, bounded writer.

use crate::config::AccessLog;
use http::{header, HeaderMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// The `tracing` target of access-log events.
pub const TARGET: &str = "lb::access";

/// Everything an access-log line says about one request except its final byte count and time.
#[derive(Debug)]
pub struct AccessRecord {
    /// Text or JSON.
    pub format: AccessLog,
    /// When the request arrived.
    pub at: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub version: String,
    /// Host the request was for.
    pub host: String,
    /// `Referer`, or `-`.
    pub referer: String,
    /// `User-Agent`, or `-`.
    pub user_agent: String,
    /// The request id.
    pub request_id: String,
    /// Response status.
    pub status: u16,
    /// `pool/server` that answered, or `-`.
    pub server: String,
    /// Upstream time to response head.
    pub upstream_time: Option<Duration>,
}

fn header_or_dash(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

impl AccessRecord {
    /// Captures the request side of a record.
    pub fn new(
        format: AccessLog,
        client: SocketAddr,
        parts: &http::request::Parts,
        request_id: &str,
    ) -> Self {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| header_or_dash(&parts.headers, header::HOST));
        Self {
            format,
            at: SystemTime::now(),
            client,
            method: parts.method.to_string(),
            target: parts.uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            version: format!("{:?}", parts.version),
            host,
            referer: header_or_dash(&parts.headers, header::REFERER),
            user_agent: header_or_dash(&parts.headers, header::USER_AGENT),
            request_id: request_id.to_owned(),
            status: 0,
            server: "-".to_owned(),
            upstream_time: None,
        }
    }

    /// Writes the line, now that the response is over.
    pub fn emit(&self, bytes: u64, total: Duration) {
        let upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0);
        match self.format {
            AccessLog::Off => {}
            AccessLog::Text => {
                let upstream = upstream_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.3}", ms / 1000.0));
                tracing::info!(
                    target: TARGET,
                    "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" rt={:.3} urt={} server={} host={} rid={}",
                    self.client.ip(),
                    httpdate(self.at),
                    self.method,
                    self.target,
                    self.version,
                    self.status,
                    bytes,
                    self.referer,
                    self.user_agent,
                    total.as_secs_f64(),
                    upstream,
                    self.server,
                    self.host,
                    self.request_id,
                );
            }
            AccessLog::Json => {
                let line = serde_json::json!({
                    "time": httpdate(self.at),
                    "client": self.client.to_string(),
                    "method": self.method,
                    "path": self.target,
                    "protocol": self.version,
                    "host": self.host,
                    "status": self.status,
                    "bytes": bytes,
                    "duration_ms": total.as_secs_f64() * 1000.0,
                    "upstream_ms": upstream_ms,
                    "server": self.server,
                    "request_id": self.request_id,
                    "referer": self.referer,
                    "user_agent": self.user_agent,
                });
                tracing::info!(target: TARGET, "{line}");
            }
        }
    }
}

/// `2026-11-24T15:30:00.123Z` (UTC, milliseconds): sortable and unambiguous.
fn httpdate(at: SystemTime) -> String {
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
    fn formats_utc_timestamps() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_967_400_123);
        assert_eq!(httpdate(at), "2026-11-29T15:50:00.123Z");
        assert_eq!(httpdate(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
