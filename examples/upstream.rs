//! A minimal, fast app server for the load benchmark: `upstream ADDR [ADDR...]` serves a short fixed
//! answer naming the address on each, over HTTP/1.1 keep-alive, on one runtime thread so that it
//! takes the same share of the machine whichever proxy is being measured.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn main() -> anyhow::Result<()> {
    let addrs: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!addrs.is_empty(), "usage: upstream ADDR [ADDR...]");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for addr in addrs {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let body = Bytes::from(format!("hello from {addr}\n"));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let body = body.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req| {
                            let body = Full::new(body.clone());
                            async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
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
