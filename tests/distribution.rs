//! The figures in docs/balancing.md, measured through the public API (config -> runtime -> pick) and
//! asserted. `cargo test --test distribution -- --nocapture` prints them.

use lb::config::Config;
use lb::runtime::Runtime;
use std::collections::HashMap;

fn runtime(strategy: &str, extra: &str, names: &[String], weights: &[u32]) -> Runtime {
    let servers: Vec<String> = names
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (n, w))| format!("{{ name = \"{n}\", addr = \"127.0.0.1:{}\", weight = {w} }}", 10_000 + i))
        .collect();
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.p]\nstrategy = \"{strategy}\"\n{extra}\nservers = [{}]\n",
        servers.join(", ")
    );
    Runtime::new(Config::from_toml(&toml).unwrap())
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("app{i}")).collect()
}

fn request(key: u64) -> http::request::Parts {
    http::Request::builder().header("x-user", format!("user-{key}")).body(()).unwrap().into_parts().0
}

const CLIENT: &str = "10.1.2.3:4000";

/// Which server name each of `keys` keys lands on.
fn placement(rt: &Runtime, keys: u64) -> Vec<String> {
    let snap = rt.snapshot();
    let client = CLIENT.parse().unwrap();
    (0..keys).map(|k| snap.pools[0].pick(client, &request(k)).unwrap().key.name.to_string()).collect()
}

fn shares(picks: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

const KEYS: u64 = 100_000;
const CH: &str = "hash_key = \"header:x-user\"";

#[test]
fn consistent_hash_key_movement() {
    let ten = names(10);
    let before = placement(&runtime("consistent_hash", CH, &ten, &[1; 10]), KEYS);
    let spread = shares(&before);
    let (min, max) = (spread.values().min().unwrap(), spread.values().max().unwrap());
    eprintln!(
        "consistent_hash: 10 servers, {KEYS} keys: per-server share {:.1}%..{:.1}% (ideal 10%)",
        *min as f64 / KEYS as f64 * 100.0,
        *max as f64 / KEYS as f64 * 100.0
    );
    assert!(*min as f64 > 0.08 * KEYS as f64 && (*max as f64) < 0.12 * KEYS as f64, "{spread:?}");

    // Remove app3: only its keys move.
    let nine: Vec<String> = ten.iter().filter(|n| *n != "app3").cloned().collect();
    let after = placement(&runtime("consistent_hash", CH, &nine, &[1; 9]), KEYS);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned = before.iter().filter(|b| *b == "app3").count();
    eprintln!(
        "consistent_hash: removing 1 of 10 servers moved {:.2}% of {KEYS} keys (its own {:.2}%)",
        moved as f64 / KEYS as f64 * 100.0,
        owned as f64 / KEYS as f64 * 100.0
    );
    assert_eq!(moved, owned, "keys of other servers moved");

    // Add app10: about 1/11 of the keys move, all to it.
    let eleven = names(11);
    let grown = placement(&runtime("consistent_hash", CH, &eleven, &[1; 11]), KEYS);
    let moved: Vec<_> = before.iter().zip(&grown).filter(|(b, a)| b != a).collect();
    eprintln!(
        "consistent_hash: adding an 11th server moved {:.2}% of {KEYS} keys (ideal {:.2}%)",
        moved.len() as f64 / KEYS as f64 * 100.0,
        100.0 / 11.0
    );
    assert!(moved.iter().all(|(_, a)| *a == "app10"));
    assert!((moved.len() as f64 / KEYS as f64 - 1.0 / 11.0).abs() < 0.02);

    // Draining (weight 0) app3 in place: again only its keys move.
    let mut weights = [1; 10];
    weights[3] = 0;
    let drained = placement(&runtime("consistent_hash", CH, &ten, &weights), KEYS);
    assert_eq!(before.iter().zip(&drained).filter(|(b, a)| b != a).count(), owned);
}

#[test]
fn bounded_load_peak() {
    // 2,000 requests held at once, keys drawn from only 20 users: an unbounded ring piles them up.
    let snap_of = |extra: &str| runtime("consistent_hash", extra, &names(10), &[1; 10]);
    for (label, extra, factor) in [
        ("unbounded", CH.to_owned(), None),
        ("factor 1.25", format!("{CH}\nhash_balance_factor = 1.25"), Some(1.25)),
    ] {
        let rt = snap_of(&extra);
        let snap = rt.snapshot();
        let pool = &snap.pools[0];
        let client = CLIENT.parse().unwrap();
        let held: Vec<_> = (0..2_000u64)
            .map(|i| {
                let up = pool.pick(client, &request(i % 20)).unwrap();
                pool.begin(up)
            })
            .collect();
        let peak = pool.upstreams.iter().map(|u| u.stats.in_flight()).max().unwrap();
        eprintln!("consistent_hash {label}: 2000 in flight over 10 servers from 20 keys: busiest holds {peak} (average 200)");
        if let Some(f) = factor {
            assert!(peak as f64 <= (f * 200.0f64).ceil(), "{peak}");
        } else {
            assert!(peak > 300, "the unbounded ring should be lopsided here: {peak}");
        }
        drop(held);
    }
}

#[test]
fn distributions() {
    let client = CLIENT.parse().unwrap();
    for (strategy, extra, weights) in [
        ("round_robin", "", vec![1, 1, 1]),
        ("weighted", "", vec![5, 1, 1]),
        ("random", "seed = 1", vec![5, 1, 1]),
        ("p2c", "seed = 1", vec![1, 1, 1]),
        ("least_conn", "", vec![1, 1, 1]),
    ] {
        let rt = runtime(strategy, extra, &names(3), &weights);
        let snap = rt.snapshot();
        let picks: Vec<String> = (0..70_000)
            .map(|k| snap.pools[0].pick(client, &request(k)).unwrap().key.name.to_string())
            .collect();
        let s = shares(&picks);
        let line: Vec<String> =
            (0..3).map(|i| format!("{}", s.get(&format!("app{i}")).unwrap_or(&0))).collect();
        eprintln!("{strategy:12} weights {weights:?}: 70000 picks -> {}", line.join(" / "));
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let want = 70_000.0 * f64::from(*w) / f64::from(total);
            let got = *s.get(&format!("app{i}")).unwrap_or(&0) as f64;
            assert!((got - want).abs() <= want * 0.03, "{strategy}: app{i} got {got}, want {want}");
        }
    }
}
