//! Rate limiting on real sockets: 429s with their fields, what a rule matches and counts by, buckets
//! kept across a reload, and buckets shared in a real `redis-server` (Debian's package, started on a
//! free port by each test) by two lb processes, including Redis stopped, killed and restarted.

mod common;

use common::redis::Redis;
use common::{config_with, eventually, Backend, Lb, LbProcess};
use http::StatusCode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<String> {
    common::request(addr, method, path, headers).await
}

async fn status(addr: SocketAddr, path: &str) -> StatusCode {
    send(addr, "GET", path, &[]).await.status()
}

fn header<'a>(resp: &'a http::Response<String>, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_fields() {
    let b = Backend::start("b").await;
    let lb = Lb::start(&config_with(
        &[("b", b.addr)],
        "[[rate_limits]]\nname = \"api\"\nrate = \"1/m\"\nburst = 3\n\
         [[rate_limits]]\nname = \"old\"\nrate = 2\nburst = 1\npath_prefix = \"/old\"\nheaders = \"legacy\"\n",
    ))
    .await;
    for left in [2, 1, 0] {
        let ok = send(lb.addr, "GET", "/", &[]).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(header(&ok, "ratelimit-policy"), "\"api\";q=1;w=60");
        assert!(header(&ok, "ratelimit").starts_with(&format!("\"api\";r={left};t=")), "{:?}", ok.headers());
    }
    let refused = send(lb.addr, "GET", "/", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((59..=60).contains(&retry), "at 1/m the next one is allowed a minute after the burst: {retry}");
    assert_eq!(header(&refused, "ratelimit"), format!("\"api\";r=0;t={retry}"));
    assert_eq!(b.requests(), 3, "a refused request never reaches a server");
    // The legacy fields, on a rule of its own.
    let lb2 = Lb::start(&config_with(
        &[("b", b.addr)],
        "[[rate_limits]]\nname = \"old\"\nrate = 2\nburst = 1\npath_prefix = \"/old\"\nheaders = \"legacy\"\n",
    ))
    .await;
    let ok = send(lb2.addr, "GET", "/old/x", &[]).await;
    assert_eq!((header(&ok, "x-ratelimit-limit"), header(&ok, "x-ratelimit-remaining")), ("2", "0"));
    assert!(ok.headers().get("ratelimit").is_none());
    let refused = send(lb2.addr, "GET", "/old/x", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(status(lb2.addr, "/other").await, StatusCode::OK, "outside the rule's prefix");
}

#[tokio::test]
async fn rules_match_methods_routes_and_count_by_their_key() {
    let b = Backend::start("b").await;
    let lb = Lb::start(&config_with(
        &[("b", b.addr)],
        "[[rate_limits]]\nname = \"writes\"\nrate = \"1/m\"\nburst = 1\nmethods = [\"POST\"]\n\
         [[rate_limits]]\nname = \"keys\"\nrate = \"1/m\"\nburst = 1\nkey = \"header:X-Api-Key\"\n\
         [[rate_limits]]\nname = \"search\"\nrate = \"1/m\"\nburst = 2\nkey = \"route\"\n\
         [[routes]]\npath_prefix = \"/search\"\npool = \"web\"\nrate_limits = [\"search\"]\n\
         [[routes]]\npool = \"web\"\n",
    ))
    .await;
    // Only POSTs count in "writes".
    assert_eq!(send(lb.addr, "POST", "/w", &[]).await.status(), StatusCode::OK);
    assert_eq!(send(lb.addr, "POST", "/w", &[]).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(lb.addr, "GET", "/w", &[]).await.status(), StatusCode::OK);
    // One bucket per API key; a request without the key is not counted by that rule.
    for key in ["k1", "k2"] {
        assert_eq!(send(lb.addr, "GET", "/k", &[("x-api-key", key)]).await.status(), StatusCode::OK);
        assert_eq!(
            send(lb.addr, "GET", "/k", &[("x-api-key", key)]).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(send(lb.addr, "GET", "/k", &[]).await.status(), StatusCode::OK);
    // "search" applies on the route that names it, to all its requests together.
    assert_eq!(status(lb.addr, "/search?q=a").await, StatusCode::OK);
    assert_eq!(status(lb.addr, "/search?q=b").await, StatusCode::OK);
    let third = send(lb.addr, "GET", "/search?q=c", &[("x-forwarded-for", "192.0.2.1")]).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status(lb.addr, "/elsewhere").await, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_keeps_the_buckets_of_unchanged_rules() {
    let b = Backend::start("b").await;
    let rule = |rate: &str, connect: &str| {
        config_with(
            &[("b", b.addr)],
            &format!("[timeouts]\nconnect = \"{connect}\"\n[[rate_limits]]\nname = \"api\"\nrate = \"{rate}\"\nburst = 1\n"),
        )
    };
    let lb = Lb::start(&rule("1/m", "5s")).await;
    assert_eq!(status(lb.addr, "/").await, StatusCode::OK);
    assert_eq!(status(lb.addr, "/").await, StatusCode::TOO_MANY_REQUESTS);
    lb.runtime.apply(lb::config::Config::from_toml(&rule("1/m", "3s")).unwrap());
    assert_eq!(
        status(lb.addr, "/").await,
        StatusCode::TOO_MANY_REQUESTS,
        "an unrelated edit keeps the bucket"
    );
    lb.runtime.apply(lb::config::Config::from_toml(&rule("2/m", "3s")).unwrap());
    assert_eq!(status(lb.addr, "/").await, StatusCode::OK, "a new rate starts afresh");
}

#[tokio::test]
async fn the_rule_name_reaches_the_access_log_and_metrics() {
    let b = Backend::start("b").await;
    let mut lb = LbProcess::start(&format!(
        "{}[log]\naccess = \"json\"\n",
        config_with(&[("b", b.addr)], "[[rate_limits]]\nname = \"api\"\nrate = \"1/m\"\nburst = 1\n")
    ));
    assert_eq!(status(lb.addr, "/").await, StatusCode::OK);
    assert_eq!(status(lb.addr, "/").await, StatusCode::TOO_MANY_REQUESTS);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut lb.stdout, &mut line).unwrap();
        lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    assert!(lines[0].get("rate_limit").is_none());
    assert_eq!((lines[1]["status"].as_u64(), lines[1]["rate_limit"].as_str()), (Some(429), Some("api")));
    let series = |result: &str| format!("lb_rate_limit_decisions_total{{rule=\"api\",result=\"{result}\"}}");
    assert_eq!(lb.metric(&series("allowed")).await, Some(1.0));
    assert_eq!(lb.metric(&series("limited")).await, Some(1.0));
    let status = lb.status().await;
    assert_eq!(status["rate_limits"][0]["name"], "api");
    assert_eq!(status["rate_limits"][0]["local_keys"], 1);
}

fn redis_rules(redis: SocketAddr, b: &Backend, rules: &str) -> String {
    config_with(
        &[("b", b.addr)],
        &format!("[redis]\nnodes = [\"{redis}\"]\ntimeout = \"100ms\"\nbreaker = \"200ms\"\n{rules}"),
    )
}

#[tokio::test]
async fn two_lb_processes_share_one_limit_in_redis() {
    let Some(redis) = Redis::start().await else { return };
    let b = Backend::start("b").await;
    let toml = redis_rules(
        redis.addr,
        &b,
        "[[rate_limits]]\nname = \"fleet\"\nrate = \"1/m\"\nburst = 4\nstore = \"redis\"\n",
    );
    let (one, two) = (LbProcess::start(&toml), LbProcess::start(&toml));
    let start = Instant::now();
    let mut allowed = 0;
    for i in 0..12 {
        let lb = if i % 2 == 0 { &one } else { &two };
        if status(lb.addr, "/").await == StatusCode::OK {
            allowed += 1;
        }
    }
    // The limit plus the burst in the time taken: 4, and one more per started minute.
    let bound = 4 + start.elapsed().as_secs() / 60;
    assert!((4..=bound).contains(&allowed), "{allowed} allowed by two instances, bound {bound}");
    assert_eq!(b.requests() as u64, allowed);
}

#[tokio::test]
async fn without_redis_each_mode_does_what_it_says_and_waits_no_longer_than_the_timeout() {
    let Some(redis) = Redis::start().await else { return };
    let b = Backend::start("b").await;
    let toml = redis_rules(
        redis.addr,
        &b,
        "[[rate_limits]]\nname = \"open\"\nrate = \"1/m\"\nburst = 1\nstore = \"redis\"\non_redis_error = \"allow\"\npath_prefix = \"/allow\"\n\
         [[rate_limits]]\nname = \"closed\"\nrate = \"1/m\"\nburst = 1\nstore = \"redis\"\non_redis_error = \"deny\"\npath_prefix = \"/deny\"\n\
         [[rate_limits]]\nname = \"fallback\"\nrate = \"1/m\"\nburst = 2\nstore = \"redis\"\non_redis_error = \"local\"\npath_prefix = \"/local\"\n",
    );
    let lb = LbProcess::start(&toml);
    assert_eq!(status(lb.addr, "/deny").await, StatusCode::OK, "Redis answers: the first is allowed");

    // Each check is bounded by the rule's 100 ms timeout (the breaker then skips Redis at once);
    // 2 s is a bound for a loaded machine, not a measurement.
    let check = |path: &'static str, expect: StatusCode| {
        let addr = lb.addr;
        async move {
            let t = Instant::now();
            let got = status(addr, path).await;
            assert_eq!(got, expect, "{path}");
            assert!(t.elapsed() < Duration::from_secs(2), "{path} took {:?}", t.elapsed());
        }
    };
    for (what, signal) in [("stopped", Some(nix::sys::signal::Signal::SIGSTOP)), ("killed", None)] {
        match signal {
            Some(s) => redis.signal(s),
            None => {
                redis.signal(nix::sys::signal::Signal::SIGCONT);
                redis.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        eprintln!("redis {what}");
        for _ in 0..3 {
            check("/allow", StatusCode::OK).await;
            check("/deny", StatusCode::TOO_MANY_REQUESTS).await;
        }
    }
    // The local fallback counts with this instance's own bucket (burst 2), from the first failure on.
    check("/local", StatusCode::OK).await;
    check("/local", StatusCode::OK).await;
    check("/local", StatusCode::TOO_MANY_REQUESTS).await;
    let errors = lb.metric("lb_rate_limit_redis_errors_total{rule=\"closed\",reason=\"breaker\"}").await;
    assert!(errors.unwrap_or(0.0) >= 1.0, "the breaker skipped Redis: {errors:?}");

    // Redis back on the same port: decisions resume (a fresh Redis has an empty bucket for /deny).
    drop(redis);
    let _back = Redis::start_on(lb_redis_addr(&toml)).await.unwrap();
    let addr = lb.addr;
    eventually(Duration::from_secs(20), || async move { status(addr, "/deny").await == StatusCode::OK })
        .await;
    assert_eq!(status(lb.addr, "/deny").await, StatusCode::TOO_MANY_REQUESTS, "counted in Redis again");
}

/// The Redis address a config names.
fn lb_redis_addr(toml: &str) -> SocketAddr {
    let start = toml.find("nodes = [\"").unwrap() + 10;
    toml[start..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn bad_rules_are_config_errors_naming_their_key() {
    let toml = "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
        [[rate_limits]]\nname = \"a\"\nrate = \"0/s\"\n\
        [[rate_limits]]\nname = \"b\"\nrate = \"5/s\"\nkey = \"ip_address\"\n\
        [[rate_limits]]\nname = \"c\"\nrate = \"5/fortnight\"\nstore = \"redis\"\n\
        [[rate_limits]]\nrate = 3\n\
        [[routes]]\npool = \"web\"\nrate_limits = [\"nope\"]\n\
        [redis]\nnodes = [\"redis://127.0.0.1:6379\", \"127.0.0.1\"]\ntimeout = \"0s\"\n";
    let err = lb::config::Config::from_toml(toml).unwrap_err().to_string();
    for expected in [
        "rate_limits[0].rate: \"0/s\": the rate must be at least 1",
        "rate_limits[1].key: unknown key \"ip_address\"",
        "rate_limits[2].rate: \"5/fortnight\": the unit must be s, m, h or d",
        "rate_limits[3].name: is required",
        "routes[0].rate_limits[0]: no [[rate_limits]] rule is named \"nope\"",
        "redis.nodes[0]: \"redis://127.0.0.1:6379\" must be \"host:port\"",
        "redis.nodes[1]:",
        "redis.timeout: must be greater than zero",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let no_redis =
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
        [[rate_limits]]\nname = \"a\"\nrate = \"5/s\"\nstore = \"redis\"\n";
    let err = lb::config::Config::from_toml(no_redis).unwrap_err().to_string();
    assert!(err.contains("rate_limits[0].store: \"redis\" needs a [redis] section"), "{err}");
}
