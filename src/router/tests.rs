//! The index against fixed cases and, by property test, against the ordered scan it replaced.

use proptest::prelude::*;
use proptest::sample::select;

use super::scan::ScanRouter;
use super::*;
use crate::config::order_routes;

fn r(host: Option<HostMatch>, prefix: Option<&str>, pool: usize) -> RouteConfig {
    RouteConfig {
        host,
        path_prefix: prefix.map(str::to_owned),
        pool,
        max_body_size: None,
        policy: None,
        cache: None,
    }
}

fn exact(name: &str) -> Option<HostMatch> {
    Some(HostMatch::Exact(name.into()))
}

fn wild(suffix: &str) -> Option<HostMatch> {
    Some(HostMatch::Suffix(suffix.into()))
}

fn router() -> Router {
    Router::new(&[
        r(exact("api.example.com"), Some("/v1"), 0),
        r(exact("api.example.com"), None, 1),
        r(wild(".example.com"), None, 2),
        r(None, Some("/static"), 3),
    ])
}

#[test]
fn matches_host_then_prefix() {
    let r = router();
    assert_eq!(r.route(Some("api.example.com"), "/v1/users"), Some(0));
    assert_eq!(r.route(Some("API.Example.com:8443"), "/v1"), Some(0));
    assert_eq!(r.route(Some("api.example.com"), "/v10"), Some(1));
    assert_eq!(r.route(Some("www.example.com"), "/v1"), Some(2));
    assert_eq!(r.route(Some("example.com"), "/static/a.css"), Some(3));
    assert_eq!(r.route(None, "/static"), Some(3));
    assert_eq!(r.route(Some("other.org"), "/staticky"), None);
    assert_eq!(r.route(Some("[::1]:8080"), "/"), None);
}

#[test]
fn strips_ports_and_brackets() {
    assert_eq!(strip_port("a.com:80"), "a.com");
    assert_eq!(strip_port("a.com"), "a.com");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
}

#[test]
fn a_host_without_a_matching_prefix_falls_through_longer_wildcard_first() {
    let mut routes = vec![
        r(exact("a.b.example.com"), Some("/x"), 0),
        r(wild(".b.example.com"), Some("/y"), 1),
        r(wild(".example.com"), Some("/z"), 2),
        r(wild(".com"), None, 3),
        r(None, Some("/"), 4),
        r(None, None, 5),
    ];
    order_routes(&mut routes);
    let r = Router::new(&routes);
    assert_eq!(r.route(Some("A.b.example.com."), "/x/1"), Some(0));
    assert_eq!(r.route(Some("a.b.example.com"), "/y"), Some(1), "exact host has no /y: wildcard");
    assert_eq!(r.route(Some("a.b.example.com"), "/z/"), Some(2), "skips the longer wildcard");
    assert_eq!(r.route(Some("a.b.example.com"), "/w"), Some(3));
    assert_eq!(r.route(Some("b.example.com"), "/y"), Some(3), "a wildcard needs a longer host");
    assert_eq!(r.route(Some("example.org"), "/w"), Some(4), "`/` before no prefix");
    assert_eq!(r.route(None, "*"), Some(4));
}

#[test]
fn prefixes_match_on_segment_boundaries_longest_first() {
    let mut routes = vec![
        r(exact("h"), Some("/a"), 0),
        r(exact("h"), Some("/a/b"), 1),
        r(exact("h"), Some("/a//c"), 2),
        r(exact("h"), Some("/"), 3),
    ];
    order_routes(&mut routes);
    let r = Router::new(&routes);
    for (path, pool) in [("/a", 0), ("/a/", 0), ("/a/bc", 0), ("/a/b", 1), ("/a/b/", 1), ("/a//c/d", 2)] {
        assert_eq!(r.route(Some("h"), path), Some(pool), "{path}");
    }
    for path in ["/ab", "/", "", "a", "/A"] {
        assert_eq!(r.route(Some("h"), path), Some(3), "{path}");
    }
}

