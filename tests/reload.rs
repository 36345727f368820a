//! Hot reload of the `lb` binary under real traffic: POST /reload, SIGHUP, the file watcher, invalid
//! files, listeners, and server state that must survive. Figures in docs/operations.md come from the
//! `eprintln!` lines here (run with `--nocapture`).

mod common;

use common::*;
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `[[listeners]]` on port 0 and pool `web` with `servers` (name, addr, weight) and `extra`, with the
/// file watcher off unless `extra` sets `[reload]`, so only explicit triggers reload.
fn config(servers: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(n, a, w)| format!("{{ name = \"{n}\", addr = \"{a}\", weight = {w} }}"))
        .collect();
    let reload = if extra.contains("[reload]") { "" } else { "[reload]\nwatch = false\n" };
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{}]\n{extra}\n{reload}",
        list.join(", ")
    )
}

/// Requests to `url` until `name` answers (bounded): the new config is being served.
async fn until_served_by(url: &str, name: &str) {
    let client = client();
    eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move { get(&client, url).await.1 == name }
    })
    .await;
}

/// The servers that answer `n` requests to `url`, sorted and deduplicated.
async fn answering(url: &str, n: usize) -> Vec<String> {
    let client = client();
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(get(&client, url).await.1);
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn twenty_reloads_under_steady_load_fail_no_request() {
    let b: Vec<Backend> = futures_util::future::join_all(
        ["a", "b", "c", "d"].map(|n| Backend::start_with_delay(n, Duration::from_millis(2))),
    )
    .await;
    let s = |i: usize, w: u32| (b[i].name.as_str(), b[i].addr, w);
    let lb = LbProcess::start(&config(&[s(0, 1), s(1, 1)], ""));
    let url = format!("http://{}/", lb.addr);
    let strategies = ["round_robin", "weighted", "least_conn", "random", "p2c", "consistent_hash"];
    let steps: Vec<String> = (0..20)
        .map(|i| {
            let servers = match i % 5 {
                0 => vec![s(0, 1), s(1, 1), s(2, 1)],
                1 => vec![s(1, 1), s(2, 1)],
                2 => vec![s(1, 3), s(2, 1), s(3, 1)],
                3 => vec![s(0, 2), s(3, 1)],
                _ => vec![s(0, 1), s(1, 1), s(2, 1), s(3, 5)],
            };
            let strategy = match strategies[i % strategies.len()] {
                "consistent_hash" => "strategy = \"consistent_hash\"\nhash_key = \"path\"\n".to_owned(),
                name => format!("strategy = \"{name}\"\n"),
            };
            config(&servers, &strategy)
        })
        .collect();

    let traffic = Traffic::start(url.clone(), 8);
    traffic.pass(200).await;
    let started = std::time::Instant::now();
    let mut posts = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        lb.replace_config(step);
        let post = std::time::Instant::now();
        let (status, answer) = lb.admin_post("/reload", "").await;
        posts.push(post.elapsed());
        assert_eq!(status, StatusCode::OK, "reload {i}: {answer}");
        assert_eq!(answer["generation"], i as u64 + 2, "{answer}");
        traffic.pass(50).await;
    }
    let took = started.elapsed();
    let (ok, failures) = traffic.finish().await;
    posts.sort();
    eprintln!(
        "20 reloads in {took:?} under 8 clients: {ok} requests, {} failed; POST /reload took {:?} median, {:?} max",
        failures.len(),
        posts[posts.len() / 2],
        posts[posts.len() - 1]
    );
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    // The last config (servers a, b, c and d at weight 5, weighted) is the one served.
    assert_eq!(answering(&url, 200).await, ["a", "b", "c", "d"]);
    assert_eq!(lb.status().await["generation"], 21);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_config_and_the_next_valid_one_applies() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], ""));
    let url = format!("http://{}/", lb.addr);

    lb.replace_config(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], "[pools.web.retry]\nattempts = 99\n"));
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("pools.web.retry.attempts"), "the key is named: {error}");
    assert_eq!(answering(&url, 20).await, ["a"], "the old config still serves");
    let st = lb.status().await;
    assert_eq!(st["generation"], 1);
    assert!(st["config"]["last_reload"]["error"].as_str().unwrap().contains("attempts"), "{st}");
    assert_eq!(lb.metric("lb_config_reloads_total{result=\"error\"}").await, Some(1.0));
    assert_eq!(lb.metric("lb_config_last_reload_successful").await, Some(0.0));

    lb.replace_config(&config(&[("a", a.addr, 1), ("b", b.addr, 1)], ""));
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changes"][0], format!("~ pool web: + server b ({}, weight 1)", b.addr));
    assert_eq!(answering(&url, 20).await, ["a", "b"]);
    assert_eq!(lb.metric("lb_config_last_reload_successful").await, Some(1.0));
    let hash = lb.status().await["config"]["hash"].as_str().unwrap().to_owned();
    let metric = lb.metric("lb_config_hash").await.unwrap();
    assert_eq!(format!("{:012x}", metric as u64), hash, "metric and /status carry the same hash");
}

