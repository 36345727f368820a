//! The cost of a rate-limit decision: a local bucket alone, the whole check of one local rule as the
//! request path runs it (matching, the client-address key, the decision, the metric updates), and a
//! check against a real `redis-server` (started here on a free port when installed).
//!
//! `cargo bench --bench rate_limit`. Figures: docs/performance.md.

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use lb::config::Config;
use lb::ratelimit::gcra::{LocalBuckets, Quota};
use lb::runtime::Runtime;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

fn runtime(rules: &str) -> Runtime {
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.p]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n{rules}"
    );
    Runtime::new(Config::from_toml(&toml).expect("bench config"))
}

/// 10,000 clients, taken in turn.
fn clients() -> Vec<SocketAddr> {
    (0..10_000u32)
        .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40_000)))
        .collect()
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let buckets = LocalBuckets::new(Quota { interval: Duration::from_micros(1), burst: 1000 }, 100_000);
    let mut key = 0u64;
    group.bench_function("local_bucket", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(buckets.take(key % 10_000))
        })
    });

    let rt = runtime("[[rate_limits]]\nname = \"api\"\nrate = \"1000000/s\"\nburst = 1000\n");
    let snap = rt.snapshot();
    let parts = http::Request::get("/api/items").body(()).expect("request").into_parts().0;
    let route = &snap.config.routes[0];
    let clients = clients();
    let request = |client| lb::ratelimit::Request { client, parts: &parts, host: Some("example.com"), route };
    let mut i = 0;
    group.bench_function("check_one_local_rule", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(snap.rate_limits.check(request(clients[i]), &[]).now_or_never())
        })
    });

    match Redis::start() {
        None => eprintln!("redis-server not installed: the Redis decision is not measured"),
        Some(redis) => {
            let rt = runtime(&format!(
                "[redis]\nnodes = [\"{}\"]\ntimeout = \"1s\"\n[[rate_limits]]\nname = \"api\"\nrate = \"1000000/s\"\nburst = 1000\nstore = \"redis\"\n",
                redis.addr
            ));
            let snap = rt.snapshot();
            let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            group.bench_function("check_one_redis_rule", |b| {
                b.iter(|| {
                    i = (i + 1) % clients.len();
                    black_box(tokio.block_on(snap.rate_limits.check(request(clients[i]), &[])))
                })
            });
            drop(redis);
        }
    }
    group.finish();
}

struct Redis {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready once it accepts (bounded: 10 s).
        for _ in 0..1000 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Self { child, addr });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
