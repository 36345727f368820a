//! Reloads when the config file, or a certificate, key or CA file it names, changes on disk.
//!
//! The file's *directory* is watched, not the file: editors replace the file by renaming a new one
//! over it (a watch on the old inode would go quiet), and Kubernetes swaps a `..data` symlink beside
//! it. When a path is a symlink (certbot's `live/` files), its target's directory is watched too.
//! The watched set follows the running config. Events that name the file
//! (or `..data*`) and change something start a debounce; reads do not (lb's own reads would
//! otherwise trigger it forever). Once events stop for `reload.debounce` (or two seconds after the
//! first, whichever is sooner), the file is read and reloaded only if its digest differs from the
//! running config's. On Linux the watch asks inotify only for changes ([`CHANGES`]), so files
//! written beside the config cost lb nothing until they are closed. Where the OS watcher cannot
//! start (e.g. inotify limits), the directories are polled every second.

use super::{Reloader, Trigger};
use notify::{PollWatcher, RecursiveMode, Watcher};
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

/// Keeps the files watched while alive.
#[derive(Debug)]
pub struct FileWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What to watch: directories, and the file names in them that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Targets {
    dirs: Vec<PathBuf>,
    names: Vec<OsString>,
}

/// The config file (and its symlink target) and every TLS file the running config reads.
fn targets(config: &Path, running: &crate::config::Config) -> Targets {
    let mut t = Targets { dirs: Vec::new(), names: Vec::new() };
    let files = std::iter::once(config.to_owned()).chain(running.read_files().map(|(p, _)| PathBuf::from(p)));
    for file in files {
        let resolved = std::fs::canonicalize(&file).ok();
        for path in std::iter::once(file).chain(resolved) {
            let dir = directory_of(&path);
            if !t.dirs.contains(&dir) {
                t.dirs.push(dir);
            }
            if let Some(name) = path.file_name().map(OsString::from).filter(|n| !t.names.contains(n)) {
                t.names.push(name);
            }
        }
    }
    t
}

/// A live watcher: dropping it stops the OS watch.
type Armed = Box<dyn Any + Send>;

/// Watches `t`, sending on `tx` for each relevant event. The first directory (the config file's
/// own) must be watchable; the others are best effort.
fn arm(t: &Targets, tx: &mpsc::Sender<()>) -> Option<Armed> {
    let names = t.names.clone();
    let sender = tx.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if relevant(&event, &names) => {
            let _ = sender.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config file watcher"),
    };
    let first = t.dirs.first().map_or_else(|| PathBuf::from("."), Clone::clone);
    #[cfg(target_os = "linux")]
    let watched = inotify_watcher(t, tx.clone());
    #[cfg(not(target_os = "linux"))]
    let watched = os_watcher(&t.dirs, handler.clone()).map_err(std::io::Error::other);
    match watched {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %first.display(), error = %e, "cannot watch the config directory; polling it");
            poll_watcher(&t.dirs, handler)
                .map_err(
                    |e| tracing::error!(dir = %first.display(), error = %e, "cannot watch the config file"),
                )
                .ok()
        }
    }
}

/// Starts watching the reloader's file and the TLS files of the running config (re-armed when a
/// reload changes them). `None` (logged) if nothing can be watched; SIGHUP and `POST /reload`
/// still work then.
pub fn start(reloader: Arc<Reloader>) -> Option<FileWatch> {
    // One pending wake-up is enough: every event means "look at the files again".
    let (tx, rx) = mpsc::channel::<()>(1);
    let wanted = targets(reloader.path(), &reloader.runtime().snapshot().config);
    let armed = arm(&wanted, &tx)?;
    let task = tokio::spawn(debounce_and_reload(rx, tx, reloader, (wanted, armed)));
    Some(FileWatch { task })
}

/// What a directory watch reports: whatever can change a file's content or which file a name
/// points at (a write closed, a rename, a link or file created or removed). Not opens, reads, or
/// each write to a file kept open: a log written beside the config (lb's own stdout, say) would wake
/// the watcher on every line. The benchmark that found it (an HTTP/2 load generator logging each
/// request in lb's config directory) measured 0.4 wake-ups and 20% more CPU per request.
#[cfg(target_os = "linux")]
const CHANGES: inotify::WatchMask = inotify::WatchMask::CLOSE_WRITE
    .union(inotify::WatchMask::MOVED_TO)
    .union(inotify::WatchMask::MOVED_FROM)
    .union(inotify::WatchMask::CREATE)
    .union(inotify::WatchMask::DELETE);

/// An inotify watch of `t`'s directories for [`CHANGES`], read by a task that sends on `tx` when a
/// change names one of `t`'s files (or the event queue overflowed, when any might have changed).
/// notify's own watcher cannot narrow what it asks inotify for.
#[cfg(target_os = "linux")]
fn inotify_watcher(t: &Targets, tx: mpsc::Sender<()>) -> std::io::Result<Armed> {
    use futures_util::StreamExt;
    let inotify = inotify::Inotify::init()?;
    for (i, dir) in t.dirs.iter().enumerate() {
        match inotify.watches().add(dir, CHANGES) {
            Ok(_) => {}
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's target")
            }
        }
    }
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
    let names = t.names.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(e)
                    if e.mask.contains(inotify::EventMask::Q_OVERFLOW)
                        || e.name.as_deref().is_some_and(|n| relevant_name(n, &names)) =>
                {
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "config file watcher stopped; SIGHUP and POST /reload still work");
                    return;
                }
            }
        }
    });
    Ok(Box::new(AbortOnDrop(task)))
}

/// Stops the inotify watch's task (and with it the watch) when the watch is replaced or dropped.
#[cfg(target_os = "linux")]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

#[cfg(target_os = "linux")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(not(target_os = "linux"))]
fn os_watcher(dirs: &[PathBuf], handler: impl notify::EventHandler) -> notify::Result<Box<dyn Any + Send>> {
    let mut w = notify::RecommendedWatcher::new(handler, notify::Config::default())?;
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
    event.paths.iter().filter_map(|p| p.file_name()).any(|n| relevant_name(n, names))
}

/// Whether a file of this name in a watched directory matters: one of `names`, or Kubernetes'
/// `..data` link (and its temporary twin).
fn relevant_name(name: &std::ffi::OsStr, names: &[OsString]) -> bool {
    names.iter().any(|m| m == name) || name.to_string_lossy().starts_with("..data")
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

async fn debounce_and_reload(
    mut events: mpsc::Receiver<()>,
    tx: mpsc::Sender<()>,
    reloader: Arc<Reloader>,
    mut watching: (Targets, Armed),
) {
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
        if !settings.watch {
            continue;
        }
        // Errors are logged and counted by `reload`; the watcher keeps going.
        let _ = reloader.reload(Trigger::File).await;
        // The running config may name other TLS files now (or a renamed file resolves elsewhere).
        let wanted = targets(reloader.path(), &reloader.runtime().snapshot().config);
        if wanted != watching.0 {
            if let Some(armed) = arm(&wanted, &tx) {
                watching = (wanted, armed);
            }
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
