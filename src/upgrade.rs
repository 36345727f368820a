//! Replacing the running binary without dropping a connection (as nginx's USR2, HAProxy's socket
//! transfer and Pingora's graceful upgrade do). On SIGUSR2 the running lb starts its own executable
//! again (the path it was started from, so a binary replaced on disk is the one that starts) with the
//! same arguments, and hands it every listening socket over a Unix socket (`SCM_RIGHTS`). The new
//! process loads its config, serves on those very sockets (so nothing in their backlogs is lost),
//! and says `ready`; only then does the old one stop accepting and drain. If the new process fails
//! (bad config, crash, no answer in time), the old one keeps serving as if nothing happened.
//!
//! Health carries over: the old process names the servers its active checks hold down, and the new
//! one starts them down, so it never sends traffic to a server known to be failing. Passive
//! ejections do not carry over: they last seconds, and live traffic ejects a failing server again
//! after its first few failures.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Names the Unix socket a new process takes its sockets from.
pub const ENV: &str = "LB_UPGRADE_SOCKET";
/// Most sockets handed over in one upgrade.
const MAX_FDS: usize = 256;
/// How long the new process may take to connect, and then to say it is ready.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long the new process waits for the old one's `go` once it said `ready`.
const GO_WITHIN: Duration = Duration::from_secs(10);

/// What the old process hands over, besides the sockets themselves.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Configured address of each client listener, in the order of their sockets.
    pub listeners: Vec<SocketAddr>,
    /// Configured address of the admin listener, whose socket comes after them.
    pub admin: Option<SocketAddr>,
    /// Servers that active checks hold down, as (pool, server).
    pub down: Vec<(String, String)>,
}

/// The executable and arguments this process was started with, recorded at start: once a package
/// manager replaced the file, `/proc/self/exe` names the deleted one, while the path names the new.
pub fn record_start() {
    let _ = START.set((
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lb")),
        std::env::args_os().skip(1).collect(),
    ));
}

