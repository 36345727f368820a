//! Runtime control on the admin listener, against the `lb` binary with real upstreams:
//! `POST /pools/{pool}/servers/{name}` (drain, maint, weight), overrides across reloads and in
//! `/status`, metrics and `lb check --diff`, and the admin safety rules (token, Host, Origin, JSON).

mod common;

use bytes::Bytes;
use common::{client, eventually, get, Backend, LbProcess};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "test-token-0123456789";

fn config(servers: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(n, a, w)| format!("{{ name = \"{n}\", addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// Which backend answered each of `n` GETs of `path`, counted by name.
async fn answers(lb: &LbProcess, path: &str, n: usize) -> BTreeMap<String, usize> {
    let c = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = get(&c, &format!("http://{}{path}", lb.addr)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// A request to the admin listener with exactly the given headers (plus Host, unless given).
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into()))
}

fn server<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["pools"][0]["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[tokio::test]
async fn drain_moves_new_traffic_away_while_a_request_in_flight_finishes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], ""));
    // A slow request in flight on one of them: that one is drained.
    let slow_url = format!("http://{}/slow?ms=5000", lb.addr);
    let slow = tokio::spawn(async move { get(&client(), &slow_url).await });
    eventually(Duration::from_secs(10), || async {
        a.seen.in_progress.load(std::sync::atomic::Ordering::SeqCst)
            + b.seen.in_progress.load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    let (busy, other) =
        if a.seen.in_progress.load(std::sync::atomic::Ordering::SeqCst) == 1 { (&a, &b) } else { (&b, &a) };

    let (status, answer) =
        lb.admin_post(&format!("/pools/web/servers/{}", busy.name), r#"{"state":"drain"}"#).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["state"].as_str(), answer["override"]["state"].as_str()),
        (Some("drain"), Some("drain"))
    );
    let st = lb.status().await;
    let drained = server(&st, &busy.name);
    assert_eq!((drained["state"].as_str(), drained["in_flight"].as_u64()), (Some("drain"), Some(1)), "{st}");

    assert_eq!(
        answers(&lb, "/", 20).await,
        counts(&[(&other.name, 20)]),
        "new requests avoid the drained server"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, busy.name.as_str()),
        "the request in flight finished"
    );
    assert_eq!(server(&lb.status().await, &busy.name)["in_flight"], 0);

    let (status, _) =
        lb.admin_post(&format!("/pools/web/servers/{}", busy.name), r#"{"state":"ready"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answers(&lb, "/", 20).await, counts(&[("a", 10), ("b", 10)]), "back in rotation");
    assert!(server(&lb.status().await, &busy.name)["override"].is_null(), "ready clears the override");
}

#[tokio::test]
async fn maint_stops_all_traffic_while_drain_keeps_sticky_sessions_and_checks_keep_running() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let extra =
        "sticky = { cookie = \"lb_web\" }\n[pools.web.health]\npath = \"/health\"\ninterval = \"100ms\"\n\
                 [sticky]\nsecret = \"0123456789abcdef0123\"\n";
    let lb = LbProcess::start(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], extra));
    let url = format!("http://{}/", lb.addr);
    // A session bound to a.
    let c = client();
    let cookie = loop {
        let resp = c.get(url.parse().unwrap()).await.unwrap();
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        if resp.into_body().collect().await.unwrap().to_bytes() == "a" {
            break cookie;
        }
    };
    let with_cookie = || async {
        let req = Request::get(&url).header("cookie", &cookie).body(Full::new(Bytes::new())).unwrap();
        let resp = client().request(req).await.unwrap();
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };

    lb.admin_post("/pools/web/servers/a", r#"{"state":"drain"}"#).await;
    assert_eq!(with_cookie().await, "a", "drain keeps the sessions bound to the server");
    assert_eq!(answers(&lb, "/", 10).await, counts(&[("b", 10)]), "new sessions go elsewhere");

    let (status, answer) = lb.admin_post("/pools/web/servers/a", r#"{"state":"maint"}"#).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("maint")));
    let before = a.seen.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(with_cookie().await, "b", "maint moves even bound sessions");
    assert_eq!(answers(&lb, "/", 10).await, counts(&[("b", 10)]));
    assert_eq!(a.seen.requests.load(std::sync::atomic::Ordering::SeqCst), before, "no request reached a");
    let probes = a.seen.probes.load(std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(10), || async {
        a.seen.probes.load(std::sync::atomic::Ordering::SeqCst) > probes + 1
    })
    .await;
    let st = lb.status().await;
    let a_status = server(&st, "a");
    assert_eq!(
        (a_status["state"].as_str(), a_status["health"].as_str()),
        (Some("maint"), Some("up")),
        "{st}"
    );
    assert_eq!(a_status["last_check"], "pass", "health checks keep running in maint");
    assert_eq!(lb.metric("lb_upstream_admin_state{pool=\"web\",server=\"a\"}").await, Some(2.0));
    assert_eq!(lb.metric("lb_upstream_override{pool=\"web\",server=\"a\"}").await, Some(1.0));
    assert_eq!(lb.metric("lb_upstream_ready{pool=\"web\",server=\"a\"}").await, Some(0.0));
}

#[tokio::test]
async fn a_weight_override_changes_shares_until_cleared() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], "strategy = \"weighted\"\n"));
    assert_eq!(answers(&lb, "/", 20).await, counts(&[("a", 10), ("b", 10)]));
    let (status, answer) = lb.admin_post("/pools/web/servers/a", r#"{"weight":3}"#).await;
    assert_eq!((status, answer["weight"].as_u64()), (StatusCode::OK, Some(3)), "{answer}");
    // Smooth weighted round robin is exact over whole cycles (4 requests here).
    assert_eq!(answers(&lb, "/", 40).await, counts(&[("a", 30), ("b", 10)]));
    let st = lb.status().await;
    assert_eq!(
        (server(&st, "a")["weight"].as_u64(), server(&st, "a")["configured_weight"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(lb.metric("lb_upstream_weight{pool=\"web\",server=\"a\"}").await, Some(3.0));

    let (status, answer) = lb.admin_post("/pools/web/servers/a", r#"{"weight":null}"#).await;
    assert_eq!((status, answer["weight"].as_u64()), (StatusCode::OK, Some(1)), "{answer}");
    assert!(answer["override"].is_null(), "{answer}");
    assert_eq!(answers(&lb, "/", 20).await, counts(&[("a", 10), ("b", 10)]));
}

#[tokio::test]
async fn overrides_survive_a_reload_and_show_in_lb_check_diff() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], "strategy = \"weighted\"\n"));
    lb.admin_post("/pools/web/servers/a", r#"{"state":"drain"}"#).await;
    lb.admin_post("/pools/web/servers/b", r#"{"weight":4}"#).await;

    let next = config(&[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)], "strategy = \"weighted\"\n");
    // `lb check --diff` asks the running lb, which knows its overrides.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), common::with_test_admin(&next)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args([
            "check",
            "--config",
            file.path().to_str().unwrap(),
            "--diff",
            "--admin",
            &lb.admin.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("+ server c"), "{stdout}");
    assert!(stdout.contains("pools.web: server \"a\": runtime override in force: state drain"), "{stdout}");
    assert!(
        stdout.contains("pools.web: server \"b\": runtime override in force: weight 4 (configured 1)"),
        "{stdout}"
    );

    lb.replace_config(&next);
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let st = lb.status().await;
    assert_eq!(server(&st, "a")["state"], "drain", "{st}");
    assert_eq!(server(&st, "b")["weight"], 4, "{st}");
    // a gets none; b about four times c (a's turns in the cycle pass to the next entry).
    let got = answers(&lb, "/", 60).await;
    assert!(!got.contains_key("a") && got["b"] >= 3 * got["c"], "{got:?}");

    // A reload that removes a server drops its override; re-adding it starts clean.
    lb.replace_config(&config(&[("b", b.addr, 1), ("c", c.addr, 1)], "strategy = \"weighted\"\n"));
    assert_eq!(lb.admin_post("/reload", "").await.0, StatusCode::OK);
    lb.replace_config(&next);
    assert_eq!(lb.admin_post("/reload", "").await.0, StatusCode::OK);
    let st = lb.status().await;
    assert_eq!(
        (server(&st, "a")["state"].as_str(), server(&st, "a")["override"].is_null()),
        (Some("up"), true)
    );
}

