//! systemd readiness: the `lb` binary, started with `NOTIFY_SOCKET` naming a datagram socket this test
//! binds, writes `READY=1` once it serves, `RELOADING=1` / `READY=1` around reloads, and `STOPPING=1`
//! when the drain begins: what `Type=notify` in dist/lb.service relies on.

mod common;

use common::{client, get, with_test_admin, Backend};
use http::StatusCode;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The next message lb sent, waiting at most 20s.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Like [`next`], but a timeout fails with what lb's threads were doing (state and kernel wait
/// channel of each, from /proc): a notification that never came once in CI left nothing to go on.
fn next_from(sock: &UnixDatagram, pid: u32) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => {
            let mut threads = String::from(" none: the process is gone");
            if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                threads.clear();
                for task in dir.flatten() {
                    let path = task.path();
                    let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
                    let stat = read("stat");
                    let state =
                        stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?");
                    let name = read("comm");
                    threads += &format!(
                        "\n  {} {} state {state} wchan {}",
                        path.display(),
                        name.trim(),
                        read("wchan")
                    );
                }
            }
            panic!("no notification within 20s ({e}); lb {pid}'s threads:{threads}");
        }
    }
}

/// The `lb` binary in front of `backend`, with `NOTIFY_SOCKET` naming a datagram socket bound here
/// (read with a 20 s timeout); its stdout is piped, for the startup lines.
fn start_notifying(backend: &Backend) -> (tempfile::TempDir, UnixDatagram, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let config = dir.path().join("lb.toml");
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{{ addr = \"{}\" }}]\n",
        backend.addr
    );
    std::fs::write(&config, with_test_admin(&toml)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket)
        .env("LB_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    (dir, sock, child)
}

#[tokio::test]
async fn lb_notifies_ready_reloading_and_stopping() {
    let backend = Backend::start("a").await;
    let (_dir, sock, mut child) = start_notifying(&backend);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim().to_owned());
    }
    let addr = lines[0].strip_prefix("lb listening on http://").unwrap().to_owned();
    let admin = lines[1].strip_prefix("lb admin on http://").unwrap().to_owned();

    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=serving generation 1"), "{ready:?}");
    // Ready means serving: the proxy and the admin listener answer now.
    assert_eq!(get(&client(), &format!("http://{addr}/")).await, (StatusCode::OK, "a".to_owned()));
    assert_eq!(get(&client(), &format!("http://{admin}/healthz")).await.0, StatusCode::OK);

    // A reload through the admin listener, then one through SIGHUP.
    let req = http::Request::post(format!("http://{admin}/reload"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), StatusCode::OK);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    for trigger in ["admin", "SIGHUP"] {
        if trigger == "SIGHUP" {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        }
        let reloading = next(&sock);
        let mut fields = reloading.lines();
        assert_eq!(fields.next(), Some("RELOADING=1"), "{trigger}: {reloading:?}");
        let usec: u64 =
            fields.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
        assert!(usec > 0, "{trigger}: {reloading:?}");
        let back = next(&sock);
        assert!(back.starts_with("READY=1\n"), "{trigger}: {back:?}");
    }

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = next_from(&sock, child.id());
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_upgrade_hands_the_service_to_the_new_process() {
    let backend = Backend::start("a").await;
    let (_dir, sock, mut child) = start_notifying(&backend);
    assert!(next(&sock).lines().any(|l| l == "READY=1"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGUSR2)
        .unwrap();
    // The new process: ready, then the service's main pid is its own. The old one then exits
    // without STOPPING=1 (the service is not stopping).
    assert!(next(&sock).lines().any(|l| l == "READY=1"));
    let main = next(&sock);
    let new_pid: i32 =
        main.strip_prefix("MAINPID=").unwrap_or_else(|| panic!("{main:?}")).trim().parse().unwrap();
    assert_ne!(new_pid, child.id() as i32);
    let mut reap = KillOnDrop(Some(new_pid));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let after = sock.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(after.is_err(), "nothing more from either process: {after:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new_pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    sock.set_nonblocking(false).unwrap();
    assert!(next(&sock).starts_with("STOPPING=1"), "the new process stops as the service");
    // Once it is gone its pid may be another process's thread: never signal it after that.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running(new_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !running(new_pid) {
        reap.0 = None;
    }
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// Kills a process this test did not start itself (the upgrade's new lb) if the test ends before
/// it stopped; `None` once it is known gone.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
