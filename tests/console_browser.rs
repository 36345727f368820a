//! The operators' console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver). The page loads without console errors, lists the pool's servers, and draining one
//! through its button (with the confirmation and the admin token typed into the page) moves traffic
//! off it and shows its new state. The test keeps screenshots in docs/ (console.png, and
//! console-phone.png at a phone's width) for docs/console.md.
//!
//! Needs Debian's `chromium` and `chromium-driver`. With `LB_REQUIRE_BROWSER` set (as `.ci/run` does)
//! their absence fails the test; otherwise it is skipped with a message.

mod common;

use common::{client, get, Backend, LbProcess};
use fantoccini::{wd::WebDriverCompatibleCommand, Client, ClientBuilder, Locator};
use http::StatusCode;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "console-test-token-0123";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        // A port free a moment ago; chromedriver cannot be handed a bound socket.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        // Ready once its /status says so (bounded poll).
        let status = format!("{}/status", driver.url);
        common::eventually(Duration::from_secs(20), || {
            let status = status.clone();
            async move {
                match client().get(status.parse().unwrap()).await {
                    Ok(resp) => resp.status() == StatusCode::OK,
                    Err(_) => false,
                }
            }
        })
        .await;
        driver
    }
}

/// chromedriver's browser console log (`goog:loggingPrefs`), which W3C WebDriver has no command for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

async fn console_errors(browser: &Client) -> Vec<String> {
    let log = browser.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
                .map(|e| e["message"].to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `script` in the page every 50ms until it returns true, for at most 25s (the console's rates
/// span its last ten seconds of readings).
async fn page_until(browser: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if value == serde_json::Value::Bool(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "page never showed {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn browser_available() -> bool {
    let found = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !found {
        assert!(
            std::env::var_os("LB_REQUIRE_BROWSER").is_none(),
            "LB_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "chromium or chromedriver not installed: skipped the console browser test \
             (apt-get install chromium chromium-driver)"
        );
    }
    found
}

#[tokio::test]
async fn the_console_shows_the_pool_and_drains_a_server_from_the_browser() {
    if !browser_available() {
        return;
    }
    let apps = [Backend::start("app1").await, Backend::start("app2").await, Backend::start("app3").await];
    let servers: Vec<String> =
        apps.iter().map(|b| format!("{{ name = \"{}\", addr = \"{}\" }}", b.name, b.addr)).collect();
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[pools.app]\nstrategy = \"round_robin\"\nservers = [{}]\n\
         [pools.app.health]\npath = \"/health\"\ninterval = \"500ms\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        servers.join(", ")
    );
    let lb = LbProcess::start(&toml);
    let url = format!("http://{}/", lb.addr);

    // Light steady traffic (about 40 requests/s) so the page has rates and latencies to show.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let _ = get(&c, &url).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let driver = Driver::start().await;
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--hide-scrollbars"],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&driver.url)
        .await
        .expect("a browser session");

    browser.goto(&format!("http://{}/", lb.admin)).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "lb console");
    browser.wait().for_element(Locator::Css("tr[data-server=\"app3\"]")).await.unwrap();
    let rows = browser.find_all(Locator::Css("section[data-pool=\"app\"] tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 3, "one row per server of the pool");
    // Rates need two readings: wait for the second.
    page_until(&browser, "request rates", "return [...document.querySelectorAll('td[data-label=\"Req/s\"]')].every(td => td.textContent !== '–')").await;

    // The token, typed into the page, then Drain on app2 and its confirmation.
    browser.find(Locator::Id("token")).await.unwrap().send_keys(TOKEN).await.unwrap();
    browser.find(Locator::Id("token-save")).await.unwrap().click().await.unwrap();
    browser
        .find(Locator::Css("button[data-action=\"drain\"][data-server=\"app2\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let question = browser.get_alert_text().await.unwrap();
    assert!(question.contains("Drain server \u{201c}app2\u{201d}"), "{question}");
    browser.accept_alert().await.unwrap();

    page_until(&browser, "app2 drained", "const r = document.querySelector('tr[data-server=\"app2\"]'); return r !== null && r.dataset.state === 'drain';").await;
    let message = browser.find(Locator::Id("message")).await.unwrap().text().await.unwrap();
    assert_eq!(message, "app/app2 is now drain.");
    assert_eq!(lb.status().await["pools"][0]["servers"][1]["admin"], "drain");
    // New traffic avoids app2.
    let before = apps[1].seen.requests.load(Ordering::SeqCst);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let (status, body) = get(&client(), &url).await;
        assert_eq!(status, StatusCode::OK);
        *seen.entry(body).or_insert(0) += 1;
    }
    // (The background traffic shares the round-robin cursor, so the split between the two varies.)
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["app1", "app3"], "{seen:?}");
    assert_eq!(apps[1].seen.requests.load(Ordering::SeqCst), before, "no request reached app2");
    // Its rate falls to zero on the page once a reading spans only the drained time.
    page_until(&browser, "app2 at 0 requests/s", "return document.querySelector('tr[data-server=\"app2\"] td[data-label=\"Req/s\"]').textContent === '0.00'").await;

    let errors = console_errors(&browser).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");
    std::fs::write(format!("{docs}/console.png"), browser.screenshot().await.unwrap()).unwrap();

    // A phone's width: each server becomes a card, and nothing overflows sideways.
    browser.set_window_size(390, 1600).await.unwrap();
    page_until(
        &browser,
        "no sideways scrolling",
        "return document.documentElement.scrollWidth <= window.innerWidth;",
    )
    .await;
    std::fs::write(format!("{docs}/console-phone.png"), browser.screenshot().await.unwrap()).unwrap();
    assert!(console_errors(&browser).await.is_empty());

    browser.close().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
}
