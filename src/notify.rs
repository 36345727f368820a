//! systemd readiness (`Type=notify`): `READY=1` once every listener is bound and the admin listener
//! answers, `RELOADING=1` / `READY=1` around each reload, `STOPPING=1` when the drain begins.
//!
//! The protocol is one datagram per message to the Unix socket named by `NOTIFY_SOCKET` (a path, or
//! an abstract name written with a leading `@`), so it is written here with std, not a crate. Without
//! `NOTIFY_SOCKET` every call does nothing. Failures are logged once per message and never stop lb:
//! readiness notification is a courtesy to the service manager, not a reason to fail.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Where the service manager listens, read once from `NOTIFY_SOCKET`.
fn socket() -> Option<&'static str> {
    static SOCKET: OnceLock<Option<String>> = OnceLock::new();
    SOCKET.get_or_init(|| std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty())).as_deref()
}

/// Set once `READY=1` went out: reload notices before that (the start's own re-read of the file)
/// would tell systemd about a reload of a service it still sees as starting.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Sends `message` (newline-separated `KEY=value` assignments) to `NOTIFY_SOCKET`, if set.
pub fn send(message: &str) {
    let Some(target) = socket() else { return };
    if let Err(e) = send_to(target, message) {
        tracing::warn!(socket = target, error = %e, "cannot notify the service manager");
    }
}

fn send_to(target: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(message.as_bytes(), target)?;
        }
    }
    Ok(())
}

/// lb serves: every listener is bound and the admin listener answers.
pub fn ready(status: &str) {
    READY_SENT.store(true, Ordering::SeqCst);
    send(&format!("READY=1\nSTATUS={status}"));
}

/// A reload starts. `MONOTONIC_USEC` lets systemd (253 and later) match it to the reload it asked
/// for.
pub fn reloading() {
    if !READY_SENT.load(Ordering::SeqCst) {
        return;
    }
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// A reload ended (applied or refused): lb serves again.
pub fn reloaded(status: &str) {
    if READY_SENT.load(Ordering::SeqCst) {
        send(&format!("READY=1\nSTATUS={status}"));
    }
}

/// Shutdown began: lb stops accepting and drains.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}
