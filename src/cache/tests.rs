//! The store on tokio's paused clock: freshness, expiry and the stale windows.

use super::*;
use http::HeaderValue;

fn settings() -> CacheSettings {
    CacheSettings {
        name: Arc::from("t"),
        max_size: 1 << 20,
        max_object_size: 1 << 16,
        default_ttl: None,
        head: true,
        allow_set_cookie: false,
        lock_timeout: Duration::from_secs(5),
        redis: false,
    }
}

fn get(path: &str) -> http::request::Parts {
    let parts = http::Request::get(path).header("host", "example.com").body(()).unwrap().into_parts().0;
    policy_request(&parts, Some(&HeaderValue::from_static("example.com")))
}

fn store(store: &Store, path: &str, cache_control: &str) {
    let request = get(path);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_str(cache_control).unwrap());
    let policy = store.storable(&request, StatusCode::OK, &mut headers).expect("storable");
    let object = Object::new(policy, StatusCode::OK, headers, Bytes::from("body"), store.now(), None);
    store.insert(&key(false, Some("example.com"), &request), &request, object, false);
}

fn found(store: &Store, path: &str) -> &'static str {
    let request = get(path);
    match store.lookup(&key(false, Some("example.com"), &request), &request) {
        Found::Fresh(_) => "fresh",
        Found::Stale { .. } => "stale",
        Found::Miss => "miss",
    }
}

#[tokio::test(start_paused = true)]
async fn an_object_is_fresh_for_its_max_age_then_stale() {
    let s = Store::new(settings(), None);
    store(&s, "/a", "max-age=60");
    assert_eq!(found(&s, "/a"), "fresh");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(found(&s, "/a"), "fresh");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(found(&s, "/a"), "stale");
    assert_eq!(found(&s, "/b"), "miss");
}

#[tokio::test(start_paused = true)]
async fn stale_windows_end_on_time_and_must_revalidate_forbids_them() {
    let s = Store::new(settings(), None);
    store(&s, "/w", "max-age=10, stale-while-revalidate=20, stale-if-error=100");
    let request = get("/w");
    let object = match s.lookup(&key(false, Some("example.com"), &request), &request) {
        Found::Fresh(o) => o,
        other => panic!("{other:?}"),
    };
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(object.within_swr(s.now()) && object.within_sie(s.now()));
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(!object.within_swr(s.now()) && object.within_sie(s.now()));
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(!object.within_sie(s.now()));

    store(&s, "/m", "max-age=10, must-revalidate, stale-while-revalidate=20, stale-if-error=100");
    let request = get("/m");
    let Found::Fresh(object) = s.lookup(&key(false, Some("example.com"), &request), &request) else {
        panic!()
    };
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(!object.within_swr(s.now()) && !object.within_sie(s.now()));
}

#[tokio::test(start_paused = true)]
async fn default_ttl_applies_only_when_the_origin_states_no_lifetime() {
    let s = Store::new(CacheSettings { default_ttl: Some(Duration::from_secs(30)), ..settings() }, None);
    let request = get("/d");
    let mut headers = HeaderMap::new();
    let policy =
        s.storable(&request, StatusCode::OK, &mut headers).expect("storable with a default lifetime");
    let object = Object::new(policy, StatusCode::OK, headers, Bytes::new(), s.now(), s.settings.default_ttl);
    s.insert(&key(false, Some("example.com"), &request), &request, object, false);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(found(&s, "/d"), "fresh");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(found(&s, "/d"), "stale");
    // A stated lifetime wins over the default.
    store(&s, "/e", "max-age=5");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(found(&s, "/e"), "stale");
}

#[tokio::test(start_paused = true)]
async fn absurd_lifetimes_and_ages_do_not_overflow() {
    let s = Store::new(settings(), None);
    store(&s, "/x", "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615");
    assert_eq!(found(&s, "/x"), "fresh");
    let request = get("/y");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    headers.insert(http::header::AGE, HeaderValue::from_static("18446744073709551615"));
    headers.insert(http::header::ETAG, HeaderValue::from_static("\"v\""));
    let policy = s.storable(&request, StatusCode::OK, &mut headers).expect("storable: it can be revalidated");
    let object = Object::new(policy, StatusCode::OK, headers, Bytes::new(), s.now(), None);
    assert!(!object.fresh(s.now()), "an object older than its lifetime is stale");
}

#[test]
fn an_object_keeps_only_the_request_fields_its_vary_names() {
    let request = http::Request::get("/a")
        .header("host", "example.com")
        .header("cookie", "session=secret")
        .header("authorization", "Basic dTpw")
        .header("accept-language", "fr")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut response = HeaderMap::new();
    response.insert(http::header::VARY, HeaderValue::from_static("Accept-Language"));
    let kept = kept_request(&request, &response);
    assert_eq!(kept.headers.len(), 2);
    assert_eq!(kept.headers["accept-language"], "fr");
    assert_eq!(kept.headers["host"], "example.com");
}
