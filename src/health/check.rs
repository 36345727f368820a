//! Active checks: one task per server of a pool with `[health]`, probing on its own fresh
//! connection every `interval` (never a pooled request connection, never on the request path), and
//! flipping the server's state after `rise`/`fall` consecutive results.

use super::Thresholds;
use crate::config::{CheckKind, HealthCheck, HttpCheck};
use crate::upstream::{UpstreamKey, UpstreamStats};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Everything one server's check task needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server.
    pub key: UpstreamKey,
    /// Its `host:port`.
    pub addr: String,
    /// What to check and how often.
    pub check: HealthCheck,
    /// Where verdicts go.
    pub stats: Arc<UpstreamStats>,
    /// The pool's slow start, for a server that comes back.
    pub slow_start: Option<Duration>,
    /// TLS to the server, when its pool has `[tls]`: HTTP checks then run over TLS.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

/// Checks `target` forever (the task is aborted when its server or its check changes).
pub async fn run(target: Target) {
    let Target { key, addr, check, stats, slow_start, tls } = target;
    let mut verdict = Thresholds::new(check.rise, check.fall, !stats.health.is_down());
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (pass, fail) = crate::metrics::check_counters(&key.pool, &key.name);
    loop {
        ticker.tick().await;
        let result = probe(&check.kind, &addr, tls.as_deref(), check.timeout).await;
        stats.health.record_check(result.is_ok());
        match &result {
            Ok(()) => pass.increment(1),
            Err(_) => fail.increment(1),
        }
        let flipped = verdict.observe(result.is_ok());
        // Re-asserted on every check, not only on a flip: the state is this task's alone, and a task
        // replaced at a reload may have written once more after this one read it.
        stats.health.set_down(!verdict.is_up());
        let Some(up) = flipped else { continue };
        if up {
            tracing::info!(pool = %key.pool, server = %key.name, passes = check.rise, "server up: health checks pass");
            if stats.health.is_up() {
                super::came_back(&stats, slow_start);
            }
        } else {
            let reason = result.err().unwrap_or_default();
            tracing::warn!(pool = %key.pool, server = %key.name, failures = check.fall, %reason, "server down: health checks fail");
            super::went_away(&stats);
        }
        crate::metrics::health_change(&key.pool, &key.name, if up { "up" } else { "down" }, "check");
    }
}

/// One check: `Ok` if it passes, else why not.
pub async fn probe(
    kind: &CheckKind,
    addr: &str,
    tls: Option<&crate::tls::ClientTls>,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        match (kind, tls) {
            (CheckKind::Tcp, None) => Ok(()),
            // A TLS pool's TCP check includes the handshake (with the pool's own ALPN, so h2-only
            // servers pass): a wrong CA or name shows as down, not as healthy.
            (CheckKind::Tcp, Some(tls)) => {
                tls.connect(stream, false).await.map(drop).map_err(|e| format!("TLS: {e}"))
            }
            (CheckKind::Http(http), None) => http_probe(http, addr, stream).await,
            (CheckKind::Http(http), Some(tls)) => {
                let stream = tls.connect(stream, true).await.map_err(|e| format!("TLS: {e}"))?;
                http_probe(http, addr, stream).await
            }
            (CheckKind::Grpc { service }, None) => super::grpc::probe(service, addr, false, stream).await,
            // With the pool's own ALPN: a gRPC server speaks h2.
            (CheckKind::Grpc { service }, Some(tls)) => {
                let stream = tls.connect(stream, false).await.map_err(|e| format!("TLS: {e}"))?;
                super::grpc::probe(service, addr, true, stream).await
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

async fn http_probe<S>(check: &HttpCheck, addr: &str, stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection task ends with the connection: when this probe returns, or at the timeout.
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(check.method.clone())
        .uri(check.path.as_str())
        .header(http::header::HOST, check.host.as_deref().unwrap_or(addr))
        .header(http::header::USER_AGENT, "lb-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = send.send_request(req).await;
    conn.abort();
    let status = result.map_err(|e| format!("request: {e}"))?.status().as_u16();
    if check.accepts(status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn http(expect: Vec<(u16, u16)>) -> CheckKind {
        CheckKind::Http(HttpCheck { method: http::Method::GET, path: "/hc".into(), host: None, expect })
    }

    /// A server answering every connection with `status` and recording the request head.
    async fn answering(status: u16) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).await;
                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn http_check_passes_on_an_expected_status_only() {
        let (addr, mut heads) = answering(204).await;
        let t = Duration::from_secs(2);
        assert_eq!(probe(&http(vec![(200, 299)]), &addr, None, t).await, Ok(()));
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /hc HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("host: {addr}")), "{head}");
        assert_eq!(probe(&http(vec![(200, 200)]), &addr, None, t).await, Err("status 204".into()));
    }

    #[tokio::test]
    async fn refused_and_silent_servers_fail() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let t = Duration::from_millis(500);
        assert!(probe(&CheckKind::Tcp, &addr, None, t).await.unwrap_err().starts_with("connect"));
        // Accepts but never answers: the timeout fails it.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        assert_eq!(probe(&CheckKind::Tcp, &addr, None, t).await, Ok(()), "TCP only needs the connect");
        let err = probe(&http(vec![(200, 399)]), &addr, None, Duration::from_millis(100)).await.unwrap_err();
        assert!(err.contains("no answer"), "{err}");
    }
}
