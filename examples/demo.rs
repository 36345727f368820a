//! The quick start: three demo app servers behind lb, from the shipped `lb.toml`.
//!
//! `cargo run --release --example demo` starts an app server on every loopback address that
//! `lb.toml` lists as a server (127.0.0.1:9001-9003 as shipped), then lb itself on :8080. Each app
//! answers with its name, so repeated `curl -s localhost:8080/` show the rotation. Ctrl-C stops both.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lb::config::Config;
use lb::runtime::Runtime;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let path = std::env::args().nth(1).unwrap_or_else(|| "lb.toml".to_owned());
    let config = Config::load(path.as_ref())?;
    for pool in &config.pools {
        for server in &pool.servers {
            let Ok(addr) = server.addr.parse::<SocketAddr>() else {
                continue;
            };
            if addr.ip().is_loopback() {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                println!("demo app {} on http://{addr}", server.name);
                tokio::spawn(app(listener, format!("hello from {} ({addr})\n", server.name)));
            }
        }
    }
    let listeners = lb::server::bind(&config).await?;
    for l in &listeners {
        println!(
            "lb listening on http://{} -- try: curl -s localhost:{}/",
            l.local_addr()?,
            l.local_addr()?.port()
        );
    }
    let admin_addr = config.admin;
    // The recorder must exist before the runtime registers its per-server metric handles.
    let metrics = admin_addr.and_then(|_| lb::metrics::install().ok());
    let runtime = Arc::new(Runtime::new(config));
    if let Some(addr) = admin_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("lb admin on http://{addr} -- try: curl -s localhost:{}/status", addr.port());
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let admin = lb::admin::Admin { runtime: Arc::clone(&runtime), metrics, ready };
        tokio::spawn(lb::admin::serve(listener, admin));
    }
    lb::server::serve(listeners, runtime, lb::server::shutdown_signal()).await;
    Ok(())
}

/// A tiny app server: answers every request with `greeting`.
async fn app(listener: tokio::net::TcpListener, greeting: String) {
    let greeting = Bytes::from(greeting);
    while let Ok((stream, _)) = listener.accept().await {
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = Full::new(greeting.clone());
                async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
