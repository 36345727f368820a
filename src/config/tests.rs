use super::*;

const MINIMAL: &str = r#"
[[listeners]]
addr = "127.0.0.1:8080"

[pools.web]
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", name = "b", weight = 3 }]
"#;

fn issues(src: &str) -> Vec<String> {
    match Config::from_toml(src) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.issues().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_gets_defaults_and_an_implicit_default_route() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.http.upgrades, vec!["websocket"]);
    assert_eq!(c.pools[0].servers[0].name, "127.0.0.1:9001");
    assert_eq!(c.pools[0].servers[0].weight, 1);
    assert_eq!(c.pools[0].servers[1].weight, 3);
    assert_eq!(
        c.routes,
        vec![RouteConfig {
            host: None,
            path_prefix: None,
            pool: 0,
            max_body_size: None,
            policy: None,
            cache: None
        }]
    );
}

#[test]
fn the_shipped_lb_toml_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lb.toml")).unwrap();
    Config::from_toml(&text).unwrap();
}

#[test]
fn unknown_keys_are_all_reported_with_path_and_line() {
    let src = format!("{MINIMAL}\n[timeouts]\nconect = \"1s\"\n\n[pools.api]\nservers = [{{ addr = \"127.0.0.1:1\", wieght = 2 }}]\n");
    let got = issues(&src);
    assert!(got.contains(&"line 9: timeouts.conect: unknown key".to_owned()), "{got:?}");
    assert!(
        got.iter().any(|m| m.starts_with("line 12: pools.api.servers[0].wieght: unknown key")),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("routes: required when more than one pool")), "{got:?}");
}

