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
    // Likewise SIGUSR2 (an upgrade), whose default action would terminate the process too.
    let usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2());
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
    // Started by an upgrade: the old process's sockets, taken before anything binds.
    let mut handoff = crate::upgrade::Handoff::receive()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot take over from the running lb: {e}")))?;
    // Every socket is bound before any serves, so a taken admin port fails the start cleanly.
    let admin_listener = match config.admin {
        Some(addr) => Some(
            match handoff.as_mut().and_then(|h| h.take_admin(addr)) {
                Some(socket) => {
                    socket.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(socket))
                }
                None => tokio::net::TcpListener::bind(addr).await,
            }
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (admin.addr): {e}")))?,
        ),
        None => None,
    };
    let config_admin = config.admin;
    let runtime = Arc::new(Runtime::new(config));
    let inherited = match handoff.as_mut() {
        Some(h) => {
            runtime.hold_down(&h.down);
            h.take_listeners()
        }
        None => Default::default(),
    };
    let server = Server::start_inheriting(Arc::clone(&runtime), inherited).await?;
    let reloader = Reloader::new(path, runtime, Arc::clone(&server));
    let on_hup = hup.map(|hup| reload::on_sighup(Arc::clone(&reloader), hup));
    let watch = reload::watch::start(Arc::clone(&reloader));
    // The file may have changed between its first read and the watcher starting: look once more
    // (free when it did not).
    let _ = reloader.reload(reload::Trigger::File).await;
    let ready = Arc::new(AtomicBool::new(true));
    let admin_handoff = match (&admin_listener, config_admin) {
        (Some(l), Some(addr)) => server::handoff_of(l).map(|socket| (addr, socket)),
        _ => None,
    };
    let admin_open = Arc::new(());
    let admin_task = admin_listener.map(|listener| {
        let admin = crate::admin::Admin {
            runtime: Arc::clone(reloader.runtime()),
            metrics,
            ready: Arc::clone(&ready),
            reloader: Some(Arc::clone(&reloader)),
            open: Arc::clone(&admin_open),
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
    if let Some(h) = handoff {
        // Once the old process confirms, it stops accepting and the service manager follows this one.
        tokio::task::spawn_blocking(move || h.ready())
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::new(e.kind(), format!("taking over from the running lb: {e}")))?;
        crate::notify::send(&format!("MAINPID={}", std::process::id()));
    }
    let admin_socket = admin_task.as_ref().and(admin_handoff);
    let upgraded = tokio::select! {
        () = server::shutdown_signal() => false,
        () = upgrades(usr2, &server, reloader.runtime(), admin_socket) => true,
    };
    if upgraded {
        tracing::info!("replaced by a new lb process: no new connections here, draining");
        server::drain_for_replacement();
        // The new process answers the admin address from now on.
        if let Some((_, task)) = &admin_task {
            task.abort();
        }
    } else {
        crate::notify::stopping();
    }
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
    if upgraded {
        // Admin requests this process accepted before the new one took over are answered.
        let deadline = tokio::time::Instant::now() + ADMIN_DRAIN;
        while Arc::strong_count(&admin_open) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Waits for SIGUSR2 and hands this process's sockets to a new one; returns once one took over. A
/// new process that fails leaves this one serving, and the next SIGUSR2 tries again.
async fn upgrades(
    usr2: io::Result<tokio::signal::unix::Signal>,
    server: &Arc<Server>,
    runtime: &Arc<Runtime>,
    admin: Option<(std::net::SocketAddr, std::net::TcpListener)>,
) {
    let mut usr2 = match usr2 {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR2: upgrades are off");
            return std::future::pending().await;
        }
    };
    /// Set when the wait for an upgrade is dropped (a shutdown began): a handover still running
    /// on its thread then stops and kills the new process.
    struct Abandon(Arc<AtomicBool>);
    impl Drop for Abandon {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let abandon = Abandon(Arc::new(AtomicBool::new(false)));
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: starting a new lb process to take over");
        let listeners = server.handoff_sockets();
        let admin = admin.as_ref().and_then(|(a, l)| Some((*a, l.try_clone().ok()?)));
        let down = runtime.held_down();
        let flag = Arc::clone(&abandon.0);
        match tokio::task::spawn_blocking(move || crate::upgrade::hand_over(listeners, admin, down, &flag))
            .await
        {
            Ok(Ok(pid)) => {
                tracing::info!(pid, "the new lb process serves");
                return;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "upgrade failed: this process keeps serving"),
            Err(e) => tracing::error!(error = %e, "upgrade failed: this process keeps serving"),
        }
    }
    std::future::pending().await
}

/// How long a replaced process waits for its last admin connections (a scraper's keep-alive
/// connection may idle this long; its next request then goes to the new process).
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

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
