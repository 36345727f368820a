//! One server's open connections, kept with its live state (so they survive reloads that keep the
//! server): a stack of idle HTTP/1.1 connections and, for HTTP/2 servers, one shared multiplexed
//! connection.
//!
//! The strategy has already chosen the server, so checkout is a pop from this server's stack: no
//! pool key to hash, and a mutex held for a few instructions. Nobody drives an idle connection; its
//! socket stays registered with tokio, so a peer that closed it (or wrote garbage on it) is found by
//! polling it once, without waiting: at checkout, and by the runtime's sweep, which also closes what
//! was idle longer than `timeouts.upstream_idle`, and parks what has idled for [`PARK_AFTER`]: hyper's
//! state (an 8 KiB read buffer among it) is dropped and only the socket kept until a request takes it.

use super::lease::{Parked, H1};
use crate::proxy::body::RequestBody;
use crate::tls::ClientTls;
use hyper::client::conn::http2;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Open connections to one server.
#[derive(Debug, Default)]
pub struct ServerConns {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<Shared>>,
    /// Whether `h2` was ever set: servers that never spoke HTTP/2 skip its lock.
    spoke_h2: AtomicBool,
    /// Requests waiting for a connection at the server's connection limit, and their signal.
    waiting: AtomicUsize,
    returned: Notify,
}

/// An idle connection the sweep finds idle this long is parked. Longer than the gaps of a server
/// under steady load (where a connection is taken again within milliseconds), short enough that a
/// pool grown by a burst gives its memory back soon after.
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// An HTTP/1.1 connection waiting for its next request.
#[derive(Debug)]
struct Idle {
    conn: Waiting,
    since: Instant,
}

#[derive(Debug)]
enum Waiting {
    // Boxed: moved at every checkout and checkin, and hyper's connection state is hundreds of bytes.
    Live(Box<H1>),
    Parked(Parked),
}

impl Waiting {
    fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        match self {
            Waiting::Live(conn) => conn.tls(),
            Waiting::Parked(parked) => parked.tls(),
        }
    }
}

/// The server's multiplexed HTTP/2 connection (driven by a task of its own: many requests share it).
#[derive(Debug)]
struct Shared {
    send: http2::SendRequest<RequestBody>,
    tls: Option<Arc<rustls::ClientConfig>>,
    last_used: Instant,
}

/// A request waiting at its server's connection limit (see [`ServerConns::wait`]).
#[derive(Debug)]
pub struct Wait<'a>(&'a ServerConns);

impl Wait<'_> {
    /// Resolves when a connection was checked in since the last call (or may have been).
    pub async fn returned(&self) {
        self.0.returned.notified().await;
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Same TLS settings (the identity of the rustls config, rebuilt when the pool's TLS changes).
fn same_tls(a: Option<&Arc<rustls::ClientConfig>>, b: Option<&Arc<ClientTls>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, &b.config),
        _ => false,
    }
}

/// The TLS identity a new connection to a server with `tls` is opened under.
pub fn tls_identity(tls: Option<&Arc<ClientTls>>) -> Option<Arc<rustls::ClientConfig>> {
    tls.map(|t| Arc::clone(&t.config))
}

impl ServerConns {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn h2(&self) -> MutexGuard<'_, Option<Shared>> {
        self.h2.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still usable: open at both ends, ready for a
    /// request, idle for less than `max_idle`, opened under the server's current TLS settings.
    /// Unusable ones met on the way are closed.
    pub fn checkout(&self, tls: Option<&Arc<ClientTls>>, max_idle: std::time::Duration) -> Option<Box<H1>> {
        loop {
            // Popped under the lock, checked outside it: a check reads the socket.
            let Idle { conn, since } = self.idle().pop()?;
            if since.elapsed() >= max_idle || !same_tls(conn.tls(), tls) {
                continue;
            }
            let conn = match conn {
                Waiting::Live(conn) => Some(conn),
                Waiting::Parked(parked) => parked.resume(),
            };
            if let Some(mut conn) = conn {
                if conn.usable() {
                    return Some(conn);
                }
            }
        }
    }

