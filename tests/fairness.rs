//! Fair service: with a thousand keep-alive clients on one worker, every client is served in its
//! turn. No timing threshold: the clients share a fixed number of requests and each one's count is
//! compared with the mean, so the test is as strict on a slow machine as on a fast one.

mod common;

use common::{config_with, Backend, LbProcess};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends GETs on one keep-alive connection while the shared budget lasts; returns how many it got.
async fn client(
    addr: std::net::SocketAddr,
    budget: Arc<AtomicUsize>,
    start: Arc<tokio::sync::Barrier>,
) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    start.wait().await;
    let mut served = 0;
    let mut buf = vec![0u8; 4096];
    // Each answer is a head and a one-byte body (the backend's name).
    let complete =
        |got: &[u8]| got.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|end| got.len() > end + 4);
    while budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        while !complete(&got) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "lb closed a keep-alive connection");
            got.extend_from_slice(&buf[..n]);
        }
        served += 1;
    }
    served
}

/// Raises this process's open-file limit (lb inherits it) as far as the hard limit allows, and
/// returns it: each client costs two descriptors here (its socket and a backend's) and two in lb.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let soft = hard.min(16_384);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    soft
}

/// Only lb may decide who is served first, so the test's own two sides are kept fair and apart:
/// the backends run on a runtime of their own, and the clients on a single-threaded one, whose run
/// queue is one FIFO with no overflow. On tokio's multi-threaded defaults the clients could split
/// into a fast and a slow lane themselves (a worker's local queue overflowing into the global one).
///
/// The backends take a millisecond to answer, as an application does. An instant backend races lb:
/// its answer is sometimes already there when lb, having just written the request, tries a read,
/// and that request then skips a turn through lb's ready queue. Which requests win is chance, and
/// chance spread the counts as widely as unfair scheduling does (13 to 29 in one CI run, 12 to 32
/// in about one run in eight here with another process busy), so the test could not tell the two
/// apart. With the millisecond, 36 runs out of 36 under the same load gave 17 to 23, and lb built
/// without its I/O batching limits (src/main.rs) still fails every run (13 or 14 fewest).
///
/// Chance still failed one clean CI run in four, so a run that misses the bar is repeated, up to
/// three runs in all: unfair scheduling misses it in every run, chance rarely in three at once.
#[test]
fn a_thousand_clients_on_one_worker_are_each_served_their_share() {
    let fds = raise_fd_limit();
    let backend_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_io_events_per_busy_tick(48)
        .max_io_events_per_tick(192)
        .enable_all()
        .build()
        .unwrap();
    let backends = backend_rt.block_on(futures_util::future::join_all(
        ["a", "b", "c"].map(|name| Backend::start_with_delay(name, Duration::from_millis(1))),
    ));
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut misses = Vec::new();
    for _ in 0..3 {
        match client_rt.block_on(served_their_share(&backends, fds)) {
            Ok(()) => return,
            Err(miss) => misses.push(miss),
        }
    }
    panic!("every run missed the bar: {misses:?}");
}

/// One run: a fresh lb, the clients, and whether every client got its share (else why not).
async fn served_their_share(backends: &[Backend], fds: u64) -> Result<(), String> {
    let servers: Vec<(&str, std::net::SocketAddr)> =
        backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let lb = LbProcess::start_pinned(&config_with(&servers, "[limits]\nupstream_idle_per_server = 1024\n"));
    // 1,024 clients (fewer only if the descriptor limit cannot allow them) share 20 requests each.
    let clients = 1024.min(usize::try_from(fds.saturating_sub(256) / 2).unwrap_or(1024));
    let each = 20;
    let budget = Arc::new(AtomicUsize::new(clients * each));
    let start = Arc::new(tokio::sync::Barrier::new(clients));
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(lb.addr, Arc::clone(&budget), Arc::clone(&start))))
        .collect();
    let mut served = Vec::new();
    for t in tasks {
        served.push(t.await.unwrap());
    }
    served.sort_unstable();
    let mean = each as f64;
    let (fewest, p10, median, most) =
        (served[0], served[clients / 10], served[clients / 2], served[clients - 1]);
    eprintln!("answers per client: fewest {fewest}, 10th percentile {p10}, median {median}, most {most} (mean {mean})");
    // Served in turn, every client gets 17 to 23 here (19 to 21 since a pool this busy runs its
    // upstream connections in tasks of their own, `limits.upstream_tasks_above`); the runtime's
    // default I/O batching gave 10 to 14 to the fewest-served and 29 to 42 to the most-served
    // (src/main.rs).
    if (fewest as f64) < 0.75 * mean {
        return Err(format!("a client got {fewest} answers (mean {mean}, tenth {p10})"));
    }
    if most as f64 > 1.5 * mean {
        return Err(format!("a client got {most} answers (mean {mean}, median {median})"));
    }
    Ok(())
}