#[test]
fn bad_values_are_all_reported_at_once() {
    let src = r#"
[[listeners]]
addr = "localhost:80"

[timeouts]
connect = "5"
response = "0s"

[limits]
max_header_bytes = 100

[http]
upgrades = ["websocket", "h2c"]

[pools.web]
strategy = "fastest"
servers = [
  { addr = "http://10.0.0.1:80" },
  { addr = "10.0.0.2" },
  { addr = "10.0.0.3:80", weight = -1 },
  { addr = "10.0.0.3:80" },
]

[[routes]]
path_prefix = "api"
pool = "nope"
"#;
    let got = issues(src);
    let expect = [
        "line 3: listeners[0].addr: \"localhost:80\" is not an IP:port address",
        "line 6: timeouts.connect: \"5\" has no unit",
        "line 7: timeouts.response: must be greater than zero",
        "line 10: limits.max_header_bytes: 100 is out of range 8192..=1048576",
        "line 13: http.upgrades[1]: \"h2c\" is never forwarded",
        "line 16: pools.web.strategy: unknown strategy \"fastest\"",
        "pools.web.servers[0].addr: \"http://10.0.0.1:80\" must be \"host:port\" without scheme",
        "pools.web.servers[1].addr: \"10.0.0.2\" needs a host and a non-zero port",
        "pools.web.servers[2].weight: -1 is out of range 0..=1000",
        "pools.web.servers[3].name: \"10.0.0.3:80\" is used by an earlier server",
        "routes[0].path_prefix: \"api\" must start with '/'",
        "routes[0].pool: unknown pool \"nope\"",
    ];
    for e in expect {
        assert!(got.iter().any(|m| m.contains(e)), "missing {e:?} in {got:#?}");
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn syntax_and_type_errors_name_the_line() {
    let got = issues("[[listeners]]\naddr = \"127.0.0.1:1\"\n[pools.web]\nservers = [{ addr = 5 }]\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("line 4: pools.web.servers[0].addr: "), "{got:?}");
    assert!(got[0].contains("string"), "{got:?}");
    let got = issues("[[listeners]\n");
    assert!(got[0].starts_with("line 1: "), "{got:?}");
}

#[test]
fn missing_sections_are_reported() {
    let got = issues("");
    assert!(got.iter().any(|m| m.contains("listeners: at least one listener")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("pools: at least one pool")), "{got:?}");
}

#[test]
fn routes_are_ordered_most_specific_first() {
    let src = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[pools.a]
[pools.b]
[[routes]]
pool = "a"
[[routes]]
host = "*.example.com"
pool = "b"
[[routes]]
host = "API.example.com"
path_prefix = "/v1/"
pool = "b"
[[routes]]
host = "api.example.com"
pool = "a"
[[routes]]
path_prefix = "/static"
pool = "b"
"#;
    let c = Config::from_toml(src).unwrap();
    let order: Vec<_> = c.routes.iter().map(|r| (r.host.clone(), r.path_prefix.clone())).collect();
    assert_eq!(
        order,
        vec![
            (Some(HostMatch::Exact("api.example.com".into())), Some("/v1".into())),
            (Some(HostMatch::Exact("api.example.com".into())), None),
            (Some(HostMatch::Suffix(".example.com".into())), None),
            (None, Some("/static".into())),
            (None, None),
        ]
    );
}

#[test]
fn duplicate_routes_and_listeners_are_refused() {
    let src = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[[listeners]]
addr = "127.0.0.1:8080"
[pools.a]
[[routes]]
pool = "a"
[[routes]]
pool = "a"
"#;
    let got = issues(src);
    assert!(
        got.iter().any(|m| m.contains("listeners[1].addr: 127.0.0.1:8080 overlaps an earlier listener")),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("routes[1]: matches the same host")), "{got:?}");
}

#[test]
fn strategy_options_are_parsed_and_checked() {
    let src = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[pools.a]
strategy = "consistent_hash"
hash_key = "header:X-User"
hash_fallback = "client_ip"
hash_balance_factor = 1.25
hash_vnodes = 40
[pools.b]
strategy = "p2c"
seed = 7
[[routes]]
pool = "a"
[[routes]]
path_prefix = "/b"
pool = "b"
"#;
    let c = Config::from_toml(src).unwrap();
    let hash = c.pools[0].hash.clone().unwrap();
    assert_eq!(hash.key, HashKey::Header("x-user".parse().unwrap()));
    assert_eq!(hash.fallback, HashFallback::ClientIp);
    assert_eq!(hash.balance_factor, Some(1.25));
    assert_eq!(hash.vnodes, 40);
    assert_eq!(
        (c.pools[1].strategy, c.pools[1].seed, c.pools[1].hash.clone()),
        (StrategyKind::P2c, Some(7), None)
    );
}

#[test]
fn strategy_option_mistakes_are_reported() {
    let src = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[pools.a]
strategy = "consistent_hash"
hash_fallback = "random"
hash_balance_factor = 0.5
hash_vnodes = 0
[pools.b]
strategy = "consistent_hash"
hash_key = "body"
[pools.c]
strategy = "round_robin"
hash_key = "path"
seed = 1
[[routes]]
pool = "a"
"#;
    let got = issues(src);
    let expect = [
        "pools.a.hash_key: strategy \"consistent_hash\" requires it",
        "line 6: pools.a.hash_fallback: unknown fallback \"random\"",
        "line 7: pools.a.hash_balance_factor: 0.5 is out of range 1.0..=100.0",
        "line 8: pools.a.hash_vnodes: 0 is out of range 1..=1000",
        "line 11: pools.b.hash_key: unknown key \"body\"",
        "line 14: pools.c.hash_key: only applies to strategy \"consistent_hash\"",
        "line 15: pools.c.seed: only applies to strategy \"random\" or \"p2c\"",
    ];
    for e in expect {
        assert!(got.iter().any(|m| m.contains(e)), "missing {e:?} in {got:#?}");
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn sticky_options_are_parsed_and_checked() {
    let ok = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[sticky]
secret = "0123456789abcdef0123"
[pools.web]
sticky = { max_age = "2h", same_site = "Strict" }
"#;
    let c = Config::from_toml(ok).unwrap();
    let st = c.pools[0].sticky.clone().unwrap();
    assert_eq!((st.cookie.as_str(), st.path.as_str(), st.max_age), ("lb_web", "/", Some(7200)));
    assert_eq!((st.http_only, st.secure, st.same_site), (true, None, SameSite::Strict));
    assert_eq!(format!("{:?}", c.sticky_secret.unwrap()), "Secret(20 bytes)", "never printed");

    let bad = r#"
[[listeners]]
addr = "127.0.0.1:8080"
[sticky]
secret_file = "/nonexistent/lb-sticky.key"
[pools.web]
sticky = { cookie = "a b", path = "x", max_age = "0s", same_site = "none", colour = "red" }
"#;
    let got = issues(bad);
    let expect = [
        "line 5: sticky.secret_file: cannot read /nonexistent/lb-sticky.key",
        "line 7: pools.web.sticky.cookie: \"a b\" is not a valid cookie name",
        "line 7: pools.web.sticky.path: \"x\" must start with '/'",
        "line 7: pools.web.sticky.max_age: must be at least 1s",
        "line 7: pools.web.sticky.same_site: \"none\" requires secure = true",
        "line 7: pools.web.sticky.colour: unknown key",
    ];
    for e in expect {
        assert!(got.iter().any(|m| m.contains(e)), "missing {e:?} in {got:#?}");
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    let short = issues("[[listeners]]\naddr = \"127.0.0.1:1\"\n[sticky]\nsecret = \"short\"\n[pools.web]\n");
    assert!(short[0].contains("sticky.secret: is 5 bytes; use at least 16"), "{short:?}");
}

#[test]
fn a_secret_file_must_be_a_small_regular_file() {
    for (path, why) in [("/dev/zero", "not a regular file"), ("/tmp", "not a regular file")] {
        let got = issues(&format!(
            "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[sticky]\nsecret_file = \"{path}\"\n[pools.web]\nservers = []\n"
        ));
        assert!(got.iter().any(|m| m.contains(&format!("cannot read {path}: {why}"))), "{got:#?}");
    }
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'k'; 5000]).unwrap();
    let got = issues(&format!(
        "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[sticky]\nsecret_file = \"{}\"\n[pools.web]\nservers = []\n",
        big.path().display()
    ));
    assert!(got.iter().any(|m| m.contains("larger than 4096 bytes")), "{got:#?}");
}

#[test]
fn overlapping_listen_addresses_are_refused() {
    let with = |a: &str, b: &str| {
        format!("[[listeners]]\naddr = \"{a}\"\n[[listeners]]\naddr = \"{b}\"\n[admin]\nenabled = false\n[pools.web]\n")
    };
    for (a, b) in
        [("0.0.0.0:8080", "127.0.0.1:8080"), ("[::]:8080", "127.0.0.1:8080"), ("10.0.0.1:80", "0.0.0.0:80")]
    {
        let got = issues(&with(a, b));
        assert!(
            got.iter().any(|m| m.contains("listeners[1].addr") && m.contains("overlaps")),
            "{a} + {b}: {got:?}"
        );
    }
    for (a, b) in
        [("0.0.0.0:8080", "[::1]:8080"), ("0.0.0.0:8080", "0.0.0.0:8081"), ("127.0.0.1:0", "127.0.0.1:0")]
    {
        Config::from_toml(&with(a, b)).unwrap_or_else(|e| panic!("{a} + {b}: {e}"));
    }
    let admin = issues("[[listeners]]\naddr = \"0.0.0.0:9901\"\n[pools.web]\n");
    assert!(
        admin.iter().any(|m| m.contains("admin.addr: 127.0.0.1:9901 overlaps a proxy listener")),
        "{admin:?}"
    );
}

#[test]
fn health_options_get_defaults_and_are_parsed() {
    let c = Config::from_toml(MINIMAL).unwrap();
    let p = &c.pools[0];
    assert_eq!((p.health.as_ref(), p.passive, p.slow_start), (None, Some(Passive::default()), None));
    assert_eq!((p.retry, p.limits), (Retry::default(), PoolLimits::default()));
    let src = format!(
        "{MINIMAL}slow_start = \"30s\"\n[pools.web.health]\npath = \"/hz\"\nexpect = [\"200\", \"300-302\"]\n\
         rise = 1\ninitial = \"down\"\n[pools.web.passive]\non = [\"5xx\", \"reset\"]\nconsecutive = 2\n\
         [pools.web.retry]\nattempts = 0\n[pools.web.limits]\nmax_requests = 10\nqueue = 0\n"
    );
    let c = Config::from_toml(&src).unwrap();
    let p = &c.pools[0];
    let h = p.health.as_ref().unwrap();
    assert_eq!((h.rise, h.fall, h.start_up, h.interval), (1, 3, false, std::time::Duration::from_secs(2)));
    let CheckKind::Http(http) = &h.kind else { panic!("http check expected") };
    assert_eq!((http.path.as_str(), http.expect.clone()), ("/hz", vec![(200, 200), (300, 302)]));
    assert!(http.accepts(301) && !http.accepts(204));
    let passive = p.passive.unwrap();
    assert_eq!(passive.consecutive, 2);
    assert!(passive.on.status_5xx && passive.on.reset && !passive.on.connect && !passive.on.timeout);
    assert_eq!(p.slow_start, Some(std::time::Duration::from_secs(30)));
    assert_eq!((p.retry.attempts, p.limits.max_requests, p.limits.queue), (0, Some(10), 0));
}

#[test]
fn health_option_mistakes_are_reported_with_their_keys() {
    let src = format!(
        "{MINIMAL}[pools.web.health]\ntype = \"tcp\"\npath = \"/\"\nrise = 0\ninterval = \"0s\"\nbogus = 1\n\
         [pools.web.passive]\non = [\"5xx\", \"teapot\"]\nbase_ejection = \"1m\"\nmax_ejection = \"10s\"\n\
         max_ejected_percent = 101\n[pools.web.limits]\nmax_connections = 0\n"
    );
    let got = issues(&src);
    for expected in [
        "pools.web.health.path: only applies to type = \"http\"",
        "pools.web.health.rise: 0 is out of range 1..=100",
        "pools.web.health.interval: must be greater than zero",
        "pools.web.health.bogus: unknown key",
        "pools.web.passive.on: \"teapot\": expected",
        "pools.web.passive.max_ejection: must not be shorter than base_ejection",
        "pools.web.passive.max_ejected_percent: 101 is out of range 0..=100",
        "pools.web.limits.max_connections: 0 is out of range 1..=1000000",
    ] {
        assert!(got.iter().any(|g| g.contains(expected)), "missing {expected:?} in {got:?}");
    }
    let useless = issues(&format!(
        "{MINIMAL}slow_start = \"5s\"\n[pools.web.passive]\nenabled = false\nconsecutive = 3\n\
         [pools.web.limits]\nqueue = 5\n"
    ));
    for expected in [
        "pools.web.slow_start: has no effect",
        "pools.web.passive.enabled: is false",
        "pools.web.limits.queue: only applies with max_requests or max_connections",
    ] {
        assert!(useless.iter().any(|g| g.contains(expected)), "missing {expected:?} in {useless:?}");
    }
    let expect = issues(&format!("{MINIMAL}[pools.web.health]\nexpect = [\"2xx\", \"300-200\"]\n"));
    assert_eq!(expect.len(), 2, "{expect:?}");
    assert!(expect[0].contains("pools.web.health.expect: \"2xx\""), "{expect:?}");
}

/// A self-signed CA certificate in a PEM file.
fn ca_file(dir: &std::path::Path, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path.display().to_string()
}

#[test]
fn upstream_tls_must_be_verifiable_and_the_same_for_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (ca_file(dir.path(), "a"), ca_file(dir.path(), "b"));
    let src = format!(
        r#"
[[listeners]]
addr = "127.0.0.1:8080"
[pools.one]
servers = [{{ addr = "10.0.0.5:8443" }}, {{ addr = "10.0.0.256:8443" }}]
[pools.one.tls]
ca = "{a}"
[pools.two]
servers = [{{ addr = "10.0.0.5:8443" }}]
[pools.two.tls]
ca = "{b}"
[[routes]]
pool = "one"
"#
    );
    let got = issues(&src);
    assert!(
        got.iter().any(|m| m.contains("pools.one.servers[1].addr: \"10.0.0.256\" cannot be verified")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|m| m.contains("pools.two.tls: 10.0.0.5:8443 is also reached over TLS by pool one")),
        "{got:#?}"
    );
    // The same CA for both: one address, one TLS setting, accepted.
    let same = src.replace(&b, &a).replace(r#", { addr = "10.0.0.256:8443" }"#, "");
    Config::from_toml(&same).unwrap();
}

#[test]
fn unchanged_on_disk_means_the_same_bytes_in_every_file_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path(), "ca");
    let pair = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, key) = pair("one");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let src = format!(
        "[[listeners]]\naddr = \"127.0.0.1:8443\"\n[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\
         [pools.web]\nservers = [{{ addr = \"10.0.0.5:8443\" }}]\n[pools.web.tls]\nca = {ca:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, &src).unwrap();
    let config = Config::load(&path).unwrap();
    assert!(config.unchanged_on_disk(&path));
    std::fs::write(&key_path, &key).unwrap();
    assert!(config.unchanged_on_disk(&path), "rewritten with the same bytes");

    std::fs::write(&path, format!("{src}# edited\n")).unwrap();
    assert!(!config.unchanged_on_disk(&path), "config text");
    std::fs::write(&path, &src).unwrap();
    let (cert2, key2) = pair("two");
    std::fs::write(&cert_path, cert2).unwrap();
    std::fs::write(&key_path, key2).unwrap();
    assert!(!config.unchanged_on_disk(&path), "certificate and key");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    assert!(config.unchanged_on_disk(&path));
    ca_file(dir.path(), "ca");
    assert!(!config.unchanged_on_disk(&path), "CA bundle");
    std::fs::remove_file(&path).unwrap();
    assert!(!config.unchanged_on_disk(&path), "gone");
}

#[test]
fn the_admin_token_is_required_off_loopback_and_checked() {
    let with = |admin: &str| format!("{MINIMAL}\n[admin]\n{admin}\n");
    let open = issues(&with("addr = \"0.0.0.0:9901\""));
    assert!(
        open.iter()
            .any(|m| m.contains("admin.token: required when admin.addr (0.0.0.0:9901) is not a loopback")),
        "{open:?}"
    );
    let c = Config::from_toml(&with("addr = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef\"")).unwrap();
    assert_eq!(c.admin_token, Some(Secret(b"0123456789abcdef".to_vec())));
    assert_eq!(Config::from_toml(MINIMAL).unwrap().admin_token, None, "loopback needs none by default");
    let short = issues(&with("token = \"s3cret\""));
    assert!(short.iter().any(|m| m.contains("admin.token: is 6 bytes; use at least 16")), "{short:?}");
    assert!(!short.iter().any(|m| m.contains("s3cret")), "the token is never echoed: {short:?}");
    let spaced = issues(&with("token = \"0123456789 abcdef\""));
    assert!(spaced.iter().any(|m| m.contains("admin.token: may hold only visible ASCII")), "{spaced:?}");
    let both = issues(&with("token = \"0123456789abcdef\"\ntoken_file = \"/nonexistent\""));
    assert!(both.iter().any(|m| m.contains("set either admin.token or admin.token_file")), "{both:?}");
    let missing = issues(&with("token_file = \"/nonexistent/token\""));
    assert!(
        missing.iter().any(|m| m.contains("admin.token_file: cannot read /nonexistent/token")),
        "{missing:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "abcdefghijklmnopqrstuvwxyz\n").unwrap();
    let c = Config::from_toml(&with(&format!("token_file = \"{}\"", file.display()))).unwrap();
    assert_eq!(c.admin_token, Some(Secret(b"abcdefghijklmnopqrstuvwxyz".to_vec())), "trimmed");
}

#[test]
fn workers_default_to_one_per_core_and_are_bounded() {
    assert_eq!(Config::from_toml(MINIMAL).unwrap().workers, 0);
    assert_eq!(Config::from_toml(&format!("workers = 3\n{MINIMAL}")).unwrap().workers, 3);
    let got = issues(&format!("workers = 5000\n{MINIMAL}"));
    assert!(got.iter().any(|i| i.ends_with("workers: 5000 is out of range 0..=1024")), "{got:?}");
}

#[test]
fn a_pool_may_set_its_own_upstream_timeouts() {
    let config = Config::from_toml(&format!(
        "{MINIMAL}[pools.web.timeouts]\nresponse = \"5m\"\n[timeouts]\nconnect = \"2s\"\n"
    ))
    .unwrap();
    let t = config.pools[0].timeouts;
    assert_eq!((t.connect, t.response), (None, Some(std::time::Duration::from_secs(300))));
    let got = issues(&format!(
        "{MINIMAL}[pools.web.timeouts]\nconnect = \"0s\"\nresponse = \"soon\"\nread = \"1s\"\n"
    ));
    for expected in [
        "pools.web.timeouts.connect: must be greater than zero",
        "pools.web.timeouts.response:",
        "pools.web.timeouts.read: unknown key",
    ] {
        assert!(got.iter().any(|g| g.contains(expected)), "missing {expected:?} in {got:?}");
    }
}

#[test]
fn error_pages_are_read_with_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("503.html");
    std::fs::write(&page, "<h1>Back soon</h1>\n").unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, vec![b'x'; super::MAX_PAGE_BYTES + 1]).unwrap();
    let config =
        Config::from_toml(&format!("{MINIMAL}[error_pages]\n503 = \"{}\"\n", page.display())).unwrap();
    let got = config.error_pages.get(http::StatusCode::SERVICE_UNAVAILABLE).expect("the 503 page");
    assert_eq!(
        (&got.body[..], got.content_type.to_str().unwrap()),
        (&b"<h1>Back soon</h1>\n"[..], "text/html; charset=utf-8")
    );
    assert!(config.read_files().any(|(p, _)| p == page.to_str().unwrap()), "its changes reload");

    let got = issues(&format!(
        "{MINIMAL}[error_pages]\n200 = \"{0}\"\nabc = \"{0}\"\n502 = \"{1}\"\n504 = \"/nonexistent/504.html\"\n500 = \"{2}\"\n",
        page.display(),
        big.display(),
        dir.path().join("page.php").display()
    ));
    for expected in [
        "error_pages.200: \"200\" is not a 4xx or 5xx status",
        "error_pages.abc: \"abc\" is not a 4xx or 5xx status",
        "error_pages.502:",
        "bytes; at most 65536",
        "error_pages.504: cannot read /nonexistent/504.html",
        "error_pages.500:",
        "must end in .html, .json or .txt",
    ] {
        assert!(got.iter().any(|g| g.contains(expected)), "missing {expected:?} in {got:?}");
    }
}

#[test]
fn retry_on_status_takes_4xx_and_5xx_only() {
    let config =
        Config::from_toml(&format!("{MINIMAL}[pools.web.retry]\non_status = [502, 503, 429]\n")).unwrap();
    let on = config.pools[0].retry.on_status;
    assert!(
        on.contains(http::StatusCode::SERVICE_UNAVAILABLE)
            && on.contains(http::StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(!on.contains(http::StatusCode::INTERNAL_SERVER_ERROR) && !on.contains(http::StatusCode::OK));
    assert_eq!(format!("{on:?}"), "[429, 502, 503]");
    let got = issues(&format!("{MINIMAL}[pools.web.retry]\non_status = [200, 600, 503]\n"));
    for expected in ["pools.web.retry.on_status: 200 is not", "pools.web.retry.on_status: 600 is not"] {
        assert!(got.iter().any(|g| g.contains(expected)), "missing {expected:?} in {got:?}");
    }
}
