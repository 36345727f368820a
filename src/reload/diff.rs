//! What a reload would change, one self-contained line per change: listeners, pools, servers,
//! strategies, routes and settings, and for consistent-hash pools the share of keys that would move
//! to another server. Used by reload logs, `POST /reload` answers and `lb check --diff`.

use crate::balance::moved_share;
use crate::config::{Config, PoolConfig, ServerConfig, StrategyKind};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

/// Every change from `old` to `new`; empty when they serve the same way.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &new.listeners {
        if !old.listeners.iter().any(|o| o.addr == l.addr) {
            out.push(format!("+ listener {}", l.addr));
        }
    }
    for l in &new.listeners {
        if let Some(o) = old.listeners.iter().find(|o| o.addr == l.addr) {
            if o.tls != l.tls || o.redirect_https != l.redirect_https {
                out.push(format!("~ listener {}: {}", l.addr, listener_change(o, l)));
            }
            if o.freebind != l.freebind {
                out.push(format!(
                    "! listener {}: freebind {} -> {} takes effect when the address is bound again (restart)",
                    l.addr, o.freebind, l.freebind
                ));
            }
            if o.proxy_protocol != l.proxy_protocol {
                let show = |p: &Option<crate::edge::cidr::CidrList>| {
                    p.as_ref().map_or_else(|| "off".to_owned(), |from| format!("from {from}"))
                };
                out.push(format!(
                    "~ listener {}: proxy_protocol {} -> {}",
                    l.addr,
                    show(&o.proxy_protocol),
                    show(&l.proxy_protocol)
                ));
            }
        }
    }
    for l in &old.listeners {
        if !new.listeners.iter().any(|n| n.addr == l.addr) {
            out.push(format!("- listener {} (stops accepting; its connections finish and close)", l.addr));
        }
    }
    // Pools and servers by name: a config with thousands of either must not diff in quadratic time.
    let old_pools: HashMap<&str, &PoolConfig> = old.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_pools: HashSet<&str> = new.pools.iter().map(|p| p.name.as_str()).collect();
    for pool in &new.pools {
        match old_pools.get(pool.name.as_str()) {
            None => out.push(format!(
                "+ pool {} ({}, {} servers)",
                pool.name,
                strategy(pool.strategy),
                pool.servers.len()
            )),
            Some(o) => pool_changes(o, pool, &mut out),
        }
    }
    for pool in old.pools.iter().filter(|o| !new_pools.contains(o.name.as_str())) {
        out.push(format!("- pool {}", pool.name));
    }
    route_changes(&routes(old), &routes(new), &mut out);
    settings("timeouts", &old.timeouts, &new.timeouts, &mut out);
    settings("limits", &old.limits, &new.limits, &mut out);
    settings("http", &old.http, &new.http, &mut out);
    settings("reload", &old.reload, &new.reload, &mut out);
    error_page_changes(old, new, &mut out);
    let rules = |c: &Config| -> Vec<String> { c.rate_limits.iter().map(ToString::to_string).collect() };
    let (was, is) = (rules(old), rules(new));
    for r in was.iter().filter(|r| !is.contains(r)) {
        out.push(format!("- rate limit {r}"));
    }
    for r in is.iter().filter(|r| !was.contains(r)) {
        out.push(format!("+ rate limit {r}"));
    }
    if old.redis != new.redis {
        let show = |r: &Option<crate::ratelimit::redis::RedisConfig>| {
            r.as_ref().map_or_else(
                || "none".to_owned(),
                |r| format!("{} (timeout {:?}, breaker {:?})", r.nodes.join(", "), r.timeout, r.breaker),
            )
        };
        out.push(format!("~ redis: {} -> {}", show(&old.redis), show(&new.redis)));
    }
    if old.client_address != new.client_address {
        let show = |c: &crate::edge::client_addr::ClientAddress| {
            format!("trusted_proxies {} ({:?})", c.trusted_proxies, c.header)
        };
        out.push(format!("~ client_address: {} -> {}", show(&old.client_address), show(&new.client_address)));
    }
    if old.access_log != new.access_log {
        out.push(format!("~ log.access: {:?} -> {:?}", old.access_log, new.access_log));
    }
    if old.sticky_secret != new.sticky_secret {
        out.push("~ sticky secret: changed (cookies signed with the old one are no longer accepted)".into());
    }
    if old.workers != new.workers {
        out.push(format!("! workers: {} -> {} takes effect at the next restart", old.workers, new.workers));
    }
    if old.admin != new.admin {
        out.push(format!(
            "! admin: {} -> {} takes effect at the next restart",
            opt(old.admin.as_ref()),
            opt(new.admin.as_ref())
        ));
    }
    out
}

