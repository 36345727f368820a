//! `Router::route` with 10, 1,000 and 100,000 routes.
//!
//! `cargo bench --bench route`. Each table holds the three kinds of route in the same shares: half
//! exact hosts (`t{i}.example.com`, no prefix), a quarter exact hosts with a path prefix
//! (`p{i}.example.org`, `/api/v{i % 4}`, plus `/` as the host's catch-all), a quarter wildcards
//! (`*.w{i}.example.net`), and a host-less default. Each benchmark rotates over 4,096 requests spread
//! over the whole table (so the table's memory is not all in cache, as with real traffic), with
//! upper-case letters and a port now and then. Figures: docs/performance.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::config::{HostMatch, RouteConfig};
use lb::router::Router;
use std::hint::black_box;
use std::time::Duration;

fn table(n: usize) -> Vec<RouteConfig> {
    // The pool says which kind of route answered: 0 default, 1 exact, 2 prefix, 3 `/`, 4 wildcard.
    let route = |host, prefix: Option<&str>, pool| RouteConfig {
        host,
        path_prefix: prefix.map(str::to_owned),
        pool,
        max_body_size: None,
        policy: None,
        cache: None,
    };
    let mut routes = Vec::with_capacity(n + n / 4 + 1);
    for i in 0..n / 2 {
        routes.push(route(Some(HostMatch::Exact(format!("t{i}.example.com"))), None, 1));
    }
    for i in 0..n / 4 {
        let host = || Some(HostMatch::Exact(format!("p{i}.example.org")));
        routes.push(route(host(), Some(&format!("/api/v{}", i % 4)), 2));
        routes.push(route(host(), Some("/"), 3));
    }
    for i in 0..n / 4 {
        routes.push(route(Some(HostMatch::Suffix(format!(".w{i}.example.net"))), None, 4));
    }
    routes.push(route(None, None, 0));
    routes
}

/// 4,096 requests of one kind, spread evenly over the `n`-route table.
fn requests(kind: &str, n: usize) -> Vec<(String, String)> {
    (0..4096usize)
        .map(|k| {
            let i = k * 7919 % (n / 4).max(1);
            let port = if k % 8 == 0 { ":8080" } else { "" };
            match kind {
                "exact" => {
                    (format!("t{}.Example.com{port}", i * 2 % (n / 2).max(1)), "/index.html".to_owned())
                }
                "wildcard" => (format!("app-{k}.w{i}.example.net{port}"), "/".to_owned()),
                _ => (format!("p{i}.example.org{port}"), format!("/api/v{}/users/{k}", i % 4)),
            }
        })
        .collect()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for n in [10usize, 1_000, 100_000] {
        let router = Router::new(&table(n));
        for kind in ["exact", "wildcard", "prefix"] {
            let requests = requests(kind, n);
            let pool = match kind {
                "exact" => 1,
                "wildcard" => 4,
                _ => 2,
            };
            assert!(
                requests.iter().all(|(h, p)| router.route(Some(h), p) == Some(pool)),
                "every {kind} request finds its route"
            );
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(kind, n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 4095;
                    let (host, path) = &requests[k];
                    black_box(router.route(Some(black_box(host)), black_box(path)))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