static START: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// Starts the new process and hands it `listeners` (configured address, socket) and `admin`; returns
/// once it said it is ready. Blocking: run it off the runtime's workers.
/// `abandon` set (this process began to shut down meanwhile) stops the handover, and the new process
/// is killed: an operator who asked lb to stop must not find a new one serving.
pub fn hand_over(
    listeners: Vec<(SocketAddr, TcpListener)>,
    admin: Option<(SocketAddr, TcpListener)>,
    down: Vec<(String, String)>,
    abandon: &AtomicBool,
) -> io::Result<u32> {
    let (exe, args) = START.get().cloned().unwrap_or_else(|| (PathBuf::from("lb"), Vec::new()));
    // Unpredictable, so no other user can have put something there; and only the child it starts
    // may take the sockets (checked by its credentials below).
    let nonce = crate::balance::rng::Rng::from_entropy().next_u64();
    let path = std::env::temp_dir().join(format!("lb-upgrade-{}-{nonce:016x}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixListener::bind(&path)?;
    let _cleanup = Remove(path.clone());
    let mut child = std::process::Command::new(&exe).args(&args).env(ENV, &path).spawn()?;
    let result = talk(&socket, &mut child, listeners, admin, down, abandon);
    match result {
        Ok(()) => Ok(child.id()),
        Err(e) => {
            // Whatever state it is in, it must not serve beside us.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn talk(
    socket: &UnixListener,
    child: &mut std::process::Child,
    listeners: Vec<(SocketAddr, TcpListener)>,
    admin: Option<(SocketAddr, TcpListener)>,
    down: Vec<(String, String)>,
    abandon: &AtomicBool,
) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT_WITHIN;
    let mut stream = loop {
        match socket.accept() {
            Ok((s, _)) => {
                let peer = rustix::net::sockopt::socket_peercred(&s)?;
                if peer.pid.as_raw_pid() == child.id() as i32 {
                    break s;
                }
                tracing::warn!(
                    pid = peer.pid.as_raw_pid(),
                    "a process other than the new lb connected to the upgrade socket: refused"
                );
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("the new process exited first ({status})")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("the new process did not connect within 30 s"));
        }
        if abandon.load(Ordering::SeqCst) {
            return Err(io::Error::other("shutting down"));
        }
        // Polled: this runs once per upgrade, on a blocking thread.
        std::thread::sleep(Duration::from_millis(10));
    };
    stream.set_nonblocking(false)?;
    let manifest = Manifest {
        listeners: listeners.iter().map(|(a, _)| *a).collect(),
        admin: admin.as_ref().map(|(a, _)| *a),
        down,
    };
    let body = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    let fds: Vec<_> =
        listeners.iter().map(|(_, l)| l.as_fd()).chain(admin.iter().map(|(_, l)| l.as_fd())).collect();
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!("more than {MAX_FDS} listening sockets")));
    }
    // The length first, with the sockets attached; then the manifest.
    let len = u32::try_from(body.len()).map_err(io::Error::other)?.to_le_bytes();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("cannot attach the sockets"));
    }
    let sent = rustix::net::sendmsg(&stream, &[io::IoSlice::new(&len)], &mut control, SendFlags::empty())?;
    if sent != len.len() {
        return Err(io::Error::other("short write to the new process"));
    }
    stream.set_write_timeout(Some(STEP))?;
    stream.write_all(&body)?;
    // Its `ready`, waited for in short steps so that a shutdown meanwhile is seen.
    stream.set_read_timeout(Some(STEP))?;
    let deadline = Instant::now() + READY_WITHIN;
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        if abandon.load(Ordering::SeqCst) {
            return Err(io::Error::other("shutting down"));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("the new process was not ready within 60 s"));
        }
        let mut byte = [0u8; 16];
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::Error::other("the new process stopped before it was ready")),
            Ok(n) => line.extend_from_slice(&byte[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    if line != b"ready\n" {
        return Err(io::Error::other("the new process said something other than ready"));
    }
    // The last word: from here the new process is the service (it tells systemd so).
    stream.write_all(b"go\n")
}

/// How long one wait of the handover lasts before it looks at `abandon` again.
const STEP: Duration = Duration::from_millis(200);

struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The sockets a new process took from the one it replaces.
#[derive(Debug)]
pub struct Handoff {
    stream: UnixStream,
    listeners: HashMap<SocketAddr, TcpListener>,
    admin: Option<(SocketAddr, TcpListener)>,
    /// Servers the old process's checks held down.
    pub down: Vec<(String, String)>,
}

impl Handoff {
    /// When this process was started by an upgrade ([`ENV`] set): connects to the old process and
    /// takes its sockets. `None` for an ordinary start.
    pub fn receive() -> io::Result<Option<Self>> {
        let Some(path) = std::env::var_os(ENV) else { return Ok(None) };
        let stream = UnixStream::connect(Path::new(&path))?;
        let mut len = [0u8; 4];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [io::IoSliceMut::new(&mut len)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        (&stream).read_exact(&mut len[got.bytes..])?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        (&stream).read_exact(&mut body)?;
        let manifest: Manifest = serde_json::from_slice(&body).map_err(io::Error::other)?;
        let expected = manifest.listeners.len() + usize::from(manifest.admin.is_some());
        if fds.len() != expected {
            return Err(io::Error::other(format!("expected {expected} sockets, got {}", fds.len())));
        }
        let mut fds = fds.into_iter().map(TcpListener::from);
        let listeners = manifest.listeners.iter().filter_map(|a| Some((*a, fds.next()?))).collect();
        let admin = manifest.admin.and_then(|a| Some((a, fds.next()?)));
        Ok(Some(Self { stream, listeners, admin, down: manifest.down }))
    }

    /// The inherited client listeners, by configured address.
    pub fn take_listeners(&mut self) -> HashMap<SocketAddr, TcpListener> {
        std::mem::take(&mut self.listeners)
    }

    /// The inherited admin listener, if it was configured at `addr`.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        self.admin.take().filter(|(a, _)| *a == addr).map(|(_, l)| l)
    }

    /// Tells the old process this one serves, and waits for its `go`: from then on it stops
    /// accepting and drains, and this process is the service.
    pub fn ready(mut self) -> io::Result<()> {
        self.stream.write_all(b"ready\n")?;
        self.stream.set_read_timeout(Some(GO_WITHIN))?;
        let mut line = String::new();
        io::BufReader::new(&self.stream).read_line(&mut line)?;
        if line == "go\n" {
            Ok(())
        } else {
            Err(io::Error::other("the previous lb did not confirm the handover"))
        }
    }
}
