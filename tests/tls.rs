//! TLS termination with certificates made at test time: SNI, ALPN (h2 and HTTP/1.1), old versions
//! refused, client certificates, HSTS and the https redirect, and certificate swaps on reload.

mod common;

use bytes::Bytes;
use common::pki::{connect, Issued, Pki};
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `[[listeners]]` on port 0 with TLS from `certs` (plus `tls_extra` in its table), and pool `web`.
fn tls_config(backend: SocketAddr, certs: &[&Issued], tls_extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                c.cert.display().to_string(),
                c.key.display().to_string()
            )
        })
        .collect();
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{}]\n{tls_extra}\n\n\
         [pools.web]\nservers = [{{ name = \"a\", addr = \"{backend}\" }}]\n",
        list.join(", ")
    )
}

/// One GET / over an established TLS stream, with HTTP/2 if ALPN chose it, else HTTP/1.1.
async fn get_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (StatusCode, http::HeaderMap, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let req = Request::get("https://a.test/").header("host", "a.test").body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("https://a.test/").body(Empty::<Bytes>::new()).unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn peer_leaf(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn sni_picks_the_chain_and_h2_and_http1_clients_are_served() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("sni");
    let default = pki.issue("default", &["default.test"]);
    let exact = pki.issue("exact", &["a.test"]);
    let wildcard = pki.issue("wildcard", &["*.b.test"]);
    let lb = Lb::start(&tls_config(backend.addr, &[&default, &exact, &wildcard], "")).await;
    let both = pki.client_config(&["h2", "http/1.1"], None);

    for (sni, want) in
        [("a.test", &exact), ("x.b.test", &wildcard), ("b.test", &default), ("other.test", &default)]
    {
        // A client that does not trust the default for its name fails verification: accept it
        // by checking the leaf directly instead of the name.
        let config = if std::ptr::eq(want, &default) { insecure(&pki) } else { both.clone() };
        let tls = connect(lb.addr, sni, config).await.unwrap();
        assert_eq!(peer_leaf(&tls), want.der.to_vec(), "SNI {sni}");
    }

    let tls = connect(lb.addr, "a.test", both).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 offered first, and chosen");
    let (status, _, body) = get_over(tls).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));

    let tls = connect(lb.addr, "a.test", pki.client_config(&["http/1.1"], None)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, body) = get_over(tls).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    let no_alpn = pki.client_config(&[], None);
    let tls = connect(lb.addr, "a.test", no_alpn.clone()).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "a client without ALPN gets HTTP/1.1");
    // The session ticket arrives after the handshake: reading the answer stores it.
    assert_eq!(get_over(tls).await.0, StatusCode::OK);
    let tls = connect(lb.addr, "a.test", no_alpn).await.unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "session resumed");
    assert_eq!(get_over(tls).await.0, StatusCode::OK);
    assert_eq!(backend.last_head().headers["x-forwarded-proto"], "https");
}

/// Trusts the CA but not the name: for connections whose SNI the served certificate does not carry.
fn insecure(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyName(std::sync::Arc<rustls::client::WebPkiServerVerifier>);
    impl rustls::client::danger::ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &rustls::pki_types::CertificateDer<'_>,
            intermediates: &[rustls::pki_types::CertificateDer<'_>],
            _name: &rustls::pki_types::ServerName<'_>,
            ocsp: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            let name = rustls::pki_types::ServerName::try_from("default.test").unwrap();
            self.0.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyName(verifier)))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A TLS 1.1 ClientHello (legacy version 3.2, no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // TLS_RSA_WITH_AES_128/256_CBC_SHA
    hello.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused_and_tls_1_2_works() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("versions");
    let cert = pki.issue("site", &["a.test"]);
    let lb = Lb::start(&tls_config(backend.addr, &[&cert], "")).await;

    let mut tcp = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert_eq!(answer.first(), Some(&0x15), "an alert, not a ServerHello: {answer:02x?}");
    assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:02x?}");
    // handshake_failure (40) or protocol_version (70): either way no TLS 1.1 session exists.
    assert!(matches!(answer.get(6), Some(40 | 70)), "{answer:02x?}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = connect(lb.addr, "a.test", std::sync::Arc::new(tls12)).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(get_over(tls).await.0, StatusCode::OK);
}

/// Whether a TLS connection attempt was refused. In TLS 1.3 the client finishes its side first, so a
/// refused client certificate arrives as an alert on the first read.
async fn refused(attempt: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>) -> bool {
    match attempt {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    }
}