#[tokio::test]
async fn a_slow_request_on_a_removed_server_finishes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], ""));
    let slow = tokio::spawn(get_owned(format!("http://{}/slow?ms=700", lb.addr)));
    wait_in_progress(&a, 1).await;
    lb.replace_config(&config(&[("b", b.addr, 1)], ""));
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answering(&format!("http://{}/", lb.addr), 10).await, ["b"], "new requests avoid a");
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "a".to_owned()), "the request in flight on a finished");
}

async fn get_owned(url: String) -> (StatusCode, String) {
    get(&client(), &url).await
}

#[tokio::test]
async fn an_ejected_server_stays_ejected_across_a_reload() {
    let (b, c) = (Backend::start("b").await, Backend::start("c").await);
    let dead = closed_port().await;
    let passive = "[pools.web.passive]\non = [\"connect\"]\nconsecutive = 1\nbase_ejection = \"60s\"\n";
    let lb = LbProcess::start(&config(&[("dead", dead, 1), ("b", b.addr, 1)], passive));
    let url = format!("http://{}/", lb.addr);
    // Connect failures are retried on b, so every request succeeds while `dead` gets ejected.
    assert_eq!(answering(&url, 10).await, ["b"]);
    let health = |st: &serde_json::Value, name: &str| {
        let servers = st["pools"][0]["servers"].as_array().unwrap().clone();
        servers.into_iter().find(|s| s["name"] == name).map(|s| s["health"].as_str().unwrap().to_owned())
    };
    assert_eq!(health(&lb.status().await, "dead").as_deref(), Some("ejected"));

    // Reweighted b, a new server c, and a changed pool setting: `dead` keeps its ejection.
    let next =
        config(&[("dead", dead, 2), ("b", b.addr, 3), ("c", c.addr, 1)], &passive.replace("60s", "50s"));
    lb.replace_config(&next);
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let st = lb.status().await;
    assert_eq!(health(&st, "dead").as_deref(), Some("ejected"), "{st}");
    assert_eq!(st["pools"][0]["ejected"], 1);
    assert_eq!(answering(&url, 20).await, ["b", "c"]);
    assert_eq!(
        lb.metric("lb_upstream_errors_total{pool=\"web\",server=\"dead\",kind=\"connect\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn replacing_the_file_by_rename_is_noticed_and_sighup_reloads() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let watch = "[reload]\ndebounce = \"50ms\"\n";
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], watch));
    let url = format!("http://{}/", lb.addr);

    let started = std::time::Instant::now();
    lb.replace_config(&config(&[("b", b.addr, 1)], watch));
    until_served_by(&url, "b").await;
    eprintln!("rename noticed and applied in {:?} (debounce 50ms)", started.elapsed());
    assert_eq!(lb.status().await["config"]["last_reload"]["trigger"], "file");
    assert_eq!(lb.status().await["generation"], 2);

    // SIGHUP re-reads the file even when unchanged; here it was written in place with the watcher off.
    std::fs::write(
        lb.config_path(),
        with_test_admin(&config(&[("c", c.addr, 1)], "[reload]\nwatch = false\n")),
    )
    .unwrap();
    until_served_by(&url, "c").await; // the watcher was still on when this edit landed
    std::fs::write(
        lb.config_path(),
        with_test_admin(&config(&[("a", a.addr, 1)], "[reload]\nwatch = false\n")),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // negative check: the watcher is off now
    assert_eq!(answering(&url, 5).await, ["c"], "watch = false: edits wait for an explicit reload");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lb.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    until_served_by(&url, "a").await;
    assert_eq!(lb.status().await["config"]["last_reload"]["trigger"], "signal");
}

/// Sends one keep-alive request on `s` and returns the answer's body.
async fn keep_alive_get(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("{head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_unchanged_ones_keep_their_socket() {
    let a = Backend::start("a").await;
    let one = config(&[("a", a.addr, 1)], "");
    let lb = LbProcess::start(&one);
    let mut kept = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut kept).await, "a");

    // A second listener on another loopback address.
    let two = one.replacen("[pools.web]", "[[listeners]]\naddr = \"127.0.0.2:0\"\n\n[pools.web]", 1);
    lb.replace_config(&two);
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changes"][0], "+ listener 127.0.0.2:0");
    let listeners = lb.status().await["listeners"].as_array().unwrap().clone();
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    assert_eq!(listeners[0]["bound"], lb.addr.to_string(), "the unchanged listener kept its socket");
    let added: SocketAddr = listeners[1]["bound"].as_str().unwrap().parse().unwrap();
    assert_eq!(get(&client(), &format!("http://{added}/")).await.1, "a");
    assert_eq!(keep_alive_get(&mut kept).await, "a", "a connection from before the reload still works");

    // Removing the first listener: it stops accepting and its idle connection is closed.
    let only_second = two.replacen("[[listeners]]\naddr = \"127.0.0.1:0\"\n\n", "", 1);
    lb.replace_config(&only_second);
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the idle connection was closed: {closed:?}");
    let gone = lb.addr;
    eventually(Duration::from_secs(5), || async move { tokio::net::TcpStream::connect(gone).await.is_err() })
        .await;
    assert_eq!(get(&client(), &format!("http://{added}/")).await.1, "a");
}

