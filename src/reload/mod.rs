//! Reloading `lb.toml` while serving: SIGHUP, `POST /reload` on the admin listener, and edits of the
//! file itself ([`watch`]) all end in [`Reloader::reload`].
//!
//! A reload reads and validates the whole file; any problem leaves the running config in place,
//! logged with each key path and counted in `lb_config_reloads_total{result="error"}`. Otherwise the
//! new listeners are bound (a taken port fails the reload before anything changed), the runtime
//! swaps in a fully built snapshot (requests in flight finish on theirs; server state carries over
//! by pool and name), and the server starts and stops listeners. One reload runs at a time.

pub mod diff;
pub mod watch;

use crate::config::{Config, ConfigError, Digest};
use crate::runtime::Runtime;
use crate::server::Server;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use diff::diff;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The config file changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin listener.
    Admin,
}

impl Trigger {
    /// Label value for logs, metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Signal => "signal",
            Self::Admin => "admin",
        }
    }
}

/// A reload that worked.
#[derive(Debug)]
pub struct Applied {
    /// The new generation (unchanged when the file was unchanged).
    pub generation: u64,
    /// The running config's digest.
    pub digest: Digest,
    /// What changed, one line each; empty when nothing did.
    pub changes: Vec<String>,
    /// The file was byte-for-byte the running one, so nothing was applied (file triggers only).
    pub unchanged: bool,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new listener could not be bound.
    #[error("{0}")]
    Listen(#[from] std::io::Error),
    /// lb is shutting down: nothing changes any more.
    #[error("lb is shutting down")]
    ShuttingDown,
}

/// The last reload attempt, for `/status`.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// When it finished.
    pub at: SystemTime,
    /// What asked for it.
    pub trigger: Trigger,
    /// `None` if it worked, else the reason it was refused.
    pub error: Option<String>,
}

/// Reloads one config file into a running runtime and server.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    runtime: Arc<Runtime>,
    server: Arc<Server>,
    /// One reload at a time: a second waits, then reads the file as it is by then.
    serial: tokio::sync::Mutex<()>,
    last: Mutex<Option<LastReload>>,
    /// Set when shutdown begins: every later reload is refused.
    closed: std::sync::atomic::AtomicBool,
}

impl Reloader {
    /// A reloader of `path` (the file the runtime's config came from).
    pub fn new(path: PathBuf, runtime: Arc<Runtime>, server: Arc<Server>) -> Arc<Self> {
        Arc::new(Self {
            path,
            runtime,
            server,
            serial: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            closed: false.into(),
        })
    }

    /// The file reloads read.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The server whose listeners reloads reconcile.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The running runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The last reload attempt, if any.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Refuses every later reload (shutdown began); waits for one in progress to finish.
    pub async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.serial.lock().await);
    }

    fn last_failed(&self) -> bool {
        self.last().is_some_and(|l| l.error.is_some())
    }

    /// Reads, validates and applies the file; on any error the running config stays. A file-change
    /// trigger whose file (and key material) is byte-for-byte the running one changes nothing; an
    /// explicit trigger (signal, admin) always applies, re-reading every file the config names.
    pub async fn reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReloadError::ShuttingDown);
        }
        crate::notify::reloading();
        let result = self.try_reload(trigger).await;
        crate::notify::reloaded(&match &result {
            Ok(applied) => format!("serving generation {}", applied.generation),
            Err(_) => "serving; the last reload was refused".to_owned(),
        });
        let outcome = match &result {
            // An unchanged file is no news, unless the last reload failed: then the file on disk is
            // valid again (it is what runs), and the failure gauge must say so.
            Ok(applied) if applied.unchanged && !self.last_failed() => None,
            Ok(applied) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = applied.generation,
                    config = %applied.digest,
                    changes = applied.changes.len(),
                    "configuration reloaded"
                );
                for change in &applied.changes {
                    tracing::info!(trigger = trigger.as_str(), "reload: {change}");
                }
                Some("ok")
            }
            Err(e) => {
                tracing::error!(
                    trigger = trigger.as_str(),
                    file = %self.path.display(),
                    "reload refused, the running configuration stays: {e}"
                );
                Some("error")
            }
        };
        if let Some(result_label) = outcome {
            metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => result_label).increment(1);
            let ok = result.is_ok();
            metrics::gauge!(crate::metrics::CONFIG_LAST_RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
            let error = result.as_ref().err().map(ToString::to_string);
            let at = SystemTime::now();
            if ok {
                let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                metrics::gauge!(crate::metrics::CONFIG_LAST_RELOAD_TIME).set(secs);
            }
            *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(LastReload { at, trigger, error });
        }
        result
    }

    async fn try_reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let path = self.path.clone();
        let running = self.runtime.snapshot();
        let old = Arc::clone(&running.config);
        // File reads (the config, secret files) are blocking I/O, and diffing rebuilds hash rings:
        // both off the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            // Byte-for-byte the running files: no parse (a large config's parse needs about 2 KB
            // per route for a moment, which the allocator then keeps).
            if trigger == Trigger::File && old.unchanged_on_disk(&path) {
                return Ok(None);
            }
            let config = Config::load(&path)?;
            let unchanged = trigger == Trigger::File && config.digest == old.digest;
            Ok::<_, ConfigError>((!unchanged).then(|| (diff(&old, &config), config)))
        })
        .await
        .map_err(|e| std::io::Error::other(format!("reading the config: {e}")))??;
        let Some((changes, config)) = loaded else {
            let (generation, digest) = (running.generation, running.config.digest);
            return Ok(Applied { generation, digest, changes: Vec::new(), unchanged: true });
        };
        let bound = self.server.prepare(&config).await?;
        let digest = config.digest;
        let snapshot = self.runtime.apply(config);
        self.server.commit(bound);
        Ok(Applied { generation: snapshot.generation, digest, changes, unchanged: false })
    }
}

/// Installs the SIGHUP handler now, so a SIGHUP never hits the default action (terminate); the
/// signals received until [`on_sighup`] runs are kept for it. `None` (logged) if it cannot be
/// installed.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload or by editing the file");
        })
        .ok()
}

/// Reloads on every SIGHUP received through `hup`, from the returned task.
pub fn on_sighup(
    reloader: Arc<Reloader>,
    mut hup: tokio::signal::unix::Signal,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            let _ = reloader.reload(Trigger::Signal).await;
        }
    })
}
