//! A whole running lb: metrics, runtime, listeners, admin listener and the reload triggers, from one
//! loaded config until SIGTERM/SIGINT and the drain. The `lb` binary and the demo both run this.

use crate::config::Config;
use crate::reload::{self, Reloader};
use crate::runtime::Runtime;
use crate::server::{self, Server};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Serves `config` (loaded from `path`, which reloads read again) until a shutdown signal, then
/// drains. `announce` receives the startup lines scripts wait for (`lb listening on http://ADDR`,
/// one per listener, then `lb admin on http://ADDR`).
pub async fn run(path: PathBuf, config: Config, announce: &(dyn Fn(&str) + Sync)) -> io::Result<()> {
    // First of all: a SIGHUP from now on is queued for the reloader, never the default action
    // (which would terminate the process).
    let hup = reload::hangups();
    // Metrics are recorded only when the admin listener can serve them, and the recorder must exist
    // before the runtime registers its handles.
    let metrics = match config.admin {
        Some(_) => Some(crate::metrics::install().map_err(|e| io::Error::other(format!("metrics: {e}")))?),
        None => None,
    };
    metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "ok").increment(1);
    metrics::gauge!(crate::metrics::CONFIG_LAST_RELOAD_OK).set(1.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!(crate::metrics::CONFIG_LAST_RELOAD_TIME).set(now.as_secs_f64());
    // Every socket is bound before any serves, so a taken admin port fails the start cleanly.
    let admin_listener =
        match config.admin {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} (admin.addr): {e}"))
            })?),
            None => None,
        };
    let runtime = Arc::new(Runtime::new(config));
    let server = Server::start(Arc::clone(&runtime)).await?;
    let reloader = Reloader::new(path, runtime, Arc::clone(&server));
    let on_hup = hup.map(|hup| reload::on_sighup(Arc::clone(&reloader), hup));
    let watch = reload::watch::start(Arc::clone(&reloader));
    // The file may have changed between its first read and the watcher starting: look once more
    // (free when it did not).
    let _ = reloader.reload(reload::Trigger::File).await;
    let ready = Arc::new(AtomicBool::new(true));
    let admin_task = admin_listener.map(|listener| {
        let admin = crate::admin::Admin {
            runtime: Arc::clone(reloader.runtime()),
            metrics,
            ready: Arc::clone(&ready),
            reloader: Some(Arc::clone(&reloader)),
        };
        (listener.local_addr(), tokio::spawn(crate::admin::serve(listener, admin)))
    });
    // Readiness: every trigger is armed, so an edit or a SIGHUP right after this line counts.
    for (_, local) in server.listeners() {
        announce(&format!("lb listening on http://{local}"));
    }
    if let Some((addr, _)) = &admin_task {
        let addr = addr.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        announce(&format!("lb admin on http://{addr}"));
        if let Err(e) = admin_answers(*addr).await {
            tracing::warn!(admin = %addr, error = %e, "the admin listener does not answer yet");
        }
    }
    crate::notify::ready(&format!("serving generation {}", reloader.runtime().snapshot().generation));
    server::shutdown_signal().await;
    crate::notify::stopping();
    ready.store(false, Ordering::Relaxed);
    // No reload may start listeners or swap configs while draining.
    reloader.close().await;
    if let Some(task) = on_hup {
        task.abort();
    }
    drop(watch);
    server.shutdown().await;
    if let Some((_, task)) = admin_task {
        task.abort();
    }
    Ok(())
}

/// How long readiness waits for the admin listener's first answer.
const ADMIN_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One `GET /healthz` on the admin listener: readiness means it answers, not only that it is bound.
async fn admin_answers(addr: std::net::SocketAddr) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        if head.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(io::Error::other(format!("answered {:?}", String::from_utf8_lossy(&head))))
        }
    };
    tokio::time::timeout(ADMIN_PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| io::Error::other("no answer within 5s"))?
}
