//! Sticky sessions with a client that keeps a cookie jar, over real sockets.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;

const SECRET: &str = "test-secret-0123456789abcdef";

/// A client with a one-cookie jar for lb's cookie, which also always sends an app cookie.
struct Browser {
    client: Client,
    jar: Option<String>,
}

struct Answer {
    status: StatusCode,
    server: String,
    set_cookie: Option<String>,
}

impl Browser {
    fn new() -> Self {
        Self { client: client(), jar: None }
    }

    async fn get(&mut self, addr: SocketAddr) -> Answer {
        let cookie = match &self.jar {
            Some(c) => format!("theme=dark; {c}; cart=42"),
            None => "theme=dark; cart=42".to_owned(),
        };
        let req = Request::get(format!("http://{addr}/"))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let set_cookie = resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
        if let Some(sc) = &set_cookie {
            // The jar keeps "name=value", as a browser would.
            self.jar = Some(sc.split(';').next().unwrap().to_owned());
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer { status, server: String::from_utf8_lossy(&body).into_owned(), set_cookie }
    }
}

fn sticky_toml(servers: &[(&str, SocketAddr)], strategy: &str) -> String {
    let list: Vec<String> =
        servers.iter().map(|(n, a)| format!("{{ name = \"{n}\", addr = \"{a}\" }}")).collect();
    format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[limits]
upstream_idle_per_server = 0
[sticky]
secret = "{SECRET}"
[pools.web]
strategy = "{strategy}"
sticky = {{ cookie = "lb_web", max_age = "1h" }}
servers = [{}]
"#,
        list.join(", ")
    )
}

#[tokio::test]
async fn a_session_stays_on_one_server_then_moves_once_when_it_stops() {
    let mut backends = vec![Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let lb = Lb::start(&sticky_toml(&servers, "round_robin")).await;
    let mut browser = Browser::new();
    let first = browser.get(lb.addr).await;
    let home = first.server.clone();
    let cookie = first.set_cookie.expect("first answer sets the cookie");
    assert!(cookie.starts_with("lb_web=") && cookie.contains("Max-Age=3600") && cookie.contains("HttpOnly"));
    for b in &backends {
        assert!(
            !cookie.contains(&b.addr.to_string()) && !cookie.contains(&format!("={}", b.name)),
            "{cookie}"
        );
    }
    for _ in 0..49 {
        let a = browser.get(lb.addr).await;
        assert_eq!((a.status, a.server.as_str(), a.set_cookie), (StatusCode::OK, home.as_str(), None));
    }
    // The upstream never sees lb's cookie; the app's cookies pass untouched.
    let home_backend = backends.iter().find(|b| b.name == home).unwrap();
    assert_eq!(home_backend.requests(), 50);
    assert_eq!(home_backend.last_head().headers["cookie"], "theme=dark; cart=42");

    // The home server stops: the next request lands elsewhere with a new cookie, and stays there.
    backends.retain(|b| b.name != home);
    let moved = browser.get(lb.addr).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(moved.server, home);
    assert!(moved.set_cookie.is_some(), "the session moved: a fresh cookie");
    for _ in 0..10 {
        let a = browser.get(lb.addr).await;
        assert_eq!((a.server.as_str(), a.set_cookie), (moved.server.as_str(), None));
    }
}

#[tokio::test]
async fn tampered_foreign_and_garbage_cookies_are_ignored() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = Lb::start(&sticky_toml(&[("a", a.addr), ("b", b.addr)], "round_robin")).await;
    let mut browser = Browser::new();
    let good = browser.get(lb.addr).await.set_cookie.unwrap();
    let value = good.split(';').next().unwrap().trim_start_matches("lb_web=").to_owned();
    let mut flipped = value.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let foreign = {
        let other = Lb::start(
            &sticky_toml(&[("a", a.addr), ("b", b.addr)], "round_robin")
                .replace(SECRET, "another-secret-9876543210"),
        )
        .await;
        let mut other_browser = Browser::new();
        other_browser.get(other.addr).await.set_cookie.unwrap().split(';').next().unwrap().to_owned()
    };
    for jar in [
        format!("lb_web={}", String::from_utf8(flipped).unwrap()),
        foreign,
        "lb_web=garbage;;==".to_owned(),
        "lb_web=".to_owned(),
    ] {
        let mut browser = Browser { client: client(), jar: Some(jar.clone()) };
        let answer = browser.get(lb.addr).await;
        assert_eq!(answer.status, StatusCode::OK, "{jar}");
        assert!(answer.set_cookie.is_some(), "{jar}: rebalanced with a fresh cookie");
    }
}

