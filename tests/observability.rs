//! Metrics, status, health endpoints, access logs and request ids, against a real lb process.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;

async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    get(&client(), &format!("http://{admin}{path}")).await
}

/// `name{a="1",b="2"} value` lines -> value by (name, sorted labels).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

fn toml(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        r#"[[listeners]]
addr = "127.0.0.1:0"
[pools.web]
servers = [{{ name = "a", addr = "{a}" }}, {{ name = "b", addr = "{b}" }}, {{ name = "drained", addr = "{b}", weight = 0 }}]
[[routes]]
host = "web.test"
pool = "web"
{extra}
"#
    )
}

async fn send(lb: SocketAddr, host: &str, path: &str, request_id: Option<&str>) -> http::Response<Bytes> {
    let mut req = Request::get(format!("http://{lb}{path}")).header("host", host);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = client().request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// `promtool check metrics` on `text` (required in CI through `LB_REQUIRE_PROMTOOL`).
fn promtool_check(text: &str) {
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => {
            assert!(
                std::env::var_os("LB_REQUIRE_PROMTOOL").is_none(),
                "promtool required but not runnable: {e}"
            );
            eprintln!("promtool not installed: skipped the format check (apt-get install prometheus)");
        }
    }
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly_and_pass_promtool() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&toml(a.addr, b.addr, ""));
    // 12 = a whole number of round-robin cycles over the two ready servers (the drained one is
    // skipped), so the split is exact.
    for _ in 0..12 {
        assert_eq!(send(lb.addr, "web.test", "/", None).await.status(), StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(send(lb.addr, "other.test", "/", None).await.status(), StatusCode::NOT_FOUND);
    }
    let (status, text) = admin_get(lb.admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let m = parse_metrics(&text);
    let get = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get(r#"lb_requests_total{class="2xx",pool="web",server="a"}"#), 6.0);
    assert_eq!(get(r#"lb_requests_total{class="2xx",pool="web",server="b"}"#), 6.0);
    assert_eq!(get(r#"lb_requests_total{class="4xx",pool="none",server="none"}"#), 3.0);
    assert_eq!(get(r#"lb_request_duration_seconds_count{pool="web"}"#), 12.0);
    assert_eq!(get(r#"lb_upstream_response_seconds_count{pool="web",server="a"}"#), 6.0);
    assert_eq!(get(r#"lb_sent_bytes_total{pool="web"}"#), 12.0, "each answer is one byte");
    assert_eq!(get(r#"lb_upstream_in_flight{pool="web",server="a"}"#), 0.0);
    assert_eq!(get(r#"lb_upstream_ready{pool="web",server="a"}"#), 1.0);
    assert_eq!(get(r#"lb_upstream_ready{pool="web",server="drained"}"#), 0.0);
    assert_eq!(get("lb_config_generation"), 1.0);
    assert_eq!(get("lb_request_buffer_bytes"), 0.0, "no upload in progress holds a buffer");
    let pooled = get(&format!(r#"lb_upstream_connections{{addr="{}"}}"#, a.addr));
    assert!(
        (1.0..=2.0).contains(&pooled),
        "sequential requests reuse one or two pooled connections: {pooled}"
    );
    let listener = format!(r#"{{listener="{}"}}"#, lb.addr);
    assert_eq!(
        get(&format!("lb_connections_total{listener}")),
        15.0,
        "one connection per request (new client each)"
    );
    // Clients closed their connections; lb notices each FIN asynchronously.
    let admin = lb.admin;
    eventually(std::time::Duration::from_secs(5), || {
        let key = format!("lb_open_connections{listener}");
        async move { parse_metrics(&admin_get(admin, "/metrics").await.1).get(&key) == Some(&0.0) }
    })
    .await;
    assert!(text.contains("# HELP lb_requests_total"), "metrics are described");

    promtool_check(&text);
}

/// A reload that removes a server removes its series (and those of its address) at the next scrape;
/// the servers that stay keep theirs, and the exposition stays valid.
#[tokio::test]
async fn series_of_a_removed_server_disappear_after_the_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let two = |servers: &str| {
        format!("[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{servers}]\n[pools.old]\nservers = [{{ name = \"x\", addr = \"{}\" }}]\n[[routes]]\nhost = \"old.test\"\npool = \"old\"\n[[routes]]\npool = \"web\"\n", a.addr)
    };
    let both =
        format!("{{ name = \"a\", addr = \"{}\" }}, {{ name = \"b\", addr = \"{}\" }}", a.addr, b.addr);
    let lb = LbProcess::start(&two(&both));
    for _ in 0..4 {
        assert_eq!(send(lb.addr, "any.test", "/", None).await.status(), StatusCode::OK);
    }
    let (_, before) = admin_get(lb.admin, "/metrics").await;
    assert!(before.contains(r#"server="b""#), "{before}");
    assert!(before.contains(&format!(r#"addr="{}""#, b.addr)), "{before}");
    assert!(before.contains(r#"pool="old""#), "{before}");

    // b and the pool `old` go away.
    let only_a = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{{ name = \"a\", addr = \"{}\" }}]\n",
        a.addr
    );
    lb.replace_config(&only_a);
    let admin = lb.admin;
    eventually(std::time::Duration::from_secs(10), || async move {
        parse_metrics(&admin_get(admin, "/metrics").await.1).get("lb_config_generation") == Some(&2.0)
    })
    .await;
    let (_, after) = admin_get(lb.admin, "/metrics").await;
    assert!(!after.contains(r#"server="b""#), "{after}");
    assert!(!after.contains(&format!(r#"addr="{}""#, b.addr)), "{after}");
    assert!(!after.contains(r#"pool="old""#), "{after}");
    let m = parse_metrics(&after);
    assert_eq!(m.get(r#"lb_requests_total{class="2xx",pool="web",server="a"}"#), Some(&2.0), "{after}");
    assert_eq!(m.get(r#"lb_upstream_ready{pool="web",server="a"}"#), Some(&1.0), "{after}");
    promtool_check(&after);
}

#[tokio::test]
async fn status_and_health_endpoints() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&toml(a.addr, b.addr, ""));
    let (status, body) = admin_get(lb.admin, "/status").await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["generation"], 1);
    let servers = doc["pools"][0]["servers"].as_array().unwrap();
    let ready: Vec<(String, bool)> = servers
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["ready"].as_bool().unwrap()))
        .collect();
    assert_eq!(ready, vec![("a".into(), true), ("b".into(), true), ("drained".into(), false)]);
    // Large configs: counts instead of server lists, and one pool at a time.
    let summary: serde_json::Value =
        serde_json::from_str(&admin_get(lb.admin, "/status?summary").await.1).unwrap();
    assert_eq!((&summary["pools"][0]["servers"], &summary["pools"][0]["ready"]), (&3.into(), &2.into()));
    assert_eq!(summary["config"]["generation"], 1);
    let one: serde_json::Value =
        serde_json::from_str(&admin_get(lb.admin, "/status?pool=web").await.1).unwrap();
    assert_eq!(one["pools"].as_array().unwrap().len(), 1);
    let none: serde_json::Value =
        serde_json::from_str(&admin_get(lb.admin, "/status?pool=nope&summary").await.1).unwrap();
    assert!(none["pools"].as_array().unwrap().is_empty());
    assert_eq!(admin_get(lb.admin, "/healthz").await.0, StatusCode::OK);
    assert_eq!(admin_get(lb.admin, "/readyz").await.0, StatusCode::OK);
    assert_eq!(admin_get(lb.admin, "/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_ids_are_passed_on_and_access_log_lines_are_json() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut lb = LbProcess::start(&toml(a.addr, b.addr, "[log]\naccess = \"json\""));
    let given = send(lb.addr, "web.test", "/given?q=1", Some("client-id-42")).await;
    assert_eq!(given.headers()["x-request-id"], "client-id-42");
    let fresh = send(lb.addr, "web.test", "/fresh", None).await;
    let id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(b.last_head().headers["x-request-id"], id.as_str(), "the upstream sees the same id");
    let missing = send(lb.addr, "other.test", "/x", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.headers().contains_key("x-request-id"), "errors carry an id too");

    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        lb.stdout.read_line(&mut line).unwrap();
        lines.push(
            serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")),
        );
    }
    let first = &lines[0];
    assert_eq!(
        (first["method"].as_str(), first["path"].as_str(), first["status"].as_u64()),
        (Some("GET"), Some("/given?q=1"), Some(200))
    );
    assert_eq!((first["bytes"].as_u64(), first["server"].as_str()), (Some(1), Some("web/a")));
    assert_eq!(
        (first["request_id"].as_str(), first["host"].as_str()),
        (Some("client-id-42"), Some("web.test"))
    );
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert_eq!(lines[1]["request_id"].as_str(), Some(id.as_str()));
    assert_eq!((lines[2]["status"].as_u64(), lines[2]["server"].as_str()), (Some(404), Some("-")));
}

#[tokio::test]
async fn text_access_log_reads_like_the_combined_format() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut lb = LbProcess::start(&toml(a.addr, b.addr, "[log]\naccess = \"text\""));
    let req = Request::get(format!("http://{}/page", lb.addr))
        .header("host", "web.test")
        .header("user-agent", "curl/8")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client().request(req).await.unwrap().into_body().collect().await.unwrap();
    let mut line = String::new();
    lb.stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /page HTTP/1.1\" 200 1 \"-\" \"curl/8\" rt="), "{line}");
    assert!(line.contains(" server=web/a host=web.test rid="), "{line}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut lb = LbProcess::start(&toml(a.addr, b.addr, "[log]\naccess = \"json\""));
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: web.test\r\n\r\n").await.unwrap();
    wait_in_progress(&a, 1).await;
    drop(s);
    let mut line = String::new();
    lb.stdout.read_line(&mut line).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!((entry["status"].as_u64(), entry["server"].as_str()), (Some(499), Some("web/a")), "{line}");
    let m = parse_metrics(&admin_get(lb.admin, "/metrics").await.1);
    assert_eq!(m.get(r#"lb_requests_total{class="4xx",pool="web",server="a"}"#), Some(&1.0));
}
