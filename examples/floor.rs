//! The least a proxy built on lb's stack can cost: tokio's runtime set up as lb's, hyper's HTTP/1
//! server in front, hyper's HTTP/1 client behind, round robin over kept-alive upstream connections,
//! and nothing else (no header rewriting, limits, health, metrics or logs). Not a product: it
//! exists so that benchmarks can tell what lb's own work costs from what the stack beneath it does
//! (docs/performance.md, "The stack's floor").
//!
//! Usage: `floor LISTEN_ADDR CONFIG` takes the upstream addresses from the `servers = [...]` lines of
//! an lb config (the benchmark's own), or `floor LISTEN_ADDR UPSTREAM...`, or `floor --config CONFIG`
//! (listening on the config's first address).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Reply = Response<Either<Incoming, Empty<Bytes>>>;

struct Upstreams {
    addrs: Vec<SocketAddr>,
    idle: Vec<Mutex<Vec<SendRequest<Incoming>>>>,
    next: AtomicUsize,
}

impl Upstreams {
    /// A connection to `i` that can take a request now: an idle one, or a new one.
    async fn checkout(&self, i: usize) -> Option<SendRequest<Incoming>> {
        loop {
            let idle = self.idle[i].lock().ok()?.pop();
            match idle {
                Some(s) if s.is_ready() => return Some(s),
                Some(_) => continue,
                None => break,
            }
        }
        let tcp = TcpStream::connect(self.addrs[i]).await.ok()?;
        tcp.set_nodelay(true).ok()?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        Some(send)
    }

    async fn forward(&self, req: Request<Incoming>) -> Reply {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        let failed = || {
            let mut r = Response::new(Either::Right(Empty::new()));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        };
        let Some(mut send) = self.checkout(i).await else { return failed() };
        let sent = send.send_request(req).await;
        // hyper's connection task reads the body to its end; the sender is ready again by the time
        // the next request looks for it (it is checked then).
        if let Ok(mut idle) = self.idle[i].lock() {
            idle.push(send);
        }
        match sent {
            Ok(resp) => resp.map(Either::Left),
            Err(_) => failed(),
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `floor --config CONFIG`, as lb is started: it listens on the config's first address.
    if args.len() == 2 && args[0] == "--config" {
        let first = std::fs::read_to_string(&args[1])?
            .lines()
            .find_map(|l| Some(l.strip_prefix("addr = \"")?.split('"').next()?.to_owned()))
            .expect("a listener address in the config");
        args[0] = first;
    }
    let (listen, rest) = args.split_first().expect("usage: floor LISTEN_ADDR (CONFIG | UPSTREAM...)");
    let addrs: Vec<SocketAddr> = match rest {
        [config] if std::path::Path::new(config).is_file() => std::fs::read_to_string(config)?
            .lines()
            .filter(|l| l.trim_start().starts_with("servers"))
            .flat_map(|l| {
                l.split("addr = \"")
                    .skip(1)
                    .filter_map(|a| a.split('"').next()?.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect(),
        _ => rest.iter().map(|a| a.parse().expect("upstream address")).collect(),
    };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let ups = Arc::new(Upstreams {
        idle: addrs.iter().map(|_| Mutex::new(Vec::new())).collect(),
        addrs,
        next: AtomicUsize::new(0),
    });
    // As src/main.rs builds lb's runtime (one worker, as the benchmarks run lb); `FLOOR_CT=1`: tokio's
    // current-thread runtime instead.
    let mut rt = match std::env::var_os("FLOOR_CT") {
        Some(_) => tokio::runtime::Builder::new_current_thread(),
        None => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(1);
            b
        }
    };
    let rt = rt.max_io_events_per_busy_tick(48).max_io_events_per_tick(192).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let ups = ups.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ups = ups.clone();
                    async move { Ok::<_, std::convert::Infallible>(ups.forward(req).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    })
}