#[tokio::test]
async fn client_certificates_from_the_configured_ca_are_required() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("mtls");
    let site = pki.issue("site", &["a.test"]);
    let good = pki.issue("client", &["client.test"]);
    let foreign = Pki::new("foreign").issue("intruder", &["client.test"]);
    let ca = format!("client_ca = {:?}", pki.ca_path.display().to_string());
    let lb = Lb::start(&tls_config(backend.addr, &[&site], &ca)).await;

    let tls = connect(lb.addr, "a.test", pki.client_config(&["http/1.1"], Some(&good))).await.unwrap();
    assert_eq!(get_over(tls).await.0, StatusCode::OK, "a client certificate from the CA is let in");
    for (who, config) in [
        ("no certificate", pki.client_config(&["http/1.1"], None)),
        ("a foreign certificate", pki.client_config(&["http/1.1"], Some(&foreign))),
    ] {
        assert!(refused(connect(lb.addr, "a.test", config).await).await, "{who} is refused");
    }
    assert_eq!(backend.requests(), 1, "only the good client reached the server");
}

#[tokio::test]
async fn hsts_is_added_and_the_redirect_listener_sends_clients_to_https() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("hsts");
    let cert = pki.issue("site", &["a.test"]);
    let mut toml = tls_config(backend.addr, &[&cert], "hsts = \"max-age=31536000; includeSubDomains\"");
    toml = toml.replacen(
        "[pools.web]",
        "[[listeners]]\naddr = \"127.0.0.2:0\"\nredirect_https = true\nhttps_port = 8443\n\n[pools.web]",
        1,
    );
    let lb = Lb::start(&toml).await;
    let tls = connect(lb.addr, "a.test", pki.client_config(&["h2"], None)).await.unwrap();
    let (status, headers, _) = get_over(tls).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["strict-transport-security"], "max-age=31536000; includeSubDomains");

    let plain = lb.server.listeners()[1].1;
    let answer = raw(
        plain,
        b"POST /pay?x=1 HTTP/1.1\r\nhost: shop.test:8080\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("location: https://shop.test:8443/pay?x=1"), "{answer}");
    assert_eq!(backend.requests(), 1, "the redirect listener proxies nothing");
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections_while_old_ones_keep_working() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("swap");
    let old = pki.issue("old", &["a.test"]);
    let new = pki.issue("new", &["a.test"]);
    let lb = Lb::start(&tls_config(backend.addr, &[&old], "")).await;
    let config = pki.client_config(&["http/1.1"], None);
    let tls = connect(lb.addr, "a.test", config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&tls), old.der.to_vec());
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);

    let mut next = lb::config::Config::from_toml(&tls_config(backend.addr, &[&new], "")).unwrap();
    // The listener keeps its (port 0) address: the same socket is kept.
    next.listeners[0].addr = lb.runtime.snapshot().config.listeners[0].addr;
    let bound = lb.server.prepare(&next).await.unwrap();
    lb.runtime.apply(next);
    lb.server.commit(bound);

    let fresh = connect(lb.addr, "a.test", config).await.unwrap();
    assert_eq!(peer_leaf(&fresh), new.der.to_vec(), "a new connection gets the new certificate");
    let req = Request::get("/").header("host", "a.test").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the connection from before the swap still works");
}