fn pool_changes(old: &PoolConfig, new: &PoolConfig, out: &mut Vec<String>) {
    let name = &new.name;
    if old.strategy != new.strategy {
        out.push(format!("~ pool {name}: strategy {} -> {}", strategy(old.strategy), strategy(new.strategy)));
    }
    let old_servers: HashMap<&str, &ServerConfig> =
        old.servers.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_servers: HashSet<&str> = new.servers.iter().map(|s| s.name.as_str()).collect();
    for s in &new.servers {
        match old_servers.get(s.name.as_str()) {
            None => out.push(format!(
                "~ pool {name}: + server {} ({}, weight {}{})",
                s.name,
                s.addr,
                s.weight,
                if s.backup { ", backup" } else { "" }
            )),
            Some(o) => server_changes(name, o, s, out),
        }
    }
    for s in old.servers.iter().filter(|o| !new_servers.contains(o.name.as_str())) {
        out.push(format!(
            "~ pool {name}: - server {} ({}; requests in flight finish, it gets no new ones)",
            s.name, s.addr
        ));
    }
    if let (StrategyKind::ConsistentHash, StrategyKind::ConsistentHash) = (old.strategy, new.strategy) {
        // Backup servers have a ring of their own, used only while no other server is healthy.
        fn ring(p: &PoolConfig) -> Vec<(&str, u32)> {
            p.servers.iter().filter(|s| !s.backup).map(|s| (s.name.as_str(), s.weight)).collect()
        }
        let vnodes = |p: &PoolConfig| p.hash.as_ref().map_or(160, |h| h.vnodes);
        let (a, b) = (ring(old), ring(new));
        if a != b || vnodes(old) != vnodes(new) {
            let share = moved_share(&a, vnodes(old), &b, vnodes(new));
            out.push(format!("~ pool {name}: {:.1}% of hash keys move to another server", share * 100.0));
        }
    }
    let parts: [(&str, bool); 10] = [
        ("tls", old.tls != new.tls),
        ("hash", old.hash != new.hash),
        ("seed", old.seed != new.seed),
        ("sticky", old.sticky != new.sticky),
        ("health", old.health != new.health),
        ("passive", old.passive != new.passive),
        ("slow_start", old.slow_start != new.slow_start),
        ("retry", old.retry != new.retry),
        ("limits", old.limits != new.limits),
        ("timeouts", old.timeouts != new.timeouts),
    ];
    let changed: Vec<&str> = parts.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
    if !changed.is_empty() {
        out.push(format!("~ pool {name}: settings changed: {}", changed.join(", ")));
    }
}

/// What changed on a listener that stays: TLS on or off, certificates (new connections get them),
/// client certificates, HSTS, redirect.
fn listener_change(old: &crate::config::ListenerConfig, new: &crate::config::ListenerConfig) -> String {
    match (&old.tls, &new.tls) {
        (None, Some(_)) => "TLS on".to_owned(),
        (Some(_), None) => "TLS off".to_owned(),
        (Some(a), Some(b)) => {
            let mut what = Vec::new();
            if a.certificates != b.certificates {
                what.push("certificates changed (new connections get them)");
            }
            if a.client_ca != b.client_ca {
                what.push("client certificate checks changed");
            }
            if a.hsts != b.hsts {
                what.push("HSTS changed");
            }
            what.join(", ")
        }
        (None, None) => format!(
            "https redirect {} -> {}",
            opt(old.redirect_https.as_ref()),
            opt(new.redirect_https.as_ref())
        ),
    }
}

