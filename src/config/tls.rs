//! TLS options: `[listeners.tls]` (termination) and `[pools.NAME.tls]` (to upstreams). Every file
//! is read and checked here, so a bad one fails validation naming it, never a handshake.

use super::raw::{RawTls, RawUpstreamTls};
use super::validate::Issues;
use super::{ClientCa, Digest, TlsConfig, UpstreamTls};
use std::sync::Arc;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `[listeners.tls]`: every file read and checked now, so a bad one fails here, naming it.
pub(super) fn listener(base: &str, raw: &RawTls, out: &mut Issues<'_>) -> Option<TlsConfig> {
    let now = now();
    if raw.certificates.is_empty() {
        out.push(
            format!("{base}.certificates"),
            "at least one is required, e.g. [{ cert = \"site.pem\", key = \"site.key\" }]",
        );
        return None;
    }
    let mut certificates = Vec::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let path = format!("{base}.certificates[{i}]");
        let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
            out.push(path, "needs both cert (PEM chain, leaf first) and key (PEM private key)");
            continue;
        };
        match crate::tls::load::cert_and_key(cert, key, now) {
            Ok(loaded) => certificates.push(loaded),
            Err(e) => out.push(path, e),
        }
    }
    let required = match raw.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            out.push(
                format!("{base}.client_auth"),
                format!("{other:?}: expected \"required\" or \"optional\""),
            );
            true
        }
    };
    if raw.client_auth.is_some() && raw.client_ca.is_none() {
        out.push(format!("{base}.client_auth"), "only used with client_ca");
    }
    let client_ca = raw.client_ca.as_ref().and_then(|path| match client_ca(path, required) {
        Ok(ca) => Some(ca),
        Err(e) => {
            out.push(format!("{base}.client_ca"), e);
            None
        }
    });
    let hsts = raw.hsts.as_ref().and_then(|v| match http::HeaderValue::from_str(v) {
        Ok(value) if v.starts_with("max-age=") => Some(value),
        _ => {
            out.push(
                format!("{base}.hsts"),
                format!("{v:?}: expected e.g. \"max-age=31536000; includeSubDomains\""),
            );
            None
        }
    });
    (certificates.len() == raw.certificates.len()).then_some(TlsConfig { certificates, client_ca, hsts })
}

fn client_ca(path: &str, required: bool) -> Result<ClientCa, String> {
    let (roots, digest) = ca_roots(path)?;
    Ok(ClientCa { path: path.to_owned(), roots: Arc::new(roots), required, digest })
}

/// A CA bundle (client CAs, upstream CAs): every certificate in it must be a usable root.
fn ca_roots(path: &str) -> Result<(rustls::RootCertStore, [u8; 32]), String> {
    let (certs, bytes) = crate::tls::load::certificates(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
    }
    Ok((roots, Digest::of(&[&bytes]).0))
}

/// `[pools.NAME.tls]`: servers spoken to over TLS, verified against `ca` (default: the system's
/// roots), with an optional client certificate and HTTP/2 by ALPN.
pub(super) fn upstream(base: &str, raw: &RawUpstreamTls, out: &mut Issues<'_>) -> Option<UpstreamTls> {
    let mut files = Vec::new();
    let roots = match &raw.ca {
        Some(path) => match ca_roots(path) {
            Ok((roots, digest)) => {
                files.push((path.clone(), digest));
                roots
            }
            Err(e) => {
                out.push(format!("{base}.ca"), e);
                return None;
            }
        },
        None => match crate::tls::system_roots() {
            Ok(roots) => roots,
            Err(e) => {
                out.push(format!("{base}.ca"), e);
                return None;
            }
        },
    };
    let server_name =
        raw.server_name.as_ref().and_then(|n| match rustls::pki_types::ServerName::try_from(n.as_str()) {
            Ok(_) => Some(n.clone()),
            Err(_) => {
                out.push(format!("{base}.server_name"), format!("{n:?} is not a DNS name or IP address"));
                None
            }
        });
    let client = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => match crate::tls::load::cert_and_key(cert, key, now()) {
            Ok(loaded) => {
                files.push((cert.clone(), loaded.digest));
                files.push((key.clone(), loaded.digest));
                Some(loaded)
            }
            Err(e) => {
                out.push(format!("{base}.cert"), e);
                return None;
            }
        },
        _ => {
            out.push(format!("{base}.cert"), "a client certificate needs both cert and key");
            return None;
        }
    };
    let http2 = raw.http2.unwrap_or(false);
    let config = match crate::tls::client_config(Arc::new(roots), client.as_ref(), http2) {
        Ok(c) => c,
        Err(e) => {
            out.push(base.to_owned(), e);
            return None;
        }
    };
    Some(UpstreamTls { ca: raw.ca.clone(), server_name, http2, config, files })
}

/// The host of `addr` must be a name or address TLS can verify (rustls is stricter than URI
/// syntax: no all-digit last label, no zone ids): a server lb could not verify is refused rather
/// than spoken to in the clear.
pub(super) fn verifiable_host(addr: &str) -> Result<(), String> {
    let authority: http::uri::Authority = addr.parse().map_err(|_| format!("{addr:?} is not host:port"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host)
        .map(|_| ())
        .map_err(|_| format!("{host:?} cannot be verified as a TLS server name"))
}
