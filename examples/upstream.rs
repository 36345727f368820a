//! A minimal, fast app server for the load benchmark:
//! `upstream [--body BYTES] [--cache-control VALUE] ADDR[+DELAYms] ...` serves a short fixed answer
//! naming the address on each (or a body of BYTES bytes, with `Cache-Control: VALUE` when given),
//! after DELAY milliseconds for an address given with one (a slow server), over HTTP/1.1 keep-alive, on one
//! runtime thread so that it takes the same share of the machine whichever proxy is being measured.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let (mut size, mut cache_control) = (None, None);
    loop {
        match args.peek().map(String::as_str) {
            Some("--body") => {
                args.next();
                size = Some(args.next().and_then(|n| n.parse::<usize>().ok()).context("--body BYTES")?);
            }
            Some("--cache-control") => {
                args.next();
                let value = args.next().context("--cache-control VALUE")?;
                cache_control = Some(hyper::header::HeaderValue::from_str(&value)?);
            }
            _ => break,
        }
    }
    let addrs: Vec<String> = args.collect();
    anyhow::ensure!(
        !addrs.is_empty(),
        "usage: upstream [--body BYTES] [--cache-control VALUE] ADDR[+DELAYms] [ADDR...]"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for arg in addrs {
            let (addr, delay) = match arg.split_once('+') {
                Some((addr, ms)) => {
                    let ms: u64 = ms.trim_end_matches("ms").parse().context("DELAY in ms")?;
                    (addr.to_owned(), std::time::Duration::from_millis(ms))
                }
                None => (arg, std::time::Duration::ZERO),
            };
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let body = match size {
                Some(n) => Bytes::from(vec![b'x'; n]),
                None => Bytes::from(format!("hello from {addr}\n")),
            };
            let cache_control = cache_control.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let (body, cache_control) = (body.clone(), cache_control.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req| {
                            let body = Full::new(body.clone());
                            let cache_control = cache_control.clone();
                            async move {
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                let mut resp = hyper::Response::new(body);
                                if let Some(value) = cache_control {
                                    resp.headers_mut().insert(hyper::header::CACHE_CONTROL, value);
                                }
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new();
                        let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            });
        }
        println!("ready");
        std::future::pending::<anyhow::Result<()>>().await
    })
}
