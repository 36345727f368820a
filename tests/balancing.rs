//! Strategies end to end: real upstreams, lb in-process or as processes, real HTTP.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn pool_toml(strategy: &str, extra: &str, servers: &[(&str, std::net::SocketAddr, u32)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(n, a, w)| format!("{{ name = \"{n}\", addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nstrategy = \"{strategy}\"\n{extra}\nservers = [{}]\n",
        list.join(", ")
    )
}

/// Starts `holders` requests that stick on the slow backend, and waits until it holds at least one.
async fn hold_slow_requests(lb: &Lb, slow: &Backend, holders: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let tasks = (0..holders)
        .map(|_| {
            let url = lb.url("/");
            tokio::spawn(async move {
                let _ = get(&client(), &url).await;
            })
        })
        .collect();
    let seen = slow.seen.clone();
    eventually(Duration::from_secs(5), || {
        let seen = seen.clone();
        async move { seen.in_progress.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    tasks
}

async fn count_answers(lb: &Lb, n: usize) -> HashMap<String, usize> {
    let client = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (_, body) = get(&client, &lb.url("/")).await;
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn least_conn_sends_new_requests_away_from_a_server_holding_slow_ones() {
    let slow = Backend::start_with_delay("slow", Duration::from_secs(3)).await;
    let fast = Backend::start("fast").await;
    let lb = Lb::start(&pool_toml("least_conn", "", &[("slow", slow.addr, 1), ("fast", fast.addr, 1)])).await;
    let _holders = hold_slow_requests(&lb, &slow, 2).await;
    let counts = count_answers(&lb, 40).await;
    assert_eq!(counts.get("fast"), Some(&40), "{counts:?}");
    assert!(slow.seen.in_progress.load(Ordering::SeqCst) <= 2, "only the holders reached the slow server");
}

#[tokio::test]
async fn p2c_statistically_avoids_a_busy_server() {
    let slow = Backend::start_with_delay("slow", Duration::from_secs(3)).await;
    let (b, c) = (Backend::start("b").await, Backend::start("c").await);
    let servers = [("slow", slow.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)];
    let lb = Lb::start(&pool_toml("p2c", "seed = 11", &servers)).await;
    let _holders = hold_slow_requests(&lb, &slow, 3).await;
    let counts = count_answers(&lb, 90).await;
    // The busy server only wins a draw against another busy one; b and c are idle between requests.
    assert_eq!(counts.get("slow"), None, "{counts:?}");
    assert!(counts["b"] >= 25 && counts["c"] >= 25, "both idle servers share the load: {counts:?}");
}

#[tokio::test]
async fn weighted_gives_exact_interleaved_shares() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let lb =
        Lb::start(&pool_toml("weighted", "", &[("a", a.addr, 5), ("b", b.addr, 1), ("c", c.addr, 1)])).await;
    let client = client();
    let mut seq = String::new();
    for _ in 0..70 {
        seq.push_str(&get(&client, &lb.url("/")).await.1);
    }
    assert_eq!(&seq[..7], "aabacaa", "nginx's smooth order");
    assert_eq!((a.requests(), b.requests(), c.requests()), (50, 10, 10));
}

#[tokio::test]
async fn consistent_hash_on_a_header_agrees_across_two_lb_processes() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr, 1)).collect();
    let toml = pool_toml("consistent_hash", "hash_key = \"header:X-User\"", &servers);
    let (one, two) = (LbProcess::start(&toml), LbProcess::start(&toml));
    let client = client();
    let ask = |addr: std::net::SocketAddr, user: String| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{addr}/"))
                .header("x-user", user)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let body = client.request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    let mut spread = HashMap::new();
    for i in 0..60 {
        let user = format!("user-{i}");
        let first = ask(one.addr, user.clone()).await;
        assert_eq!(ask(one.addr, user.clone()).await, first, "{user}: same instance, same server");
        assert_eq!(ask(two.addr, user.clone()).await, first, "{user}: other instance, same server");
        *spread.entry(first).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 3, "keys spread over every server: {spread:?}");
}

/// Backup servers (`backup = true`) get no requests while another server of the pool is healthy;
/// they take over when none is, and give the traffic back as soon as one is healthy again.
#[tokio::test]
async fn backup_servers_take_over_only_while_no_other_server_is_healthy() {
    use lb::control::{AdminState, Change};
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    // The backup is listed between the others: its place in the list does not matter.
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{{ name = \"a\", addr = \"{}\" }}, \
         {{ name = \"c\", addr = \"{}\", backup = true }}, {{ name = \"b\", addr = \"{}\" }}]\n",
        a.addr, c.addr, b.addr
    );
    let lb = Lb::start(&toml).await;
    let state = |server: &str, state| {
        lb.runtime.set_override("web", server, Change { state: Some(state), weight: None }).unwrap();
    };
    let counts = count_answers(&lb, 20).await;
    assert_eq!((counts.get("a"), counts.get("b"), counts.get("c")), (Some(&10), Some(&10), None));

    state("a", AdminState::Maint);
    assert_eq!(
        count_answers(&lb, 6).await,
        HashMap::from([("b".to_owned(), 6)]),
        "one healthy server is enough"
    );
    state("b", AdminState::Maint);
    assert_eq!(count_answers(&lb, 6).await, HashMap::from([("c".to_owned(), 6)]), "no other is healthy");
    state("a", AdminState::Ready);
    assert_eq!(count_answers(&lb, 6).await, HashMap::from([("a".to_owned(), 6)]), "a is back");
}

/// A request whose primary servers all fail is retried on a backup (as nginx's `backup` is), so a
/// dead primary costs no failed request even before passive checks eject it.
#[tokio::test]
async fn a_request_that_fails_on_every_primary_is_retried_on_a_backup() {
    let dead = closed_port().await;
    let c = Backend::start("c").await;
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{{ name = \"a\", addr = \"{dead}\" }}, \
         {{ name = \"c\", addr = \"{}\", backup = true }}]\n",
        c.addr
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    for i in 0..8 {
        let (status, body) = get(&client, &lb.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "c"), "request {i}");
    }
}
