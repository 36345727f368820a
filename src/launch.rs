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
    let admin_addr = config.admin;
    let runtime = Arc::new(Runtime::new(config));
    let server = Server::start(Arc::clone(&runtime)).await?;
    let reloader = Reloader::new(path, runtime, Arc::clone(&server));
    // Every trigger is in place before readiness is announced: an edit made right after it counts.
    let on_hup = reload::on_sighup(Arc::clone(&reloader));
    let watch = reload::watch::start(Arc::clone(&reloader));
    for (_, local) in server.listeners() {
        announce(&format!("lb listening on http://{local}"));
    }
    let ready = Arc::new(AtomicBool::new(true));
    let admin_task = match admin_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {addr} (admin.addr): {e}"))
            })?;
            announce(&format!("lb admin on http://{}", listener.local_addr()?));
            let admin = crate::admin::Admin {
                runtime: Arc::clone(reloader.runtime()),
                metrics,
                ready: Arc::clone(&ready),
                reloader: Some(Arc::clone(&reloader)),
            };
            Some(tokio::spawn(crate::admin::serve(listener, admin)))
        }
        None => None,
    };
    server::shutdown_signal().await;
    ready.store(false, Ordering::Relaxed);
    // No reload may start listeners while draining.
    if let Some(task) = on_hup {
        task.abort();
    }
    drop(watch);
    server.shutdown().await;
    if let Some(task) = admin_task {
        task.abort();
    }
    Ok(())
}
