//! gRPC end to end: a real gRPC server and client (tonic) with lb between them, TLS on both sides,
//! HTTP/2 to the server: unary and server-streaming calls, statuses carried in trailers, deadlines,
//! an error status passed through; and the `grpc` health-check type against the server's
//! `grpc.health.v1` service.

mod common;

use common::pki::Pki;
use common::{eventually, Lb};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

/// `grpc.health.v1.HealthCheckRequest` / `HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A server-side gRPC handler for one pair of message types.
fn grpc<E, D>() -> tonic::server::Grpc<tonic_prost::ProstCodec<E, D>>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
}

/// `test.Echo` (Say: unary; Count: server streaming; Fail: an error status; Slow: sleeps `n` ms)
/// and `grpc.health.v1.Health/Check`, which answers SERVING while `serving` is 1, else NOT_SERVING.
#[derive(Clone)]
struct Service {
    serving: Arc<AtomicU64>,
}

impl tonic::server::NamedService for Service {
    const NAME: &'static str = "test.Echo";
}

/// The same service routed under the health-checking protocol's name (tonic routes by service).
#[derive(Clone)]
struct Health(Service);

impl tonic::server::NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tower::Service<http::Request<tonic::body::Body>> for Health {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.call(req)
    }
}

struct Unary<F>(F);

impl<F, Req, Resp> tonic::server::UnaryService<Req> for Unary<F>
where
    F: Fn(Req) -> Result<Resp, tonic::Status> + Clone + Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Result<tonic::Response<Resp>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Req>) -> Self::Future {
        let f = self.0.clone();
        Box::pin(async move { f(req.into_inner()).map(tonic::Response::new) })
    }
}

struct Slow;

impl tonic::server::UnaryService<Msg> for Slow {
    type Response = Msg;
    type Future = BoxFuture<Result<tonic::Response<Msg>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let msg = req.into_inner();
            tokio::time::sleep(Duration::from_millis(u64::from(msg.n))).await;
            Ok(tonic::Response::new(msg))
        })
    }
}

struct Count;

