//! `Strategy::pick` must not allocate: checked with a counting global allocator around many picks of
//! every strategy, with some servers not ready and some load in flight. Only the picking thread's
//! allocations count: a pick is synchronous, and the test harness allocates on its own thread.

use lb::balance;
use lb::config::Config;
use lb::runtime::Runtime;
#[path = "shared/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::on_this_thread;

#[test]
fn no_strategy_allocates_when_picking() {
    let strategies = [
        ("round_robin", ""),
        ("weighted", ""),
        ("least_conn", ""),
        ("random", "seed = 1"),
        ("p2c", "seed = 1"),
        ("consistent_hash", "hash_key = \"header:x-user\"\nhash_balance_factor = 1.25"),
        ("consistent_hash", "hash_key = \"cookie:sid\""),
    ];
    for (strategy, extra) in strategies {
        let servers: Vec<String> = (0..100)
            .map(|i| format!("{{ addr = \"127.0.0.1:{}\", weight = {} }}", 10_000 + i, i % 4))
            .collect();
        let toml = format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.p]\nstrategy = \"{strategy}\"\n{extra}\nservers = [{}]\n",
            servers.join(", ")
        );
        let runtime = Runtime::new(Config::from_toml(&toml).unwrap());
        let snap = runtime.snapshot();
        let pool = &snap.pools[0];
        let _load: Vec<_> = pool.upstreams.iter().step_by(3).map(|u| pool.begin(u)).collect();
        let requests: Vec<_> = (0..64)
            .map(|i| {
                http::Request::builder()
                    .header("x-user", format!("user-{i}"))
                    .header("cookie", format!("a=b; sid=s{i}"))
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0
            })
            .collect();
        let client = "10.1.2.3:4000".parse().unwrap();
        // The counter must see this thread's allocations, or a zero below would prove nothing.
        let probe = on_this_thread();
        drop(std::hint::black_box(Box::new(probe)));
        assert!(on_this_thread() > probe, "the allocation counter missed an allocation");
        let before = on_this_thread();
        let mut picked = 0;
        for i in 0..1_000 {
            picked += usize::from(pool.pick(client, &requests[i % requests.len()]).is_some());
        }
        let allocated = on_this_thread() - before;
        assert_eq!(picked, 1_000, "{strategy}: some picks found no server");
        assert_eq!(allocated, 0, "{strategy} {extra}: {allocated} allocations in 1000 picks");
    }
    let _ = balance::rng::Rng::new(0);
}

/// Nor do picks in a pool whose backups are in use, nor retries that reach them.
#[test]
fn picking_among_backups_does_not_allocate() {
    use lb::control::{AdminState, Change};
    for strategy in ["round_robin", "weighted", "least_conn", "p2c", "consistent_hash"] {
        let servers: Vec<String> = (0..20)
            .map(|i| {
                format!("{{ name = \"s{i}\", addr = \"127.0.0.1:{}\", backup = {} }}", 10_000 + i, i >= 10)
            })
            .collect();
        let hash = if strategy == "consistent_hash" { "hash_key = \"client_ip\"\n" } else { "" };
        let toml = format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.p]\nstrategy = \"{strategy}\"\n{hash}servers = [{}]\n",
            servers.join(", ")
        );
        let runtime = Runtime::new(Config::from_toml(&toml).unwrap());
        for i in 0..10 {
            let maint = Change { state: Some(AdminState::Maint), weight: None };
            runtime.set_override("p", &format!("s{i}"), maint).unwrap();
        }
        let snap = runtime.snapshot();
        let pool = &snap.pools[0];
        assert!(pool.backups_in_use());
        let parts = http::Request::builder().body(()).unwrap().into_parts().0;
        let client = "10.1.2.3:4000".parse().unwrap();
        let tried = [0, 3, 12];
        let before = on_this_thread();
        let mut backups = 0;
        for _ in 0..1_000 {
            backups += usize::from(pool.choose(client, &parts).is_some_and(|c| pool.is_backup(c.index)));
            backups += usize::from(
                pool.choose_other(client, &parts, &tried).is_some_and(|c| pool.is_backup(c.index)),
            );
        }
        let allocated = on_this_thread() - before;
        assert_eq!(backups, 2_000, "{strategy}: every pick is a backup");
        assert_eq!(allocated, 0, "{strategy}: {allocated} allocations in 2000 picks");
    }
}
