//! `Router::route` must not allocate: checked with a counting global allocator around many lookups
//! of every kind (exact, wildcard, prefix, fall-through, no match, odd hosts). Only the routing
//! thread's allocations count: routing is synchronous, and the test harness allocates on its own
//! thread.

use lb::config::{HostMatch, RouteConfig};
use lb::router::Router;
#[path = "shared/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::on_this_thread;

#[test]
fn routing_does_not_allocate() {
    let route = |host, prefix: Option<&str>, pool| RouteConfig {
        host,
        path_prefix: prefix.map(str::to_owned),
        pool,
        max_body_size: None,
        policy: None,
        cache: None,
    };
    let mut routes = Vec::new();
    for i in 0..1000 {
        routes.push(route(Some(HostMatch::Exact(format!("h{i}.example.com"))), Some("/api"), 1));
        routes.push(route(Some(HostMatch::Suffix(format!(".w{i}.example.com"))), None, 2));
    }
    routes.push(route(Some(HostMatch::Suffix(".example.com".into())), Some("/"), 3));
    routes.push(route(None, Some("/static"), 4));
    let router = Router::new(&routes);
    let requests = [
        (Some("h7.example.com"), "/api/x", Some(1)),
        (Some("H7.EXAMPLE.COM:8080"), "/api", Some(1)),
        (Some("h7.example.com."), "/other", Some(3)),
        (Some("a.b.w9.example.com"), "/", Some(2)),
        (Some("nothing.org"), "/static/a.css", Some(4)),
        (Some("[::1]:80"), "/", None),
        (None, "/static", Some(4)),
        (Some("ä.example.com"), "/", Some(3)),
    ];
    let before = on_this_thread();
    for _ in 0..1000 {
        for (host, path, pool) in requests {
            assert_eq!(router.route(host, path), pool, "{host:?} {path}");
        }
    }
    assert_eq!(on_this_thread() - before, 0, "route() allocated");
}
