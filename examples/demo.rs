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
use std::convert::Infallible;
use std::net::SocketAddr;

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
    let hint = |line: &str| match line.rsplit_once(':') {
        Some((_, port)) if line.starts_with("lb admin") => {
            println!(
                "{line} -- open it in a browser for the console, or try: curl -s localhost:{port}/status"
            )
        }
        Some((_, port)) => println!("{line} -- try: curl -s localhost:{port}/"),
        None => println!("{line}"),
    };
    lb::launch::run(path.into(), config, &hint).await?;
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