#[tokio::test]
async fn two_lb_processes_with_one_secret_honour_each_others_cookies() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let toml = sticky_toml(&servers, "round_robin");
    let (one, two) = (LbProcess::start(&toml), LbProcess::start(&toml));
    for _ in 0..6 {
        let mut browser = Browser::new();
        let home = browser.get(one.addr).await.server;
        for _ in 0..3 {
            let a = browser.get(two.addr).await;
            assert_eq!(
                (a.server.as_str(), a.set_cookie),
                (home.as_str(), None),
                "the other instance honours it"
            );
        }
    }
}

#[tokio::test]
async fn a_config_reload_keeps_sessions_where_they_are() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let lb = Lb::start(&sticky_toml(&servers[..2], "round_robin")).await;
    let mut browsers = Vec::new();
    for _ in 0..4 {
        let mut browser = Browser::new();
        let home = browser.get(lb.addr).await.server;
        browsers.push((browser, home));
    }
    // Reload: a server added, the strategy changed, weights changed.
    let new = sticky_toml(&servers, "least_conn").replace("{ name = ", "{ weight = 3, name = ");
    lb.runtime.apply(lb::config::Config::from_toml(&new).unwrap());
    for (browser, home) in &mut browsers {
        let a = browser.get(lb.addr).await;
        assert_eq!((a.server.as_str(), a.set_cookie), (home.as_str(), None));
    }
}

#[tokio::test]
async fn consistent_hash_pools_fall_back_to_the_ring() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let toml = sticky_toml(&servers, "consistent_hash")
        .replace("[pools.web]\n", "[pools.web]\nhash_key = \"header:x-user\"\n");
    let (one, two) = (Lb::start(&toml).await, Lb::start(&toml).await);
    // Without a cookie, both instances choose by the ring, so they agree, and both set the same cookie.
    let client = client();
    for user in ["ann", "bob", "cy", "dee"] {
        let mut answers = Vec::new();
        for lb in [&one, &two] {
            let req = Request::get(lb.url("/")).header("x-user", user).body(Full::new(Bytes::new())).unwrap();
            let resp = client.request(req).await.unwrap();
            let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            answers.push((body, cookie));
        }
        assert_eq!(answers[0], answers[1], "{user}");
    }
}

#[tokio::test]
async fn http2_clients_and_websocket_upgrades_are_sticky_too() {
    use tokio::io::AsyncWriteExt;
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let servers: Vec<_> = backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let lb = Lb::start(&sticky_toml(&servers, "round_robin")).await;
    let mut h2 = Browser { client: h2_client(), jar: None };
    let home = h2.get(lb.addr).await.server;
    for _ in 0..10 {
        let a = h2.get(lb.addr).await;
        assert_eq!((a.server.as_str(), a.set_cookie), (home.as_str(), None), "HTTP/2");
    }
    // A WebSocket upgrade with that cookie goes home; one without gets its cookie on the 101.
    let cookie = h2.jar.clone().unwrap();
    for (jar, expect_cookie) in [(Some(cookie), false), (None, true)] {
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let cookie_line = jar.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{cookie_line}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert_eq!(head.contains("set-cookie: lb_web="), expect_cookie, "{head}");
        if !expect_cookie {
            let home_backend = backends.iter().find(|b| b.name == home).unwrap();
            assert_eq!(home_backend.last_head().uri.path(), "/ws", "the upgrade went home");
        }
    }
}

#[tokio::test]
async fn no_pool_ever_forwards_any_of_lbs_cookies() {
    let (api, web) = (Backend::start("api").await, Backend::start("web").await);
    let toml = format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[sticky]
secret = "{SECRET}"
[pools.api]
sticky = {{ cookie = "lb_api" }}
servers = [{{ addr = "{}" }}]
[pools.web]
servers = [{{ addr = "{}" }}]
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
pool = "web"
"#,
        api.addr, web.addr
    );
    let lb = Lb::start(&toml).await;
    let client = client();
    let resp = client.get(lb.url("/api/x").parse().unwrap()).await.unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let req = Request::get(lb.url("/home"))
        .header("cookie", format!("theme=dark; {cookie}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
    assert_eq!(web.last_head().headers["cookie"], "theme=dark", "another pool's sticky cookie leaked");
}
