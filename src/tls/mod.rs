//! TLS with rustls: listeners that terminate TLS (certificates chosen by SNI, ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3 only, session resumption, optional client certificates), and the
//! handshake metrics. docs/tls.md says why the crypto provider is aws-lc-rs (measured handshake cost).
//!
//! Certificates are read and checked during config validation ([`load`]), so a missing file, a key
//! that does not match or an expired certificate fails `lb check` and a reload, never a handshake.
//! A listener's `rustls::ServerConfig` is rebuilt with each applied config and picked up by each new
//! connection, so a reload swaps certificates without touching open connections.

pub mod load;
pub mod sni;

use crate::config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier};
use rustls::ServerConfig;
use std::sync::{Arc, OnceLock};

/// Sessions remembered for TLS 1.2 resumption by id (TLS 1.3 uses tickets).
const SESSION_CACHE: usize = 8192;

/// The crypto provider every TLS config of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// Session-resumption state shared by every server config the process builds, so clients resume
/// across reloads too.
#[derive(Debug)]
pub struct Resumption {
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    /// A ticket key (rotated by rustls every 6 hours) and an in-memory session cache.
    pub fn new() -> Self {
        let ticketer = match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets: resumption by session id only");
                None
            }
        };
        Self { ticketer, cache: ServerSessionMemoryCache::new(SESSION_CACHE) }
    }
}

impl Default for Resumption {
    fn default() -> Self {
        Self::new()
    }
}

/// The rustls config of a TLS listener.
pub fn server_config(tls: &TlsConfig, resumption: &Resumption) -> Result<Arc<ServerConfig>, String> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&ca.roots), provider());
            let verifier = if ca.required { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{}: {e}", ca.path))?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(sni::Sni::new(&tls.certificates)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls.client_ca.is_some() {
        // A resumed session carries the client certificate (or its absence) of the session it came
        // from, possibly another listener's or an older CA's: every mTLS connection verifies a
        // certificate afresh.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    } else {
        if let Some(ticketer) = &resumption.ticketer {
            config.ticketer = Arc::clone(ticketer);
        }
        config.session_storage = Arc::clone(&resumption.cache);
    }
    Ok(Arc::new(config))
}

/// The system's trusted CA certificates (Debian: the `ca-certificates` package), for upstreams
/// without a configured `ca`. Read once per process.
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    // Only a success is kept: after installing ca-certificates, the next reload finds them.
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no system CA certificates found: install ca-certificates, or set ca".to_owned());
    }
    Ok(ROOTS.get_or_init(|| roots).clone())
}

/// The rustls config for connections to upstream servers: verified against `roots`, presenting
/// `client` if given, offering `h2` before `http/1.1` when `http2`.
pub fn client_config(
    roots: Arc<rustls::RootCertStore>,
    client: Option<&load::LoadedCert>,
    http2: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::clone(&c.key)))),
    };
    config.alpn_protocols =
        if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// How lb opens TLS to one upstream server.
#[derive(Debug)]
pub struct ClientTls {
    /// Roots, client certificate and ALPN.
    pub config: Arc<rustls::ClientConfig>,
    /// The same, offering only HTTP/1.1: health checks speak HTTP/1.1.
    pub probe: Arc<rustls::ClientConfig>,
    /// SNI sent and name verified.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl ClientTls {
    /// For a server at `host` (its `addr` without the port) of a pool with `tls`.
    pub fn new(tls: &crate::config::UpstreamTls, host: &str) -> Option<Self> {
        let name = tls.server_name.as_deref().unwrap_or(host).trim_start_matches('[').trim_end_matches(']');
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).ok()?;
        let mut probe = (*tls.config).clone();
        probe.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Self { config: Arc::clone(&tls.config), probe: Arc::new(probe), server_name })
    }

    /// A TLS session over `tcp`; `probe` picks the HTTP/1.1-only config.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        probe: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = if probe { &self.probe } else { &self.config };
        tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(self.server_name.clone(), tcp).await
    }
}

/// lb's certificate for upstreams that ask for one (mTLS).
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why a handshake failed, as a bounded label: `no_client_cert`, `bad_client_cert`, `incompatible`
/// (no common version or cipher suite, e.g. a TLS 1.1 client), `alert` (the client gave up, e.g.
/// on our certificate), `bad_message`, `timeout`, `eof` (closed mid-handshake), `io`, `other`.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_client_cert",
        Some(E::InvalidCertificate(_)) => "bad_client_cert",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert",
        Some(
            E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. },
        ) => "bad_message",
        Some(E::PeerMisbehaved(_)) => "bad_message",
        Some(_) => "other",
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        },
    }
}
