//! A real `redis-server` for the tests that share state through Redis (rate limits, the caches'
//! shared tier): Debian's package, started on a free port and stopped by the test.

use super::eventually;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `redis-server` on a free port, without persistence, stopped on drop.
pub struct Redis {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Redis {
    /// `None` where redis-server is not installed (and not required).
    pub async fn start() -> Option<Self> {
        Self::start_on(super::closed_port().await).await
    }

    pub async fn start_on(addr: SocketAddr) -> Option<Self> {
        let mut command = std::process::Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null());
        let child = super::spawn_tool(&mut command, "LB_REQUIRE_REDIS", "redis-server")?;
        let redis = Self { child, addr };
        // Ready once it answers PING.
        eventually(Duration::from_secs(10), || async move { ping(addr).await }).await;
        Some(redis)
    }

    /// Sends `signal` to it (SIGSTOP to make it silent, SIGKILL to make it gone).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

/// Whether a Redis answers PING at `addr`.
pub async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else { return false };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await, Ok(Ok(_)) if &buf == b"+PONG\r\n")
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