#[test]
fn colliding_keys_are_told_apart_by_name() {
    // Every name under one key: lookups must still compare the names.
    let group = |name: &str| Group {
        key: 7,
        name: Name::new(name.as_bytes()),
        fallback: 0,
        longest: 0,
        shorter: NIL,
    };
    let (table, slots) = Table::build(vec![group("a.com"), group("b.com"), group(&"long.".repeat(20))]);
    let found = |key, name: &[u8]| find(&table, key, name).map(|(slot, _)| slot);
    assert_eq!(found(7, b"A.COM"), slots.first().copied());
    assert_eq!(found(7, b"b.com"), slots.get(1).copied());
    assert_eq!(found(7, "LONG.".repeat(20).as_bytes()), slots.get(2).copied());
    assert_eq!(found(7, b"c.com"), None);
    assert_eq!(found(8, b"a.com"), None);
    assert!(find(&Table::build(Vec::new()).0, 7, b"a.com").is_none());
}

#[test]
fn folds_ascii_letters_and_nothing_else() {
    for b in 0..=255u8 {
        let word = u64::from_le_bytes([b, b'Q', 0xc3, b, b'@', b'[', b'`', b'{']);
        let want = u64::from_le_bytes([
            b.to_ascii_lowercase(),
            b'q',
            0xc3,
            b.to_ascii_lowercase(),
            b'@',
            b'[',
            b'`',
            b'{',
        ]);
        assert_eq!(fold(word), want, "byte {b:#x}");
    }
    assert!(eq_folded(b"a-long-host.example.com", b"A-Long-Host.EXAMPLE.com"));
    assert!(!eq_folded(b"a-long-host.example.com", b"a-long-host.example.co"));
    assert!(!eq_folded(b"a\xc3", b"A\xe3"));
}

#[test]
fn a_suffix_key_taken_on_the_way_is_the_key_of_the_suffix() {
    let routes = [r(wild(".b.example-with-long-labels.com"), None, 1), r(wild(".com"), None, 2)];
    let r = Router::new(&routes);
    assert_eq!(r.route(Some("A.B.Example-With-Long-Labels.COM"), "/"), Some(1));
    assert_eq!(r.route(Some("ab.example-with-long-labels.com"), "/"), Some(2));
    assert_eq!(r.route(Some("com"), "/"), None);
}

#[test]
fn a_path_with_more_candidate_prefixes_than_kept_still_finds_the_longest() {
    // Prefixes `/a`, `/a/a`, ... of one exact host: a long path of `/a` segments has more candidate
    // ends than the exact host's shortcut keeps, and the group's own lookup must answer.
    let mut routes: Vec<_> = (1..=12).map(|n| r(exact("h.example.com"), Some(&"/a".repeat(n)), n)).collect();
    routes.push(r(exact("h.example.com"), None, 99));
    routes.push(r(wild(".example.com"), Some("/a"), 100));
    let index = Router::new(&routes);
    order_routes(&mut routes);
    let scan = ScanRouter::new(&routes);
    for (host, path) in [
        ("h.example.com", "/a/a/a/a/a/a/a/a/a/a/a/a/a/b"),
        ("H.Example.COM:80", "/a/a/a/a/a/a/a/a/a/a"),
        ("h.example.com", "/a/a/b"),
        ("h.example.com", "/b"),
        ("x.example.com", "/a/a"),
    ] {
        assert_eq!(index.route(Some(host), path), scan.route(Some(host), path), "{host} {path}");
    }
    assert_eq!(index.route(Some("h.example.com"), "/a/a/a/a/a/a/a/a/a/a/a/a/a/b"), Some(12));
}

#[test]
fn many_routes_route_like_few() {
    let routes: Vec<_> = (0..10_000).map(|i| r(exact(&format!("h{i}.example.com")), None, i)).collect();
    let r = Router::new(&routes);
    assert_eq!(r.route(Some("h9999.example.com"), "/"), Some(9999));
    assert_eq!(r.route(Some("H0.EXAMPLE.COM:80"), "/x"), Some(0));
    assert_eq!(r.route(Some("h10000.example.com"), "/"), None);
}