#[tokio::test]
async fn bad_bodies_and_unknown_names_are_refused_with_the_reason() {
    let a = Backend::start("a").await;
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], ""));
    for (body, expect) in [
        ("{}", "set \"state\""),
        (r#"{"state":"off"}"#, "\"off\" is not one of"),
        (r#"{"weight":-2}"#, "out of range"),
        (r#"{"weight":5000}"#, "out of range"),
        ("drain", "invalid body"),
        (r#"{"state":"drain","colour":"red"}"#, "unknown field"),
    ] {
        let (status, answer) = lb.admin_post("/pools/web/servers/a", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(expect), "{body}: {answer}");
    }
    let (status, answer) = lb.admin_post("/pools/nope/servers/a", r#"{"state":"drain"}"#).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::NOT_FOUND, Some("no pool named \"nope\"")));
    let (status, answer) = lb.admin_post("/pools/web/servers/zz", r#"{"state":"drain"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no server named \"zz\""), "{answer}");
    let huge = format!("{{\"state\":\"drain\",\"pad\":\"{}\"}}", "x".repeat(8192));
    assert_eq!(lb.admin_post("/pools/web/servers/a", &huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = admin(lb.admin, "GET", "/pools/web/servers/a", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(server(&lb.status().await, "a")["state"], "up", "nothing was applied");
}

#[tokio::test]
async fn mutating_requests_need_the_token_a_json_type_the_admin_host_and_no_foreign_origin() {
    let a = Backend::start("a").await;
    let extra = format!("[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], &extra));
    let bearer = format!("Bearer {TOKEN}");
    let host = lb.admin.to_string();
    let good = [("content-type", "application/json"), ("authorization", bearer.as_str())];
    let drain = r#"{"state":"drain"}"#;
    for path in ["/pools/web/servers/a", "/reload"] {
        let body = if path == "/reload" { "" } else { drain };
        let (status, answer) = admin(lb.admin, "POST", path, &good[..1], body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token: {answer}");
        let wrong = [good[0], ("authorization", "Bearer not-the-token-at-all")];
        assert_eq!(admin(lb.admin, "POST", path, &wrong, body).await.0, StatusCode::UNAUTHORIZED, "{path}");
        let (status, answer) = admin(lb.admin, "POST", path, &good[1..], body).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} without JSON: {answer}");
        let form = [("content-type", "application/x-www-form-urlencoded"), good[1]];
        assert_eq!(admin(lb.admin, "POST", path, &form, body).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let evil = [good[0], good[1], ("origin", "http://evil.example")];
        let (status, answer) = admin(lb.admin, "POST", path, &evil, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} cross-site: {answer}");
        let rebound = [good[0], good[1], ("host", "evil.example")];
        let (status, answer) = admin(lb.admin, "POST", path, &rebound, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} rebinding: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("does not name the admin address"), "{answer}");
    }
    assert_eq!(server(&lb.status().await, "a")["state"], "up", "nothing refused was applied");
    let origin = format!("http://{host}");
    let same_site = [good[0], good[1], ("origin", origin.as_str())];
    let (status, answer) = admin(lb.admin, "POST", "/pools/web/servers/a", &same_site, drain).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("drain")), "{answer}");
    let localhost = format!("localhost:{}", lb.admin.port());
    let by_name = [good[0], good[1], ("host", localhost.as_str())];
    assert_eq!(admin(lb.admin, "POST", "/reload", &by_name, "").await.0, StatusCode::OK);
    // Reading needs no token.
    assert_eq!(admin(lb.admin, "GET", "/status", &[], "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn lb_refuses_to_start_with_an_open_admin_address_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lb.toml");
    std::fs::write(
        &file,
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\n[admin]\naddr = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("admin.token: required when admin.addr (0.0.0.0:0) is not a loopback address"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_console_page_and_its_assets_are_served_with_a_strict_policy() {
    let a = Backend::start("a").await;
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], ""));
    for (path, kind) in [("/", "text/html"), ("/console.css", "text/css"), ("/console.js", "text/javascript")]
    {
        let resp = client().get(format!("http://{}{path}", lb.admin).parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    let (_, page) = get(&client(), &format!("http://{}/", lb.admin)).await;
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing is loaded from elsewhere");
    // The figures the page differences are in /status.
    let st = lb.status().await;
    let a = server(&st, "a");
    assert!(
        a["traffic"]["latency"].as_array().unwrap().len()
            == st["latency_bounds_ms"].as_array().unwrap().len() + 1
    );
    assert!(st["now_unix_ms"].as_u64().unwrap() > 0 && a["last_check"] == "none", "{st}");
}
