//! Server-side CPU of one full TLS handshake with rustls's two crypto providers, in memory (no
//! sockets), for the choice docs/tls.md explains.
//!
//! `cargo bench --bench handshake`. The server has an ECDSA P-256 certificate, as the load benchmark
//! does; clients never resume. Only the server's work is timed (creating its connection, reading the
//! client's flights, writing its own). `tls13-pq`: an aws-lc-rs client, which offers the hybrid
//! post-quantum key exchange X25519MLKEM768 that current browsers send.

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedProtocolVersion};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

struct Pair {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pair(server: CryptoProvider, client: CryptoProvider, version: &'static SupportedProtocolVersion) -> Pair {
    let (chain, key) = certificate();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).expect("root");
    let server = ServerConfig::builder_with_provider(Arc::new(server))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let mut client = ClientConfig::builder_with_provider(Arc::new(client))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    Pair { server: Arc::new(server), client: Arc::new(client) }
}

/// One full handshake; returns the time spent on the server's side.
fn handshake(p: &Pair) -> Duration {
    let mut c =
        ClientConnection::new(Arc::clone(&p.client), "a.test".try_into().expect("name")).expect("client");
    let start = Instant::now();
    let mut s = ServerConnection::new(Arc::clone(&p.server)).expect("server");
    let mut server_time = start.elapsed();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let start = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets().expect("server process");
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).expect("server write");
        }
        server_time += start.elapsed();
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client process");
        }
    }
    server_time
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_handshake");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let tls13 = &rustls::version::TLS13;
    let tls12 = &rustls::version::TLS12;
    let cases: [(&str, Pair); 5] = [
        ("tls13/ring", pair(ring::default_provider(), ring::default_provider(), tls13)),
        ("tls13/aws-lc-rs", pair(aws_lc_rs::default_provider(), ring::default_provider(), tls13)),
        ("tls13-pq/aws-lc-rs", pair(aws_lc_rs::default_provider(), aws_lc_rs::default_provider(), tls13)),
        ("tls12/ring", pair(ring::default_provider(), ring::default_provider(), tls12)),
        ("tls12/aws-lc-rs", pair(aws_lc_rs::default_provider(), ring::default_provider(), tls12)),
    ];
    for (name, p) in &cases {
        group.bench_function(*name, |b| b.iter_custom(|n| (0..n).map(|_| handshake(p)).sum()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