fn server_changes(pool: &str, old: &ServerConfig, new: &ServerConfig, out: &mut Vec<String>) {
    let mut what = Vec::new();
    if old.addr != new.addr {
        what.push(format!("addr {} -> {} (a new server: its state starts afresh)", old.addr, new.addr));
    }
    if old.weight != new.weight {
        what.push(format!("weight {} -> {}", old.weight, new.weight));
    }
    if old.backup != new.backup {
        what.push(format!("backup {} -> {}", old.backup, new.backup));
    }
    if old.max_requests != new.max_requests {
        what.push(format!(
            "max_requests {} -> {}",
            opt(old.max_requests.as_ref()),
            opt(new.max_requests.as_ref())
        ));
    }
    if old.max_connections != new.max_connections {
        let (a, b) = (opt(old.max_connections.as_ref()), opt(new.max_connections.as_ref()));
        what.push(format!("max_connections {a} -> {b}"));
    }
    if !what.is_empty() {
        out.push(format!("~ pool {pool}: server {}: {}", new.name, what.join(", ")));
    }
}

/// `~ error_pages: + 503 (path), 502 changed (path), - 504`: pages added, re-read with new content
/// or another file, and removed.
fn error_page_changes(old: &Config, new: &Config, out: &mut Vec<String>) {
    if old.error_pages == new.error_pages {
        return;
    }
    let mut what = Vec::new();
    for page in new.error_pages.iter() {
        match old.error_pages.get(page.status) {
            None => what.push(format!("+ {} ({})", page.status.as_u16(), page.path)),
            Some(was) if was != page => {
                what.push(format!("{} changed ({})", page.status.as_u16(), page.path))
            }
            Some(_) => {}
        }
    }
    for page in old.error_pages.iter().filter(|p| new.error_pages.get(p.status).is_none()) {
        what.push(format!("- {}", page.status.as_u16()));
    }
    out.push(format!("~ error_pages: {}", what.join(", ")));
}

fn strategy(kind: StrategyKind) -> &'static str {
    kind.name()
}

/// Route tables up to this size are shown whole on one line; larger ones change by change.
const WHOLE_TABLE: usize = 20;
/// Most route lines one diff shows; the rest are counted.
const MAX_ROUTE_LINES: usize = 50;

/// `~ routes: <whole table>` for small tables; for large ones (thousands of hosts) one line per route
/// added or removed, at most [`MAX_ROUTE_LINES`], then how many more.
fn route_changes(old: &[String], new: &[String], out: &mut Vec<String>) {
    if old == new {
        return;
    }
    if old.len() <= WHOLE_TABLE && new.len() <= WHOLE_TABLE {
        out.push(format!("~ routes: {}", new.join(", ")));
        return;
    }
    let (was, is): (HashSet<&String>, HashSet<&String>) = (old.iter().collect(), new.iter().collect());
    let removed = old.iter().filter(|r| !is.contains(r)).map(|r| format!("~ routes: - {r}"));
    let added = new.iter().filter(|r| !was.contains(r)).map(|r| format!("~ routes: + {r}"));
    let mut changes = removed.chain(added);
    out.extend(changes.by_ref().take(MAX_ROUTE_LINES));
    let more = changes.count();
    if more > 0 {
        out.push(format!("~ routes: {more} more changes ({} routes now)", new.len()));
    }
}

/// Routes as `host/prefix -> pool`, with a route's own body limit and edge policy, in the order
/// they are tried.
fn routes(config: &Config) -> Vec<String> {
    config
        .routes
        .iter()
        .map(|r| {
            let host = match &r.host {
                None => "*".to_owned(),
                Some(crate::config::HostMatch::Exact(h)) => h.clone(),
                Some(crate::config::HostMatch::Suffix(s)) => format!("*{s}"),
            };
            let pool = match config.pools.get(r.pool) {
                Some(p) => p.name.as_str(),
                None if r.pool == crate::config::NO_POOL => "(redirect)",
                None => "?",
            };
            // A route's own body limit and edge policy are part of it: a change shows in the diff.
            let limit = r.max_body_size.map(|n| format!(" (max_body_size {n})")).unwrap_or_default();
            let policy = r.policy.as_ref().map(|p| format!(" [{p}]")).unwrap_or_default();
            format!("{host}{} -> {pool}{limit}{policy}", r.path_prefix.as_deref().unwrap_or(""))
        })
        .collect()
}

