//! What a route costs once lb runs: its strings plus a small constant. A counting allocator tracks
//! the bytes live after a config is parsed and a runtime built from it, for 1 and 10,000 host
//! routes; what the TOML parser needs on the way is freed and not counted.
//! `cargo test --release --test route_memory -- --nocapture` prints the figures in
//! docs/performance.md.

use lb::config::Config;
use lb::runtime::Runtime;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size() as isize;
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn config(routes: usize) -> String {
    let mut toml = String::from(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{ addr = \"127.0.0.1:1\" }]\n",
    );
    for i in 0..routes {
        toml.push_str(&format!("[[routes]]\nhost = \"h{i}.bench.test\"\npool = \"web\"\n"));
    }
    toml
}

/// Bytes live while a runtime for `routes` routes exists, and the peak while parsing it.
fn cost(routes: usize) -> (isize, isize) {
    let src = config(routes);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let runtime = Runtime::new(Config::from_toml(&src).unwrap());
    let live = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(runtime);
    (live, peak)
}

#[test]
fn a_route_costs_its_strings_and_a_small_constant() {
    let (one, one_peak) = cost(1);
    let (many, many_peak) = cost(10_001);
    let per_route = (many - one) / 10_000;
    let peak_per_route = (many_peak - one_peak) / 10_000;
    println!("live: 1 route {one} B, 10,001 routes {many} B: {per_route} B per route");
    println!("parse peak: {peak_per_route} B per route (freed once the runtime is built)");
    // The host name ("h1234.bench.test", 16 bytes) is held twice (config and router index), plus
    // their containers and the index's hash tables.
    assert!(per_route < 300, "{per_route} B per route");
}