impl tonic::server::ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = futures_util::stream::BoxStream<'static, Result<Msg, tonic::Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let msg = req.into_inner();
        Box::pin(async move {
            let items = (0..msg.n).map(move |i| Ok(Msg { text: msg.text.clone(), n: i }));
            let stream: Self::ResponseStream = Box::pin(futures_util::stream::iter(items));
            Ok(tonic::Response::new(stream))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Service {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let serving = Arc::clone(&self.serving);
        Box::pin(async move {
            let resp = match req.uri().path() {
                "/test.Echo/Say" => {
                    grpc::<Msg, Msg>()
                        .unary(Unary(|m: Msg| Ok(Msg { text: format!("echo {}", m.text), n: m.n })), req)
                        .await
                }
                "/test.Echo/Fail" => {
                    grpc::<Msg, Msg>()
                        .unary(Unary(|m: Msg| Err::<Msg, _>(tonic::Status::not_found(m.text))), req)
                        .await
                }
                "/test.Echo/Slow" => grpc::<Msg, Msg>().unary(Slow, req).await,
                "/test.Echo/Count" => grpc::<Msg, Msg>().server_streaming(Count, req).await,
                "/grpc.health.v1.Health/Check" => {
                    let check = move |r: HealthCheckRequest| {
                        if !r.service.is_empty() && r.service != "test.Echo" {
                            return Err(tonic::Status::not_found("unknown service"));
                        }
                        let status = if serving.load(Ordering::SeqCst) == 1 { 1 } else { 2 };
                        Ok(HealthCheckResponse { status })
                    };
                    grpc::<HealthCheckResponse, HealthCheckRequest>().unary(Unary(check), req).await
                }
                _ => tonic::Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

/// The gRPC server, over TLS with a certificate for `backend.test`.
async fn server(pki: &Pki) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    // tonic's TLS takes rustls's process-wide provider, which more than one crypto backend in
    // the build leaves unset.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = pki.issue("grpc-backend", &["backend.test"]);
    let serving = Arc::new(AtomicU64::new(1));
    let service = Service { serving: Arc::clone(&serving) };
    let health = Health(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let incoming = tokio_stream_listener(listener);
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    (addr, serving)
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

/// lb over TLS (a certificate for `lb.test`) in front of the gRPC server, HTTP/2 to it.
async fn balancer(pki: &Pki, backend: std::net::SocketAddr, health: &str) -> Lb {
    let cert = pki.issue("grpc-lb", &["lb.test"]);
    Lb::start(&format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n\n\
         [pools.grpc]\nservers = [{{ name = \"g\", addr = \"{backend}\" }}]\n\
         [pools.grpc.tls]\nca = {:?}\nserver_name = \"backend.test\"\nhttp2 = true\n{health}\n\
         [pools.grpc.passive]\nenabled = false\n",
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        pki.ca_path.display().to_string(),
    ))
    .await
}

async fn client(pki: &Pki, lb: &Lb) -> tonic::client::Grpc<Channel> {
    let ca = Certificate::from_pem(std::fs::read(&pki.ca_path).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("lb.test");
    let channel = Channel::from_shared(format!("https://{}", lb.addr)).unwrap().tls_config(tls).unwrap();
    tonic::client::Grpc::new(channel.connect().await.unwrap())
}

async fn call<Resp: prost::Message + Default + Send + 'static>(
    grpc: &mut tonic::client::Grpc<Channel>,
    method: &'static str,
    req: tonic::Request<Msg>,
) -> Result<tonic::Response<Resp>, tonic::Status> {
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(req, path, tonic_prost::ProstCodec::default()).await
}

#[tokio::test]
async fn unary_and_streaming_calls_statuses_and_deadlines_pass_through_lb() {
    let pki = Pki::new("grpc");
    let (backend, _) = server(&pki).await;
    let lb = balancer(&pki, backend, "").await;
    let mut grpc = client(&pki, &lb).await;

    let said: tonic::Response<Msg> =
        call(&mut grpc, "/test.Echo/Say", tonic::Request::new(Msg { text: "hi".into(), n: 7 }))
            .await
            .unwrap();
    assert_eq!(said.into_inner(), Msg { text: "echo hi".into(), n: 7 });

    // A server error status, in the trailers, reaches the client with its message.
    let failed =
        call::<Msg>(&mut grpc, "/test.Echo/Fail", tonic::Request::new(Msg { text: "gone".into(), n: 0 }))
            .await;
    let status = failed.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "gone"));
    let missing = call::<Msg>(&mut grpc, "/test.Echo/Nope", tonic::Request::new(Msg::default())).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::Unimplemented);

    // Server streaming: every message, then the OK status from the trailers.
    grpc.ready().await.unwrap();
    let stream = grpc
        .server_streaming(
            tonic::Request::new(Msg { text: "x".into(), n: 50 }),
            http::uri::PathAndQuery::from_static("/test.Echo/Count"),
            tonic_prost::ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap();
    let mut stream = stream.into_inner();
    let mut got = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        got.push(msg.n);
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());

    // A deadline shorter than the call: the server gives up (grpc-timeout travels through lb).
    let mut slow = tonic::Request::new(Msg { text: "slow".into(), n: 3_000 });
    slow.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = call::<Msg>(&mut grpc, "/test.Echo/Slow", slow).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the deadline was not kept");
}

#[tokio::test]
async fn a_grpc_health_check_follows_the_servers_serving_status() {
    let pki = Pki::new("grpc-health");
    let (backend, serving) = server(&pki).await;
    let health = "[pools.grpc.health]\ntype = \"grpc\"\ngrpc_service = \"test.Echo\"\ninterval = \"50ms\"\nrise = 1\nfall = 1\n";
    let lb = balancer(&pki, backend, health).await;
    let up = |lb: &Lb| {
        let status = lb.runtime.snapshot();
        !status.pools[0].upstreams[0].stats.health.is_down()
    };
    eventually(Duration::from_secs(5), || async { up(&lb) }).await;
    serving.store(0, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { !up(&lb) }).await;
    serving.store(1, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { up(&lb) }).await;
}

#[test]
fn a_grpc_check_on_a_tls_pool_needs_http2() {
    let pki = Pki::new("grpc-config");
    let toml = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.g]\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n\
         [pools.g.tls]\nca = {:?}\n[pools.g.health]\ntype = \"grpc\"\n",
        pki.ca_path.display().to_string()
    );
    let err = lb::config::Config::from_toml(&toml).unwrap_err().to_string();
    assert!(err.contains("pools.g.health.type: \"grpc\" needs HTTP/2"), "{err}");
    let err = lb::config::Config::from_toml(&toml.replace("type = \"grpc\"", "grpc_service = \"x\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pools.g.health.grpc_service: only applies to type = \"grpc\""), "{err}");
}
