//! Edge policy on real sockets: the client's address from PROXY protocol headers (our own bytes,
//! curl's `--haproxy-protocol`, and Debian's HAProxy with `send-proxy` and `send-proxy-v2`) and from
//! trusted forwarded headers; per-route access lists, header rules, redirects, prefix rewrites and
//! basic auth, as the upstream and the client see them.

mod common;

use common::{config_with, eventually, Backend, Lb, LbProcess};
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// GET `path` on `lb` with extra headers; answers the response (body collected).
async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<String> {
    common::request(addr, "GET", path, headers).await
}

/// What the backend saw as `x-client` (a header rule renders `${client_addr}` into it).
fn seen_client(b: &Backend) -> String {
    b.last_head().headers["x-client"].to_str().unwrap().to_owned()
}

const CLIENT_HEADER: &str = "request_headers = { set = { \"X-Client\" = \"${client_addr}\" } }";

/// A connection from `source` (a 127.0.0.0/8 address, all of which are local) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `bytes` and reads until lb closes (bounded); the whole answer as text.
async fn exchange(mut s: TcpStream, bytes: &[u8]) -> String {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn proxy_listener(from: &str) -> String {
    format!("[[listeners]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_protocol_from = [{from}]\n")
}

fn pool_and_route(b: &Backend, route_extra: &str) -> String {
    format!(
        "[pools.web]\nservers = [{{ addr = \"{}\" }}]\n[[routes]]\npool = \"web\"\n{route_extra}\n",
        b.addr
    )
}

#[tokio::test]
async fn a_proxy_header_names_the_client_and_only_trusted_peers_may_send_one() {
    let b = Backend::start("b").await;
    let lb =
        Lb::start(&format!("{}{}", proxy_listener("\"127.0.0.2/32\""), pool_and_route(&b, CLIENT_HEADER)))
            .await;

    // v1 from the trusted balancer: the upstream sees the client the header names.
    let mut bytes = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n".to_vec();
    bytes.extend_from_slice(GET_CLOSE);
    let answer = exchange(connect_from("127.0.0.2", lb.addr).await, &bytes).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(seen_client(&b), "198.51.100.7");
    assert_eq!(b.last_head().headers["x-forwarded-for"], "198.51.100.7");

    // v2, with the request in the same write.
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:5000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:80".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let answer = exchange(connect_from("127.0.0.2", lb.addr).await, &[&header[..], GET_CLOSE].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(seen_client(&b), "2001:db8::9");

    let served = b.requests();
    // The same header from a peer outside proxy_protocol_from: closed without an answer.
    let answer = exchange(connect_from("127.0.0.1", lb.addr).await, &bytes).await;
    assert_eq!(answer, "", "a spoofed header from an untrusted peer is refused");
    // A trusted peer that sends no header, or garbage: closed too.
    assert_eq!(exchange(connect_from("127.0.0.2", lb.addr).await, GET_CLOSE).await, "");
    assert_eq!(exchange(connect_from("127.0.0.2", lb.addr).await, b"PROXY TCP4 nonsense\r\n\r\n").await, "");
    assert_eq!(b.requests(), served, "nothing refused reached the upstream");
}

#[tokio::test]
async fn a_trusted_peer_that_sends_no_header_in_time_is_closed() {
    let b = Backend::start("b").await;
    let toml = format!(
        "{}[timeouts]\nclient_header = \"200ms\"\n{}",
        proxy_listener("\"127.0.0.0/8\""),
        pool_and_route(&b, "")
    );
    let lb = Lb::start(&toml).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut out = Vec::new();
    // lb closes it after the header timeout; the read ends then (bounded here by 10 s).
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
}

#[tokio::test]
async fn the_proxy_header_comes_before_tls() {
    let pki = common::pki::Pki::new("edge");
    let cert = pki.issue("site", &["site.test"]);
    let b = Backend::start("b").await;
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\n\
         [listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n{}",
        cert.cert.display(),
        cert.key.display(),
        pool_and_route(&b, CLIENT_HEADER)
    );
    let lb = Lb::start(&toml).await;
    let mut tcp = TcpStream::connect(lb.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.50 10.0.0.1 1234 443\r\n").await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&["http/1.1"], None));
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(seen_client(&b), "203.0.113.50");
    assert_eq!(b.last_head().headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn curl_haproxy_protocol_is_understood() {
    let b = Backend::start("b").await;
    let lb =
        Lb::start(&format!("{}{}", proxy_listener("\"127.0.0.0/8\""), pool_and_route(&b, CLIENT_HEADER)))
            .await;
    let url = lb.url("/");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--haproxy-protocol",
                "--interface",
                "127.0.0.3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(&url)
            .output()
    })
    .await
    .unwrap()
    .expect("curl (Debian's curl package) runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(seen_client(&b), "127.0.0.3", "curl's header names its own source address");
}

/// HAProxy (Debian's `haproxy`) in front of lb, started and stopped by the test.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// HAProxy listening on a free port and sending to `lb` with `send` (`send-proxy` or
    /// `send-proxy-v2`); `None` where haproxy is not installed (and not required).
    async fn start(lb: SocketAddr, send: &str) -> Option<Self> {
        let addr = common::closed_port().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  \
                 timeout server 10s\nfrontend fe\n  bind {addr}\n  default_backend be\nbackend be\n  \
                 server lb {lb} {send}\n"
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new("haproxy");
        command.args(["-db", "-f"]).arg(&cfg).stdout(std::process::Stdio::null());
        let child = common::spawn_tool(&mut command, "LB_REQUIRE_HAPROXY", "haproxy")?;
        let proxy = Self { child, addr, _dir: dir };
        // Ready once it accepts.
        eventually(Duration::from_secs(10), || async move { TcpStream::connect(addr).await.is_ok() }).await;
        Some(proxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2_reach_lb_with_the_real_client() {
    let b = Backend::start("b").await;
    let lb =
        Lb::start(&format!("{}{}", proxy_listener("\"127.0.0.1/32\""), pool_and_route(&b, CLIENT_HEADER)))
            .await;
    for send in ["send-proxy", "send-proxy-v2"] {
        let Some(haproxy) = Haproxy::start(lb.addr, send).await else { return };
        // The client connects to HAProxy from 127.0.0.4; HAProxy reaches lb from 127.0.0.1.
        let answer = exchange(connect_from("127.0.0.4", haproxy.addr).await, GET_CLOSE).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{send}: {answer}");
        assert_eq!(seen_client(&b), "127.0.0.4", "{send}");
    }
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let b = Backend::start("b").await;
    let route = format!("[[routes]]\npool = \"web\"\n{CLIENT_HEADER}\n");
    // Loopback is trusted: the rightmost untrusted hop is the client.
    let trusted = Lb::start(&config_with(
        &[("b", b.addr)],
        &format!("{route}[client_address]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n"),
    ))
    .await;
    send(trusted.addr, "/", &[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]).await;
    assert_eq!(seen_client(&b), "203.0.113.9");
    // lb appends the hop it saw, so the upstream can walk the chain too.
    assert_eq!(b.last_head().headers["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 10.0.0.2, 127.0.0.1");

    // Only 10/8 is trusted: the loopback peer's header is a forgery and is ignored.
    let untrusted = Lb::start(&config_with(
        &[("b", b.addr)],
        &format!("{route}[client_address]\ntrusted_proxies = [\"10.0.0.0/8\"]\n"),
    ))
    .await;
    send(untrusted.addr, "/", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(seen_client(&b), "127.0.0.1");

    let forwarded = Lb::start(&config_with(
        &[("b", b.addr)],
        &format!("{route}[client_address]\ntrusted_proxies = [\"127.0.0.0/8\"]\nheader = \"forwarded\"\n"),
    ))
    .await;
    send(forwarded.addr, "/", &[("forwarded", "for=\"[2001:db8::5]:443\";proto=https")]).await;
    assert_eq!(seen_client(&b), "2001:db8::5");
}

#[tokio::test]
async fn the_real_client_address_drives_hashing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nstrategy = \"consistent_hash\"\nhash_key = \"client_ip\"\n\
         servers = [{{ name = \"a\", addr = \"{}\" }}, {{ name = \"b\", addr = \"{}\" }}]\n\
         [client_address]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        a.addr, b.addr
    );
    let lb = Lb::start(&toml).await;
    let mut placed = std::collections::HashMap::new();
    for i in 0..40 {
        let client = format!("198.51.100.{i}");
        let first = send(lb.addr, "/", &[("x-forwarded-for", &client)]).await.into_body();
        let again = send(lb.addr, "/", &[("x-forwarded-for", &client)]).await.into_body();
        assert_eq!(first, again, "one client, one server");
        *placed.entry(first).or_insert(0) += 1;
    }
    // From one peer address, 40 clients still spread over both servers.
    assert_eq!(placed.len(), 2, "{placed:?}");
}

#[tokio::test]
async fn the_real_client_address_reaches_the_access_log() {
    let b = Backend::start("b").await;
    let mut lb = LbProcess::start(&format!(
        "{}[log]\naccess = \"json\"\n[client_address]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        config_with(&[("b", b.addr)], "")
    ));
    send(lb.addr, "/", &[("x-forwarded-for", "192.0.2.33")]).await;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lb.stdout, &mut line).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(doc["client"].as_str(), Some("192.0.2.33:0"), "{line}");
}

#[tokio::test]
async fn access_lists_deny_first_then_allow() {
    let b = Backend::start("b").await;
    let toml = config_with(
        &[("b", b.addr)],
        "[[routes]]\npool = \"web\"\nallow = [\"203.0.113.0/24\"]\ndeny = [\"203.0.113.66\"]\n\
         [client_address]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let lb = Lb::start(&toml).await;
    let status =
        |ip: &'static str| async move { send(lb.addr, "/", &[("x-forwarded-for", ip)]).await.status() };
    assert_eq!(status("203.0.113.5").await, StatusCode::OK);
    assert_eq!(status("203.0.113.66").await, StatusCode::FORBIDDEN, "deny wins");
    assert_eq!(status("198.51.100.1").await, StatusCode::FORBIDDEN, "not in the allow list");
    assert_eq!(b.requests(), 1);
    // A refused request keeps its connection (it was well-formed).
    let resp = send(lb.addr, "/", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert!(resp.headers().get("connection").is_none(), "{:?}", resp.headers());
}

#[tokio::test]
async fn header_rules_reach_the_upstream_and_the_client() {
    let b = Backend::start("b").await;
    let toml = config_with(
        &[("b", b.addr)],
        "[[routes]]\npool = \"web\"\n\
         request_headers = { set = { \"X-Env\" = \"prod\", \"X-Who\" = \"${client_addr} via ${scheme}://${host} (${request_id})\" }, \
         add = { \"X-Tag\" = \"lb\" }, remove = [\"X-Debug\"] }\n\
         response_headers = { set = { \"X-Frame-Options\" = \"DENY\" }, add = { \"X-Served-By\" = \"lb\" }, remove = [\"X-Powered-By\"] }\n\
         [[routes]]\npath_prefix = \"/plain\"\npool = \"web\"\n",
    );
    let lb = Lb::start(&toml).await;
    let resp = send(
        lb.addr,
        "/",
        &[
            ("host", "site.test"),
            ("x-env", "dev"),
            ("x-tag", "client"),
            ("x-debug", "1"),
            ("x-request-id", "rid-7"),
        ],
    )
    .await;
    let head = b.last_head();
    assert_eq!(head.headers["x-env"], "prod", "set replaces");
    assert_eq!(head.headers.get_all("x-tag").iter().collect::<Vec<_>>(), ["client", "lb"], "add appends");
    assert!(head.headers.get("x-debug").is_none(), "remove removes");
    assert_eq!(head.headers["x-who"], "127.0.0.1 via http://site.test (rid-7)");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["x-served-by"], "lb");
    assert!(resp.headers().get("x-powered-by").is_none(), "removed from the response");
    assert_eq!(resp.status(), StatusCode::OK);
    let plain = send(lb.addr, "/plain", &[("x-debug", "1")]).await;
    assert_eq!(plain.headers()["x-powered-by"], "backend", "another route keeps it");
    assert!(plain.headers().get("x-frame-options").is_none());
    assert_eq!(b.last_head().headers["x-debug"], "1");
}

#[tokio::test]
async fn redirects_are_answered_by_lb_and_keep_the_query() {
    let b = Backend::start("b").await;
    let toml = config_with(
        &[("b", b.addr)],
        "[[routes]]\npath_prefix = \"/old\"\nredirect = { to = \"https://new.example\", status = 301 }\n\
         [[routes]]\npath_prefix = \"/home\"\nredirect = { to = \"/start\", status = 308, keep_path = false }\n\
         [[routes]]\npool = \"web\"\n",
    );
    let lb = Lb::start(&toml).await;
    let moved = send(lb.addr, "/old/page?x=1&y=2", &[]).await;
    assert_eq!(moved.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.headers()["location"], "https://new.example/old/page?x=1&y=2");
    let replaced = send(lb.addr, "/home/a?lang=en", &[]).await;
    assert_eq!(replaced.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(replaced.headers()["location"], "/start?lang=en");
    assert_eq!(b.requests(), 0, "redirects never reach a server");
    assert_eq!(send(lb.addr, "/other", &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn prefix_rewrites_change_what_the_upstream_sees() {
    let b = Backend::start("b").await;
    let toml = config_with(
        &[("b", b.addr)],
        "[[routes]]\npath_prefix = \"/api/v1\"\npool = \"web\"\nprefix_rewrite = \"/\"\n\
         [[routes]]\npath_prefix = \"/legacy\"\npool = \"web\"\nprefix_rewrite = \"/v2\"\n",
    );
    let lb = Lb::start(&toml).await;
    send(lb.addr, "/api/v1/x/y?q=1", &[]).await;
    assert_eq!(b.last_head().uri, "/x/y?q=1");
    send(lb.addr, "/api/v1", &[]).await;
    assert_eq!(b.last_head().uri, "/");
    send(lb.addr, "/legacy/items", &[]).await;
    assert_eq!(b.last_head().uri, "/v2/items");
}

/// An htpasswd file (in a directory removed when dropped) with one user: alice, password
/// "wonderland".
fn alice_htpasswd() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, format!("alice:{}\n", bcrypt::hash("wonderland", 4).unwrap())).unwrap();
    (dir, file)
}

/// An `Authorization: Basic` value for `user:password`.
fn basic(creds: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(creds))
}

#[tokio::test]
async fn basic_auth_lets_in_the_right_password_only() {
    let b = Backend::start("b").await;
    let (_dir, file) = alice_htpasswd();
    let toml = config_with(
        &[("b", b.addr)],
        &format!(
            "[[routes]]\npath_prefix = \"/admin\"\npool = \"web\"\nauth = {{ htpasswd = \"{0}\", realm = \"ops\" }}\n\
             [[routes]]\npath_prefix = \"/fwd\"\npool = \"web\"\nauth = {{ htpasswd = \"{0}\", forward = true }}\n\
             [[routes]]\npool = \"web\"\n",
            file.display()
        ),
    );
    let lb = Lb::start(&toml).await;

    let ok = send(lb.addr, "/admin", &[("authorization", &basic("alice:wonderland"))]).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(b.last_head().headers.get("authorization").is_none(), "not forwarded by default");
    for (what, header) in [
        ("wrong password", Some(basic("alice:nope"))),
        ("unknown user", Some(basic("mallory:wonderland"))),
        ("malformed header", Some("Basic %%%".to_owned())),
        ("another scheme", Some("Bearer abc".to_owned())),
        ("no header", None),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        let refused = send(lb.addr, "/admin", &headers).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(refused.headers()["www-authenticate"], "Basic realm=\"ops\", charset=\"UTF-8\"", "{what}");
    }
    assert_eq!(b.requests(), 1, "refused requests never reach a server");
    // A disguised path is the same route: no way around the credentials.
    for disguised in ["/%61dmin", "//admin", "/x/../admin", "/ADMIN/../admin/./"] {
        assert_eq!(send(lb.addr, disguised, &[]).await.status(), StatusCode::UNAUTHORIZED, "{disguised}");
    }
    let ok = send(lb.addr, "/%61dmin//x", &[("authorization", &basic("alice:wonderland"))]).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(b.last_head().uri, "/admin/x", "the server gets the path lb routed");
    send(lb.addr, "/fwd", &[("authorization", &basic("alice:wonderland"))]).await;
    assert_eq!(b.last_head().headers["authorization"], basic("alice:wonderland").as_str(), "forward = true");
    assert_eq!(send(lb.addr, "/open", &[]).await.status(), StatusCode::OK, "other routes are open");
}

/// Rate limits count a request before its credentials are checked, as nginx's `limit_req` runs
/// before `auth_basic`: past the rule's burst, guesses are refused with 429 without a bcrypt check,
/// and a rule can count by the `Authorization` header even when the route does not forward it.
#[tokio::test]
async fn password_guesses_are_rate_limited_before_their_check() {
    let b = Backend::start("b").await;
    let (_dir, file) = alice_htpasswd();
    let toml = config_with(
        &[("b", b.addr)],
        &format!(
            "[[rate_limits]]\nname = \"logins\"\nrate = \"1/m\"\nburst = 3\n\
             [[rate_limits]]\nname = \"per-user\"\nrate = \"1/m\"\nburst = 2\nkey = \"header:Authorization\"\n\
             [[routes]]\npath_prefix = \"/admin\"\npool = \"web\"\nrate_limits = [\"logins\"]\n\
             auth = {{ htpasswd = \"{0}\" }}\n\
             [[routes]]\npath_prefix = \"/api\"\npool = \"web\"\nrate_limits = [\"per-user\"]\n\
             auth = {{ htpasswd = \"{0}\" }}\n\
             [[routes]]\npool = \"web\"\n",
            file.display()
        ),
    );
    let lb = Lb::start(&toml).await;
    let wrong = basic("alice:guess");
    for i in 0..3 {
        let refused = send(lb.addr, "/admin", &[("authorization", &wrong)]).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "guess {i} is within the burst");
    }
    let limited = send(lb.addr, "/admin", &[("authorization", &wrong)]).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS, "the fourth guess is not checked");
    assert!(limited.headers().contains_key("retry-after"));
    let right = send(lb.addr, "/admin", &[("authorization", &basic("alice:wonderland"))]).await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS, "the rule counts the client, as nginx's does");
    assert_eq!(b.requests(), 0);

    // Counted by the credentials sent, which the route then takes out before forwarding.
    let alice = basic("alice:wonderland");
    for _ in 0..2 {
        assert_eq!(send(lb.addr, "/api", &[("authorization", &alice)]).await.status(), StatusCode::OK);
    }
    assert!(b.last_head().headers.get("authorization").is_none(), "not forwarded");
    let over = send(lb.addr, "/api", &[("authorization", &alice)]).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS, "alice's third request");
    let other = send(lb.addr, "/api", &[("authorization", &wrong)]).await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED, "other credentials have a bucket of their own");
    assert_eq!(b.requests(), 2);
}

/// Whether lb closes `s` within a few seconds without answering: what a refused connection sees.
/// (A connection lb serves stays open far longer: `timeouts.client_header` is 10 s.)
async fn closed_at_once(mut s: TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// A keep-alive connection from `source` that got one answer, so lb has surely counted it.
async fn served_from(source: &str, to: SocketAddr, proxy_header: &[u8]) -> TcpStream {
    try_served_from(source, to, proxy_header).await.expect("a connection lb serves")
}

/// As [`served_from`], or `None` if lb closed the connection instead.
async fn try_served_from(source: &str, to: SocketAddr, proxy_header: &[u8]) -> Option<TcpStream> {
    let mut s = connect_from(source, to).await;
    s.write_all(&[proxy_header, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat()).await.ok()?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).await.ok()?;
    assert_eq!(&status, b"HTTP/1.1 200");
    Some(s)
}

/// `limits.max_connections_per_client`: past it, a client's new connections are closed at once and
/// counted in `lb_connections_refused_total`; other clients are served; a closed connection frees
/// its place; a reload's new limit applies to new connections.
#[tokio::test]
async fn connections_per_client_are_limited() {
    let b = Backend::start("b").await;
    let config = |limit: usize| {
        format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n{}[limits]\nmax_connections_per_client = {limit}\n",
            pool_and_route(&b, "")
        )
    };
    let lb = LbProcess::start(&config(2));
    let mut held =
        vec![served_from("127.0.0.3", lb.addr, b"").await, served_from("127.0.0.3", lb.addr, b"").await];
    assert!(closed_at_once(connect_from("127.0.0.3", lb.addr).await).await, "a third connection");
    let other = exchange(connect_from("127.0.0.4", lb.addr).await, GET_CLOSE).await;
    assert!(other.starts_with("HTTP/1.1 200"), "another client is served: {other}");
    let series = format!("lb_connections_refused_total{{listener=\"{}\",reason=\"per_client\"}}", lb.addr);
    assert_eq!(lb.metric(&series).await, Some(1.0));

    // Once lb has seen one of them close, the client may open another.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Some(s) = try_served_from("127.0.0.3", lb.addr, b"").await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place freed by the closed connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    held.push(again);
    assert!(closed_at_once(connect_from("127.0.0.3", lb.addr).await).await, "two open again");

    // A reload raises the limit: a third connection is served beside the two open ones.
    let addr = lb.addr;
    lb.replace_config(&config(3));
    eventually(Duration::from_secs(10), || async move {
        exchange(connect_from("127.0.0.3", addr).await, GET_CLOSE).await.starts_with("HTTP/1.1 200")
    })
    .await;
    drop(held);
}

/// Behind a PROXY protocol peer, each client the header names counts for itself; the peer does not.
#[tokio::test]
async fn connections_per_client_count_the_client_a_proxy_header_names() {
    let b = Backend::start("b").await;
    let toml = format!(
        "{}{}[limits]\nmax_connections_per_client = 1\n",
        proxy_listener("\"127.0.0.2/32\""),
        pool_and_route(&b, "")
    );
    let lb = Lb::start(&toml).await;
    let one = b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 80\r\n";
    let two = b"PROXY TCP4 198.51.100.2 10.0.0.1 40000 80\r\n";
    let _first = served_from("127.0.0.2", lb.addr, one).await;
    let _second = served_from("127.0.0.2", lb.addr, two).await;
    let mut again = connect_from("127.0.0.2", lb.addr).await;
    again.write_all(&[&one[..], GET_CLOSE].concat()).await.unwrap();
    assert!(closed_at_once(again).await, "198.51.100.1's second connection");
    assert_eq!(b.requests(), 2);
}

#[test]
fn bad_edge_settings_are_config_errors_naming_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let md5 = dir.path().join("md5");
    std::fs::write(&md5, "bob:$apr1$x$y\n").unwrap();
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [[listeners]]\naddr = \"127.0.0.1:1\"\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.1/8\"]\n\
         [pools.web]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\
         [[routes]]\npool = \"web\"\nallow = [\"not-an-ip\"]\n\
         request_headers = {{ set = {{ \"Bad Name\" = \"x\", \"X-T\" = \"${{nope}}\", \"Transfer-Encoding\" = \"gzip\" }} }}\n\
         auth = {{ htpasswd = \"{}\" }}\n\
         [[routes]]\npath_prefix = \"/a\"\nauth = {{ htpasswd = \"/nonexistent/users\" }}\npool = \"web\"\n\
         [[routes]]\npath_prefix = \"/r\"\nredirect = {{ to = \"ftp://x\", status = 200 }}\n\
         [[routes]]\nhost = \"h.test\"\npool = \"web\"\nprefix_rewrite = \"/x\"\n\
         [client_address]\ntrusted_proxies = [\"300.0.0.0/8\"]\nheader = \"x-real-ip\"\n",
        md5.display()
    );
    let err = lb::config::Config::from_toml(&toml).unwrap_err().to_string();
    for expected in [
        "listeners[0].proxy_protocol_from: required with proxy_protocol = true",
        "listeners[1].proxy_protocol_from[0]: \"10.0.0.1/8\" has bits set after /8",
        "routes[0].allow[0]: \"not-an-ip\" is not an address",
        "routes[0].request_headers.set.Bad Name: \"Bad Name\" is not a valid header name",
        "routes[0].request_headers.set.X-T: \"${nope}\": unknown variable ${nope}",
        "routes[0].request_headers.set.Transfer-Encoding: \"Transfer-Encoding\" frames the message",
        "routes[0].auth.htpasswd:",
        "line 1: user \"bob\" has no bcrypt hash",
        "routes[1].auth.htpasswd: cannot read /nonexistent/users",
        "routes[2].redirect.status: 200: expected 301, 302, 303, 307 or 308",
        "routes[3].prefix_rewrite: only used with path_prefix",
        "client_address.trusted_proxies[0]: \"300.0.0.0/8\" is not an address",
        "client_address.header: expected \"x-forwarded-for\" or \"forwarded\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
