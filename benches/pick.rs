//! `Pool::pick` for every strategy with 3, 100 and 1,000 servers.
//!
//! `cargo bench --bench pick`. Pools have varied weights and in-flight counts (so least_conn and p2c
//! compare real loads); one server in ten is draining (weight 0) so the skip paths are exercised.
//! Consistent hash gets a different key per request, as in production. Figures: docs/performance.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::config::Config;
use lb::runtime::Runtime;
use std::hint::black_box;
use std::time::Duration;

const STRATEGIES: &[(&str, &str)] = &[
    ("round_robin", ""),
    ("weighted", ""),
    ("least_conn", ""),
    ("random", "seed = 1"),
    ("p2c", "seed = 1"),
    ("consistent_hash", "hash_key = \"header:x-user\""),
    ("consistent_hash_bounded", "hash_key = \"header:x-user\"\nhash_balance_factor = 1.25"),
];

fn runtime(strategy: &str, extra: &str, n: usize) -> Runtime {
    let servers: Vec<String> = (0..n)
        .map(|i| {
            let weight = if i % 10 == 9 { 0 } else { 1 + i % 5 };
            format!("{{ addr = \"127.0.0.1:{}\", weight = {weight} }}", 10_000 + i)
        })
        .collect();
    let kind = strategy.trim_end_matches("_bounded");
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.p]\nstrategy = \"{kind}\"\n{extra}\nservers = [{}]\n",
        servers.join(", ")
    );
    Runtime::new(Config::from_toml(&toml).expect("bench config"))
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let requests: Vec<_> = (0..1024)
        .map(|i| {
            let req =
                http::Request::builder().header("x-user", format!("user-{i}")).body(()).expect("request");
            req.into_parts().0
        })
        .collect();
    let client = "10.1.2.3:4000".parse().expect("addr");
    for &(strategy, extra) in STRATEGIES {
        for n in [3usize, 100, 1000] {
            let rt = runtime(strategy, extra, n);
            let snap = rt.snapshot();
            let pool = &snap.pools[0];
            // Uneven load, none idle (an idle server would let least_conn stop scanning early):
            // server i holds 1 + i % 7 requests.
            let _load: Vec<_> = pool
                .upstreams
                .iter()
                .enumerate()
                .flat_map(|(i, u)| (0..=i % 7).map(move |_| u))
                .map(|u| pool.begin(u))
                .collect();
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(strategy, n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(pool.pick(client, &requests[i]))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
