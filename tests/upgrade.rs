//! Upgrades without dropping a connection: SIGUSR2 starts a new `lb` process that takes the
//! listening sockets (client and admin) and serves; the old one drains and exits. Under steady load
//! (keep-alive and new connections, HTTP/1.1 and HTTP/2), several upgrades in a row fail no request
//! and refuse no connection; a new process that cannot start leaves the old one serving.

mod common;

use common::{config_with, eventually, Backend, LbProcess};
use http::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The pid serving the admin listener now.
async fn serving_pid(admin: SocketAddr) -> u32 {
    let (_, body) = common::get(&common::client(), &format!("http://{admin}/status")).await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["pid"].as_u64().unwrap() as u32
}

/// Whether `pid` still runs (a zombie, exited but not yet reaped by its parent, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// Kills every process an upgrade started from this test's config file (the test's own child is
/// killed by `LbProcess`), whatever the test saw of them.
struct Reap(std::path::PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        let config = self.0.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&config) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The pid serving the admin listener once it is no longer `old` (a process being replaced may
/// still answer one more request; the new one is what counts).
async fn replaced(admin: SocketAddr, old: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pid = serving_pid(admin).await;
        if pid != old && running(pid) {
            return pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new process took over from {old}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Load that never stops between upgrades: counts answers and failures of each kind.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn fail(&self, what: String) {
        self.failed.lock().unwrap().push(what);
    }
}

fn start_load(addr: SocketAddr, load: &Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Keep-alive HTTP/1.1 and HTTP/2 clients.
    for (name, client) in [("h1 keep-alive", common::client()), ("h2", common::h2_client())] {
        for _ in 0..2 {
            let (load, client) = (Arc::clone(load), client.clone());
            tasks.push(tokio::spawn(async move {
                while !load.stop.load(Ordering::SeqCst) {
                    match client.get(format!("http://{addr}/").parse().unwrap()).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                            load.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(resp) => load.fail(format!("{name}: status {}", resp.status())),
                        Err(e) => load.fail(format!("{name}: {e:?}")),
                    }
                }
            }));
        }
    }
    // A new connection for every request.
    let load = Arc::clone(load);
    tasks.push(tokio::spawn(async move {
        while !load.stop.load(Ordering::SeqCst) {
            let mut s = match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    load.fail(format!("connect: {e}"));
                    continue;
                }
            };
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            if out.starts_with(b"HTTP/1.1 200") {
                load.ok.fetch_add(1, Ordering::SeqCst);
            } else {
                load.fail(format!("new connection: {:?}", String::from_utf8_lossy(&out)));
            }
        }
    }));
    tasks
}

/// Waits until the load has `n` more answers.
async fn answers(load: &Arc<Load>, n: usize) {
    let target = load.ok.load(Ordering::SeqCst) + n;
    let load = Arc::clone(load);
    eventually(Duration::from_secs(30), move || {
        let load = Arc::clone(&load);
        async move { load.ok.load(Ordering::SeqCst) >= target }
    })
    .await;
}

#[tokio::test]
async fn upgrades_under_load_fail_no_request_and_refuse_no_connection() {
    let b = Backend::start("b").await;
    let lb = LbProcess::start(&config_with(&[("b", b.addr)], ""));
    let _reap = Reap(lb.config_path());
    let load = Arc::new(Load::default());
    let tasks = start_load(lb.addr, &load);
    answers(&load, 200).await;
    let mut pid = serving_pid(lb.admin).await;
    for round in 0..3 {
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
        let old = pid;
        pid = replaced(lb.admin, old).await;
        // The old process drains and exits.
        eventually(Duration::from_secs(30), || async move { !running(old) }).await;
        answers(&load, 200).await;
        eprintln!("upgrade {round}: {old} -> {pid}, {} answers so far", load.ok.load(Ordering::SeqCst));
    }
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = load.failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        load.ok.load(Ordering::SeqCst),
        &failed[..failed.len().min(5)]
    );
    assert!(b.requests() >= 800);
}

#[tokio::test]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let b = Backend::start("b").await;
    let toml = config_with(&[("b", b.addr)], "[reload]\nwatch = false\n");
    let lb = LbProcess::start(&toml);
    let _reap = Reap(lb.config_path());
    let pid = serving_pid(lb.admin).await;
    // The new process reads the config file again, and this one is invalid.
    std::fs::write(lb.config_path(), "[[listeners]]\naddr = \"nonsense\"\n").unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
    // The failed attempt is over once a second SIGUSR2 can be served again; meanwhile and after,
    // the old process answers.
    for _ in 0..20 {
        assert_eq!(common::get(&common::client(), &format!("http://{}/", lb.addr)).await.0, StatusCode::OK);
    }
    let admin = lb.admin;
    eventually(Duration::from_secs(30), || async move {
        // No stray process: the admin socket is answered by the old process alone.
        serving_pid(admin).await == pid
            && !std::fs::read_dir("/proc").unwrap().any(|e| {
                let name = e.unwrap().file_name();
                let Some(other) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { return false };
                other != pid
                    && running(other)
                    && std::fs::read_to_string(format!("/proc/{other}/status"))
                        .is_ok_and(|s| s.lines().any(|l| l == format!("PPid:\t{pid}")))
            })
    })
    .await;
    assert_eq!(common::get(&common::client(), &format!("http://{}/", lb.addr)).await.0, StatusCode::OK);
}
