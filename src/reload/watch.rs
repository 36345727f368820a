//! Reloads when the config file changes on disk.
//!
//! The file's *directory* is watched, not the file: editors replace the file by renaming a new one
//! over it (a watch on the old inode would go quiet), and Kubernetes swaps a `..data` symlink beside
//! it. Any event in the directory starts a debounce; once events stop for `reload.debounce` (or two
//! seconds after the first, whichever is sooner), the file is read and reloaded only if its digest
//! differs from the running config's, so temporary and swap files cost a read, never a reload.
//! Where the OS watcher cannot start (e.g. inotify limits), the directory is polled every second.

use super::{Reloader, Trigger};
use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest a burst of events can delay a reload.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Poll interval of the fallback watcher.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Keeps the directory watched while alive.
#[derive(Debug)]
pub struct FileWatch {
    _watcher: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the reloader's file. `None` (logged) if neither the OS watcher nor polling can
/// start; SIGHUP and `POST /reload` still work then.
pub fn start(reloader: Arc<Reloader>) -> Option<FileWatch> {
    let dir = directory_of(reloader.path());
    // One pending wake-up is enough: every event means "look at the file again".
    let (tx, rx) = mpsc::channel::<()>(1);
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    };
    let watcher = match os_watcher(&dir, handler.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling it");
            match poll_watcher(&dir, handler) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config file");
                    return None;
                }
            }
        }
    };
    let task = tokio::spawn(debounce_and_reload(rx, reloader));
    Some(FileWatch { _watcher: watcher, task })
}

fn os_watcher(
    dir: &Path,
    handler: impl notify::EventHandler,
) -> notify::Result<Box<dyn std::any::Any + Send>> {
    let mut w = RecommendedWatcher::new(handler, notify::Config::default())?;
    w.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Box::new(w))
}

fn poll_watcher(
    dir: &Path,
    handler: impl notify::EventHandler,
) -> notify::Result<Box<dyn std::any::Any + Send>> {
    let config = notify::Config::default().with_poll_interval(POLL_EVERY).with_compare_contents(true);
    let mut w = PollWatcher::new(handler, config)?;
    w.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Box::new(w))
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

async fn debounce_and_reload(mut events: mpsc::Receiver<()>, reloader: Arc<Reloader>) {
    while events.recv().await.is_some() {
        let settings = reloader.runtime().snapshot().config.reload;
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet = tokio::time::sleep(settings.debounce.min(MAX_DELAY));
            tokio::select! {
                more = events.recv() => {
                    if more.is_none() {
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                () = quiet => break,
            }
        }
        if settings.watch {
            // Errors are logged and counted by `reload`; the watcher keeps going.
            let _ = reloader.reload(Trigger::File).await;
        }
    }
}