    /// Keeps `conn` for a later request, unless `cap` connections are idle already (then it is
    /// closed: the least recently used would be the one to expire next anyway).
    pub fn checkin(&self, conn: Box<H1>, cap: usize) {
        let mut idle = self.idle();
        if idle.len() < cap {
            idle.push(Idle { conn: Waiting::Live(conn), since: Instant::now() });
        }
        drop(idle);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
    }

    /// Waits for a connection at its limit: counted in `waiting` while alive, and woken (see
    /// [`Wait::returned`]) when a connection is checked in.
    pub fn wait(&self) -> Wait<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Wait(self)
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// Idle connections now that run in a task of their own (see `upstream::lease`).
    pub fn apart_count(&self) -> usize {
        self.idle().iter().filter(|i| matches!(&i.conn, Waiting::Live(c) if c.apart())).count()
    }

    /// Idle connections now that are parked (hyper's state dropped, the socket kept).
    pub fn parked_count(&self) -> usize {
        self.idle().iter().filter(|i| matches!(i.conn, Waiting::Parked(_))).count()
    }

    /// The shared HTTP/2 connection, if it is open and was opened under `tls`.
    pub fn shared_h2(&self, tls: Option<&Arc<ClientTls>>) -> Option<http2::SendRequest<RequestBody>> {
        if !self.spoke_h2.load(Ordering::Relaxed) {
            return None;
        }
        let mut h2 = self.h2();
        let shared = h2.as_mut()?;
        if shared.send.is_closed() || !same_tls(shared.tls.as_ref(), tls) {
            *h2 = None;
            return None;
        }
        shared.last_used = Instant::now();
        Some(shared.send.clone())
    }

    /// Makes `send` the server's shared HTTP/2 connection (another request may have opened one
    /// meanwhile: the newer wins, the older closes once its streams end).
    pub fn share_h2(&self, send: http2::SendRequest<RequestBody>, tls: Option<Arc<rustls::ClientConfig>>) {
        *self.h2() = Some(Shared { send, tls, last_used: Instant::now() });
        self.spoke_h2.store(true, Ordering::Relaxed);
    }

    /// Closes what was idle for `max_idle` or more, and idle connections whose peer closed them or
    /// wrote on them; parks what was idle for [`PARK_AFTER`]. Connections that run in a task of
    /// their own are never parked, and are closed unless `keep_apart` (their pool is still busy):
    /// the next request opens one its own task drives, which costs less. Returns how many are left
    /// idle.
    pub fn sweep(&self, max_idle: std::time::Duration, keep_apart: bool) -> usize {
        let mut idle = self.idle();
        // Dropped outside the lock: closing a TLS connection writes its close_notify.
        let mut closing: Vec<Idle> = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            let idled = idle[i].since.elapsed();
            let keep = idled < max_idle
                && match &mut idle[i].conn {
                    Waiting::Live(conn) => (keep_apart || !conn.apart()) && conn.usable(),
                    Waiting::Parked(parked) => parked.alive(),
                };
            if !keep {
                closing.push(idle.swap_remove(i));
                continue;
            }
            if idled >= PARK_AFTER && matches!(&idle[i].conn, Waiting::Live(conn) if !conn.apart()) {
                let Idle { conn, since } = idle.swap_remove(i);
                if let Waiting::Live(conn) = conn {
                    match conn.park() {
                        Some(parked) => idle.push(Idle { conn: Waiting::Parked(parked), since }),
                        None => continue,
                    }
                }
                // Looked at again below the stack's end: swap_remove moved another one to `i`.
                continue;
            }
            i += 1;
        }
        // Most recently used last again (swap_remove moved some).
        idle.sort_by_key(|c| c.since);
        let left = idle.len();
        drop(idle);
        drop(closing);
        let mut h2 = self.h2();
        if h2.as_ref().is_some_and(|s| s.send.is_closed() || s.last_used.elapsed() >= max_idle) {
            // Requests still on it finish: hyper closes the connection once its last stream ends.
            *h2 = None;
        }
        left
    }
}