#[tokio::test]
async fn a_port_already_taken_fails_the_reload_and_changes_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], ""));
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let next = config(&[("b", b.addr, 1)], "").replacen(
        "[pools.web]",
        &format!("[[listeners]]\naddr = \"{taken}\"\n\n[pools.web]"),
        1,
    );
    lb.replace_config(&next);
    let (status, answer) = lb.admin_post("/reload", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains(&format!("cannot listen on {taken}")), "{answer}");
    assert_eq!(answering(&format!("http://{}/", lb.addr), 10).await, ["a"], "the old pool still serves");
    assert_eq!(lb.status().await["generation"], 1);
}

#[tokio::test]
async fn check_diff_prints_what_a_reload_would_change() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let hash = "strategy = \"consistent_hash\"\nhash_key = \"path\"\n";
    let running = config(&[("a", a.addr, 1), ("b", b.addr, 1)], hash);
    let lb = LbProcess::start(&running);
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.toml");
    let c: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let next = config(&[("a", a.addr, 1), ("b", b.addr, 1), ("c", c, 1)], hash);
    std::fs::write(&new, with_test_admin(&next)).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["check", "--config", new.to_str().unwrap(), "--diff", "--admin", &lb.admin.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("~ pool web: + server c (127.0.0.1:9, weight 1)"), "{stdout}");
    let share = stdout.lines().find(|l| l.contains("% of hash keys move")).expect(&stdout);
    eprintln!("lb check --diff against the running lb: {share}");
    assert_eq!(lb.status().await["generation"], 1, "a diff applies nothing");

    // Against another file, without a running lb.
    let old = dir.path().join("old.toml");
    std::fs::write(&old, with_test_admin(&running)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["check", "--config", new.to_str().unwrap(), "--diff", "--against", old.to_str().unwrap()])
        .output()
        .unwrap();
    let against_file = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(against_file.contains(share), "same share from a file: {against_file}");
}

/// The event masks of every inotify watch `pid` holds (from `/proc/PID/fdinfo`).
fn inotify_masks(pid: u32) -> Vec<u32> {
    let mut masks = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines().filter(|l| l.starts_with("inotify wd:")) {
            let mask = line.split_whitespace().find_map(|f| f.strip_prefix("mask:")).unwrap();
            masks.push(u32::from_str_radix(mask, 16).unwrap());
        }
    }
    masks
}

#[tokio::test]
async fn a_file_written_in_place_is_noticed_and_writes_beside_it_are_not_watched() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let watch = "[reload]\ndebounce = \"50ms\"\n";
    let lb = LbProcess::start(&config(&[("a", a.addr, 1)], watch));
    let url = format!("http://{}/", lb.addr);
    assert_eq!(answering(&url, 4).await, ["a"]);

    // The config's directory is watched for changes only: a log kept open beside the config (lb's
    // own stdout redirected there, say) must not wake lb on each write, nor lb's own reads.
    const IN_ACCESS: u32 = 0x1;
    const IN_MODIFY: u32 = 0x2;
    const IN_ATTRIB: u32 = 0x4;
    const IN_CLOSE_WRITE: u32 = 0x8;
    const IN_CLOSE_NOWRITE: u32 = 0x10;
    const IN_OPEN: u32 = 0x20;
    const IN_MOVED_TO: u32 = 0x80;
    let masks = inotify_masks(lb.child.id());
    assert!(!masks.is_empty(), "lb watches its config directory");
    for mask in masks {
        assert_eq!(
            mask & (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_NOWRITE | IN_OPEN),
            0,
            "mask {mask:#x}"
        );
        assert_eq!(mask & (IN_CLOSE_WRITE | IN_MOVED_TO), IN_CLOSE_WRITE | IN_MOVED_TO, "mask {mask:#x}");
    }

    // The config written in place (open, write, close), as `cp` or an editor without a swap file do.
    std::fs::write(lb.config_path(), with_test_admin(&config(&[("b", b.addr, 1)], watch))).unwrap();
    until_served_by(&url, "b").await;
    assert_eq!(lb.status().await["config"]["last_reload"]["trigger"], "file");
}
