//! Reloads when the config file changes on disk.
//!
//! The file's *directory* is watched, not the file: editors replace the file by renaming a new one
//! over it (a watch on the old inode would go quiet), and Kubernetes swaps a `..data` symlink beside
//! it. When the path is a symlink, its target's directory is watched too. Events that name the file
//! (or `..data*`) and change something start a debounce; reads do not (lb's own reads would
//! otherwise trigger it forever). Once events stop for `reload.debounce` (or two seconds after the
//! first, whichever is sooner), the file is read and reloaded only if its digest differs from the
//! running config's. Where the OS watcher cannot start (e.g. inotify limits), the directories are
//! polled every second.

use super::{Reloader, Trigger};
use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use std::any::Any;
use std::ffi::OsString;
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
    _watcher: Box<dyn Any + Send>,
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
    let path = reloader.path().to_owned();
    let mut dirs = vec![directory_of(&path)];
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    if let Ok(target) = std::fs::canonicalize(&path) {
        let target_dir = directory_of(&target);
        if std::fs::canonicalize(&dirs[0]).is_ok_and(|d| d != target_dir) {
            dirs.push(target_dir);
        }
        names.extend(target.file_name().map(OsString::from));
    }
    // One pending wake-up is enough: every event means "look at the file again".
    let (tx, rx) = mpsc::channel::<()>(1);
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if relevant(&event, &names) => {
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config file watcher"),
    };
    let watcher = match os_watcher(&dirs, handler.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %dirs[0].display(), error = %e, "cannot watch the config directory; polling it");
            match poll_watcher(&dirs, handler) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(dir = %dirs[0].display(), error = %e, "cannot watch the config file");
                    return None;
                }
            }
        }
    };
    let task = tokio::spawn(debounce_and_reload(rx, reloader));
    Some(FileWatch { _watcher: watcher, task })
}

fn os_watcher(dirs: &[PathBuf], handler: impl notify::EventHandler) -> notify::Result<Box<dyn Any + Send>> {
    let mut w = RecommendedWatcher::new(handler, notify::Config::default())?;
    watch_all(&mut w, dirs)?;
    Ok(Box::new(w))
}

fn poll_watcher(dirs: &[PathBuf], handler: impl notify::EventHandler) -> notify::Result<Box<dyn Any + Send>> {
    let mut w = PollWatcher::new(handler, notify::Config::default().with_poll_interval(POLL_EVERY))?;
    watch_all(&mut w, dirs)?;
    Ok(Box::new(w))
}

/// The first directory (the path's own) must be watched; a symlink target's is best effort.
fn watch_all(w: &mut impl Watcher, dirs: &[PathBuf]) -> notify::Result<()> {
    for (i, dir) in dirs.iter().enumerate() {
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {}
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's target")
            }
        }
    }
    Ok(())
}

/// Whether `event` may have changed the config file: it names the file (or Kubernetes' `..data`
/// link) and is not a mere read (lb's own reads of the file must not trigger a reload).
fn relevant(event: &notify::Event, names: &[OsString]) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    event
        .paths
        .iter()
        .filter_map(|p| p.file_name())
        .any(|n| names.iter().any(|m| m == n) || n.to_string_lossy().starts_with("..data"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        e.paths = paths.iter().map(PathBuf::from).collect();
        e
    }

    #[test]
    fn only_changes_to_the_file_or_the_kubernetes_link_count() {
        let names = [OsString::from("lb.toml")];
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(relevant(&event(rename, &["/etc/lb/.lb.toml.swp", "/etc/lb/lb.toml"]), &names));
        assert!(relevant(&event(rename, &["/etc/lb/..data_tmp", "/etc/lb/..data"]), &names));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(relevant(&event(written, &["/etc/lb/lb.toml"]), &names));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!relevant(&event(read, &["/etc/lb/lb.toml"]), &names), "lb's own reads");
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!relevant(&event(opened, &["/etc/lb/lb.toml"]), &names));
        let other = EventKind::Create(CreateKind::File);
        assert!(!relevant(&event(other, &["/etc/lb/hosts"]), &names), "other files in the directory");
    }
}