#[test]
fn lb_check_names_the_file_of_a_bad_key_or_an_expired_certificate() {
    let pki = Pki::new("check");
    let site = pki.issue("site", &["a.test"]);
    let other = pki.issue("other", &["b.test"]);
    let expired = pki.issue_with("expired", &["a.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let mismatched = Issued {
        cert: site.cert.clone(),
        key: other.key.clone(),
        der: site.der.clone(),
        cert_pem: String::new(),
        key_pem: String::new(),
    };
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (certs, expect) in [
        (
            vec![&mismatched],
            format!(
                "{}: this key does not match the certificate in {}",
                other.key.display(),
                site.cert.display()
            ),
        ),
        (vec![&expired], format!("{}: the certificate expired on", expired.cert.display())),
    ] {
        let file = pki.dir.path().join("lb.toml");
        std::fs::write(&file, tls_config(backend, &certs, "")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["check", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("listeners[0].tls.certificates[0]: "), "{err}");
        assert!(err.contains(&expect), "{err}");
    }
}

#[tokio::test]
async fn replacing_the_certificate_files_is_noticed_and_counted_in_metrics() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("files");
    let first = pki.issue("site", &["a.test"]);
    let lb = LbProcess::start(
        &tls_config(backend.addr, &[&first], "")
            .replace("[pools.web]", "[reload]\ndebounce = \"50ms\"\n\n[pools.web]"),
    );
    let config = pki.client_config(&["http/1.1"], None);
    let tls = connect(lb.addr, "a.test", config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&tls), first.der.to_vec());
    drop(tls);

    // A renewal: new files written aside, then renamed over the old ones (as certbot and editors do).
    let renewed = pki.issue("renewed", &["a.test"]);
    std::fs::rename(&renewed.key, &first.key).unwrap();
    std::fs::rename(&renewed.cert, &first.cert).unwrap();
    let (addr, want) = (lb.addr, renewed.der.to_vec());
    eventually(std::time::Duration::from_secs(10), || {
        let (config, want) = (config.clone(), want.clone());
        async move { connect(addr, "a.test", config).await.is_ok_and(|tls| peer_leaf(&tls) == want) }
    })
    .await;
    assert_eq!(lb.status().await["config"]["last_reload"]["trigger"], "file");

    let ok = lb.metric(&format!("lb_tls_handshakes_total{{listener=\"{}\",result=\"ok\"}}", lb.addr)).await;
    assert!(ok.is_some_and(|n| n >= 2.0), "{ok:?}");
    let expiry = format!(
        "lb_tls_certificate_expiry_timestamp_seconds{{listener=\"127.0.0.1:0\",cert=\"{}\"}}",
        first.cert.display()
    );
    let not_after = lb.metric(&expiry).await.expect("an expiry per certificate");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(not_after > now, "{not_after} is in the future");
}