/// `~ section: key old -> new` for each field of a flat settings struct that changed, read from its
/// pretty `Debug` form (one `key: value,` line per field), so a new field needs no code here.
fn settings<T: Debug + PartialEq>(section: &str, old: &T, new: &T, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let fields = |v: &T| -> Vec<(String, String)> {
        format!("{v:#?}")
            .lines()
            .filter_map(|l| l.strip_prefix("    ")?.split_once(": "))
            .filter(|(k, _)| !k.starts_with(' '))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches(',').to_owned()))
            .collect()
    };
    let (a, b) = (fields(old), fields(new));
    let changed: Vec<String> =
        a.iter().zip(&b).filter(|(x, y)| x != y).map(|((k, x), (_, y))| format!("{k} {x} -> {y}")).collect();
    if changed.is_empty() {
        out.push(format!("~ {section}: changed"));
    } else {
        out.push(format!("~ {section}: {}", changed.join(", ")));
    }
}

fn opt<T: std::fmt::Display>(v: Option<&T>) -> String {
    v.map_or_else(|| "none".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> Config {
        Config::from_toml(&format!("[[listeners]]\naddr = \"127.0.0.1:0\"\n{body}")).unwrap()
    }

    #[test]
    fn edge_policies_show_in_their_route_and_listener_lines() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        let with = |route: &str, hash: &str| {
            std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
            let text = format!(
                "[[listeners]]\naddr = \"127.0.0.1:0\"\n{}\n[pools.web]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n\
                 [[routes]]\npath_prefix = \"/admin\"\npool = \"web\"\nauth = {{ htpasswd = \"{}\" }}\n{route}\n\
                 [[routes]]\npool = \"web\"\n",
                if route.is_empty() { "" } else { "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]" },
                users.display()
            );
            Config::from_toml(&text).unwrap()
        };
        let (h1, h2) = ("$2y$04$abcdefghijklmnopqrstuu", "$2y$04$abcdefghijklmnopqrstuv");
        let old = with("", h1);
        let new = with(
            "allow = [\"10.0.0.0/8\"]\nresponse_headers = { set = { \"X-Frame-Options\" = \"DENY\" } }",
            h1,
        );
        let lines = diff(&old, &new);
        let auth = old.routes[0].policy.as_ref().unwrap().auth.as_ref().unwrap().to_string();
        assert!(auth.starts_with(&format!("basic auth {} (1 users, file ", users.display())), "{auth}");
        assert_eq!(
            lines,
            [
                "~ listener 127.0.0.1:0: proxy_protocol off -> from [10.0.0.0/8]".to_owned(),
                format!("~ routes: */admin -> web [allow [10.0.0.0/8]; {auth}; response headers x-frame-options=DENY], * -> web"),
            ]
        );
        // The htpasswd file is part of the config: new content is a change, and a reload reads it.
        let rehashed = with("", h2);
        assert_ne!(old.digest, rehashed.digest);
        assert_eq!(diff(&old, &rehashed).len(), 1, "{:?}", diff(&old, &rehashed));
    }

    #[test]
    fn rate_limit_rules_and_redis_show_by_name() {
        let with =
            |rules: &str| config(&format!("[pools.web]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n{rules}"));
        let old = with("[[rate_limits]]\nname = \"api\"\nrate = \"10/s\"\n");
        let new = with(
            "[redis]\nnodes = [\"127.0.0.1:6379\"]\n[[rate_limits]]\nname = \"api\"\nrate = \"20/s\"\nburst = 5\nstore = \"redis\"\n",
        );
        assert_eq!(
            diff(&old, &new),
            [
                "- rate limit api: 10/1s burst 10 by client_ip (local)",
                "+ rate limit api: 20/1s burst 5 by client_ip (redis, on error local)",
                "~ redis: none -> 127.0.0.1:6379 (timeout 50ms, breaker 1s)",
            ]
        );
    }

    #[test]
    fn a_change_of_workers_waits_for_a_restart() {
        let with = |workers: &str| {
            let text = format!("{workers}\n[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.web]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n");
            Config::from_toml(&text).unwrap()
        };
        let lines = diff(&with(""), &with("workers = 2"));
        assert!(
            lines.contains(&"! workers: 0 -> 2 takes effect at the next restart".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn names_each_change_on_its_own_line() {
        let old = config(
            r#"[timeouts]
connect = "5s"
[pools.web]
servers = [{ name = "a", addr = "127.0.0.1:1" }, { name = "b", addr = "127.0.0.1:2" }]
[pools.gone]
servers = []
[[routes]]
pool = "web""#,
        );
        let new = config(
            r#"[[listeners]]
addr = "127.0.0.1:8081"
[timeouts]
connect = "2s"
[pools.web]
strategy = "weighted"
servers = [{ name = "a", addr = "127.0.0.1:1", weight = 3, backup = true }, { name = "c", addr = "127.0.0.1:3" }, { name = "d", addr = "127.0.0.1:5", backup = true }]
[pools.web.retry]
attempts = 3
[pools.api]
servers = [{ addr = "127.0.0.1:4" }]
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
pool = "web""#,
        );
        let lines = diff(&old, &new);
        let expected = [
            "+ listener 127.0.0.1:8081",
            "~ pool web: strategy round_robin -> weighted",
            "~ pool web: server a: weight 1 -> 3, backup false -> true",
            "~ pool web: + server c (127.0.0.1:3, weight 1)",
            "~ pool web: + server d (127.0.0.1:5, weight 1, backup)",
            "~ pool web: - server b (127.0.0.1:2; requests in flight finish, it gets no new ones)",
            "~ pool web: settings changed: retry",
            "+ pool api (round_robin, 1 servers)",
            "- pool gone",
            "~ routes: */api -> api, * -> web",
            "~ timeouts: connect 5s -> 2s",
        ];
        for line in expected {
            assert!(lines.iter().any(|l| l == line), "missing {line:?} in {lines:#?}");
        }
        assert_eq!(lines.len(), expected.len(), "{lines:#?}");
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn large_route_tables_list_only_what_changed() {
        let table = |hosts: std::ops::Range<usize>| {
            let routes: String =
                hosts.map(|i| format!("[[routes]]\nhost = \"h{i}.test\"\npool = \"web\"\n")).collect();
            config(&format!("[pools.web]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n{routes}"))
        };
        let lines = diff(&table(0..1000), &table(1..1001));
        assert_eq!(lines, ["~ routes: - h0.test -> web", "~ routes: + h1000.test -> web"]);
        let lines = diff(&table(0..1000), &table(500..1500));
        assert_eq!(lines.len(), MAX_ROUTE_LINES + 1);
        assert_eq!(lines[MAX_ROUTE_LINES], "~ routes: 950 more changes (1000 routes now)");
    }

    #[test]
    fn error_pages_show_what_was_added_changed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (a, b, c) = (file("a.html", "a"), file("b.html", "b"), file("c.txt", "c"));
        let pages = |body: &str| config(&format!("[pools.web]\n[error_pages]\n{body}"));
        let old = pages(&format!("502 = \"{a}\"\n503 = \"{b}\"\n504 = \"{c}\"\n"));
        std::fs::write(&b, "b, reworded").unwrap();
        let new = pages(&format!("500 = \"{c}\"\n502 = \"{a}\"\n503 = \"{b}\"\n"));
        assert_eq!(diff(&old, &new), [format!("~ error_pages: + 500 ({c}), 503 changed ({b}), - 504")]);
        assert!(diff(&new, &pages(&format!("500 = \"{c}\"\n502 = \"{a}\"\n503 = \"{b}\"\n"))).is_empty());
    }

    #[test]
    fn consistent_hash_pools_report_the_share_of_keys_that_move() {
        let pool = |servers: &str| {
            config(&format!(
                "[pools.p]\nstrategy = \"consistent_hash\"\nhash_key = \"path\"\nservers = [{servers}]"
            ))
        };
        let servers = |n: u16| (1..=n).map(|i| format!("{{ addr = \"127.0.0.1:{i}\" }}")).collect::<Vec<_>>();
        let four = pool(&servers(4).join(", "));
        let three = pool(&servers(3).join(", "));
        let lines = diff(&four, &three);
        let share = lines.iter().find(|l| l.contains("hash keys move")).expect("a share line");
        let percent: f64 = share.split(": ").nth(1).unwrap().split('%').next().unwrap().parse().unwrap();
        assert!((15.0..35.0).contains(&percent), "one server of four leaves: about a quarter moves: {share}");
        // A backup has a ring of its own: adding one moves no key of the others.
        let with_backup =
            pool(&format!("{}, {{ addr = \"127.0.0.1:9\", backup = true }}", servers(3).join(", ")));
        let lines = diff(&three, &with_backup);
        assert_eq!(lines, ["~ pool p: + server 127.0.0.1:9 (127.0.0.1:9, weight 1, backup)"]);
    }
}