// Small alphabets, so that random tables and requests overlap often: nested wildcards, shared
// names, prefixes that are prefixes of each other and of the paths.
// The long label makes names longer than `INLINE`, stored apart.
const LABELS: &[&str] = &["a", "b", "ab", "x-y", "c_d", "1", "a-label-long-enough-to-leave-inline-storage"];
const SEGMENTS: &[&str] =
    &["a", "b", "ab", "a.b", "A", "segment-long-enough-to-leave-inline-storage", "", "%2F"];

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(select(LABELS), 1..4).prop_map(|labels| labels.join("."))
}

fn prefix() -> impl Strategy<Value = Option<String>> {
    let segments = prop::collection::vec(select(&SEGMENTS[..6]), 1..4);
    prop_oneof![
        1 => Just(None),
        1 => Just(Some("/".to_owned())),
        4 => segments.prop_map(|s| Some(format!("/{}", s.join("/")))),
    ]
}

fn route() -> impl Strategy<Value = RouteConfig> {
    let host = prop_oneof![
        1 => Just(None),
        3 => name().prop_map(|n| Some(HostMatch::Exact(n))),
        2 => name().prop_map(|n| Some(HostMatch::Suffix(format!(".{n}")))),
    ];
    (host, prefix(), 0..50usize).prop_map(|(host, path_prefix, pool)| RouteConfig {
        host,
        path_prefix,
        pool,
        max_body_size: None,
        policy: None,
        cache: None,
    })
}

/// A table as validation leaves it: no two routes with the same host and prefix, ordered.
fn table() -> impl Strategy<Value = Vec<RouteConfig>> {
    prop::collection::vec(route(), 0..40).prop_map(|mut routes| {
        let mut seen = std::collections::HashSet::new();
        routes.retain(|r| seen.insert((r.host.clone(), r.path_prefix.clone())));
        order_routes(&mut routes);
        routes
    })
}

fn request_host() -> impl Strategy<Value = Option<String>> {
    let named = (name(), any::<u16>(), select(&["", ".", "..", ":8080", ".:80", ":", ":x:1"][..])).prop_map(
        |(name, case, tail)| {
            // Upper-case some letters, chosen by the bits of `case`.
            let name: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| if case >> (i % 16) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            format!("{name}{tail}")
        },
    );
    let odd = select(
        &[
            "",
            ".",
            ":80",
            "[::1]:8080",
            "[::1]",
            "[::1",
            "::1",
            "[a.b]:1",
            ".a",
            "..a",
            "a..b",
            "ä.a",
            "a.ä.a",
            "b.ä",
            "A.B.",
        ][..],
    );
    prop_oneof![
        1 => Just(None),
        6 => named.prop_map(Some),
        2 => odd.prop_map(|h| Some(h.to_owned())),
        1 => (select(&[".", "x.", "ab-"][..]), name()).prop_map(|(a, n)| Some(format!("{a}{n}"))),
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    let segments = prop::collection::vec(select(SEGMENTS), 0..5);
    (select(&["/", "", "//", "*"][..]), segments, any::<bool>()).prop_map(|(lead, segments, slash)| {
        let mut path = format!("{lead}{}", segments.join("/"));
        if slash {
            path.push('/');
        }
        path
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn index_answers_exactly_as_the_ordered_scan(
        routes in table(),
        requests in prop::collection::vec((request_host(), request_path()), 1..40),
    ) {
        let index = Router::new(&routes);
        let scan = ScanRouter::new(&routes);
        for (host, path) in &requests {
            prop_assert_eq!(
                index.route(host.as_deref(), path),
                scan.route(host.as_deref(), path),
                "host {:?} path {:?} routes {:?}", host, path, routes
            );
        }
    }
}