/// Pool `web` with one TLS server and `[pools.web.tls]` settings `tls`, behind a plain listener.
fn upstream_tls_config(server: SocketAddr, tls: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[pools.web]\nservers = [{{ name = \"a\", addr = \"{server}\" }}]\n\
         [pools.web.tls]\n{tls}\n{extra}\n[pools.web.passive]\nenabled = false\n"
    )
}

fn path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn upstream_https_with_a_private_ca_works_over_h1_and_h2_and_a_wrong_ca_gives_502() {
    let pki = Pki::new("upstream");
    let cert = pki.issue("backend", &["backend.test", "127.0.0.1"]);
    let backend = Backend::start_tls("a", cert.server_config(None)).await;
    let ca = format!("ca = {}", path(&pki.ca_path));

    // Checked over TLS too: the server starts down and comes up once an HTTPS check passes.
    let health =
        "[pools.web.health]\npath = \"/health\"\ninterval = \"50ms\"\ninitial = \"down\"\nrise = 1\n";
    let lb = Lb::start(&upstream_tls_config(backend.addr, &ca, health)).await;
    let up = lb.runtime.snapshot();
    let server = std::sync::Arc::clone(&up.pools[0].upstreams[0]);
    eventually(std::time::Duration::from_secs(10), || {
        let server = std::sync::Arc::clone(&server);
        async move { server.is_ready() }
    })
    .await;
    assert_eq!(get(&client(), &lb.url("/")).await, (StatusCode::OK, "a".to_owned()));
    drop(lb); // its health checks stop
    let head =
        backend.seen.heads.lock().unwrap().iter().rev().find(|h| h.uri.path() == "/").cloned().unwrap();
    assert_eq!(head.version, http::Version::HTTP_11);

    let named = format!("{ca}\nserver_name = \"backend.test\"\nhttp2 = true");
    let lb = Lb::start(&upstream_tls_config(backend.addr, &named, "")).await;
    let grpc_like =
        Request::post(lb.url("/")).header("te", "trailers").body(http_body_util::Full::new(Bytes::new()));
    let resp = client().request(grpc_like.unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The last proxied request (the first lb's health checks keep arriving on /health).
    let head =
        backend.seen.heads.lock().unwrap().iter().rev().find(|h| h.uri.path() == "/").cloned().unwrap();
    assert_eq!(head.version, http::Version::HTTP_2, "h2 chosen by ALPN");
    assert_eq!(head.headers["te"], "trailers", "kept for HTTP/2 upstreams, as gRPC needs");
    assert!(head.headers.get("host").is_none(), ":authority is the only host on HTTP/2");
    // The server's one HTTP/2 connection carries every later request, concurrent ones too.
    let opened = backend.connections();
    let (c, url) = (client(), lb.url("/"));
    let all = futures_util::future::join_all((0..5).map(|_| get(&c, &url))).await;
    assert!(all.iter().all(|(s, _)| *s == StatusCode::OK), "{all:?}");
    assert_eq!(backend.connections(), opened, "no new connection for them");

    let other = Pki::new("other");
    let wrong = format!("ca = {}", path(&other.ca_path));
    let lb = Lb::start(&upstream_tls_config(backend.addr, &wrong, "")).await;
    let proxied = || backend.seen.heads.lock().unwrap().iter().filter(|h| h.uri.path() == "/").count();
    let seen = proxied();
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(proxied(), seen, "nothing reached a server lb could not verify");
}

#[tokio::test]
async fn lb_presents_its_client_certificate_to_upstreams_that_require_one() {
    let pki = Pki::new("upstream-mtls");
    let cert = pki.issue("backend", &["127.0.0.1"]);
    let lb_cert = pki.issue("lb-client", &["lb.test"]);
    let backend = Backend::start_tls("a", cert.server_config(Some(&pki))).await;
    let ca = format!("ca = {}", path(&pki.ca_path));
    let with_cert = format!("{ca}\ncert = {}\nkey = {}", path(&lb_cert.cert), path(&lb_cert.key));
    let lb = Lb::start(&upstream_tls_config(backend.addr, &with_cert, "")).await;
    assert_eq!(get(&client(), &lb.url("/")).await, (StatusCode::OK, "a".to_owned()));
    let lb = Lb::start(&upstream_tls_config(backend.addr, &ca, "")).await;
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::BAD_GATEWAY, "no client certificate");
}

#[tokio::test]
async fn a_session_from_a_listener_without_client_certificates_does_not_open_one_that_requires_them() {
    let backend = Backend::start("a").await;
    let pki = Pki::new("resume");
    let site = pki.issue("site", &["a.test"]);
    let open = tls_config(backend.addr, &[&site], "");
    let ca = format!("client_ca = {:?}", pki.ca_path.display().to_string());
    let strict = format!(
        "[[listeners]]\naddr = \"127.0.0.2:0\"\n[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n{ca}\n\n",
        site.cert.display().to_string(),
        site.key.display().to_string()
    );
    let lb = Lb::start(&open.replacen("[pools.web]", &format!("{strict}[pools.web]"), 1)).await;
    let mtls_addr = lb.server.listeners()[1].1;
    let no_cert = pki.client_config(&["http/1.1"], None);
    let tls = connect(lb.addr, "a.test", no_cert.clone()).await.unwrap();
    assert_eq!(get_over(tls).await.0, StatusCode::OK, "the open listener serves, and hands out a ticket");
    let attempt = connect(mtls_addr, "a.test", no_cert).await;
    if let Ok(tls) = &attempt {
        assert_ne!(tls.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }
    assert!(
        refused(attempt).await,
        "the ticket from the open listener does not stand in for a client certificate"
    );
}

#[tokio::test]
async fn a_reload_that_changes_upstream_tls_never_reuses_a_connection_made_under_the_old_settings() {
    let pki = Pki::new("rotate");
    let cert = pki.issue("backend", &["127.0.0.1"]);
    let backend = Backend::start_tls("a", cert.server_config(None)).await;
    let lb = Lb::start(&upstream_tls_config(backend.addr, &format!("ca = {}", path(&pki.ca_path)), "")).await;
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::OK, "a verified connection is pooled");

    let other = Pki::new("other-ca");
    let wrong = format!("ca = {}", path(&other.ca_path));
    let mut next = lb::config::Config::from_toml(&upstream_tls_config(backend.addr, &wrong, "")).unwrap();
    next.listeners[0].addr = lb.runtime.snapshot().config.listeners[0].addr;
    let bound = lb.server.prepare(&next).await.unwrap();
    lb.runtime.apply(next);
    lb.server.commit(bound);
    // A new client connection takes the new settings: the pooled upstream connection, verified
    // under the old CA, must not serve it.
    assert_eq!(get(&client(), &lb.url("/")).await.0, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_tcp_check_of_a_tls_pool_includes_the_handshake() {
    let pki = Pki::new("tcp-check");
    let cert = pki.issue("backend", &["127.0.0.1"]);
    let backend = Backend::start_tls("a", cert.server_config(None)).await;
    let stranger = Pki::new("stranger");
    let wrong = format!("ca = {}", path(&stranger.ca_path));
    let check = "[pools.web.health]\ntype = \"tcp\"\ninterval = \"50ms\"\nfall = 1\n";
    let lb = Lb::start(&upstream_tls_config(backend.addr, &wrong, check)).await;
    let server = std::sync::Arc::clone(&lb.runtime.snapshot().pools[0].upstreams[0]);
    eventually(std::time::Duration::from_secs(10), || {
        let server = std::sync::Arc::clone(&server);
        async move { !server.is_ready() }
    })
    .await;
}
