//! Reading certificates, keys and CA bundles from PEM files, at config validation: every problem is
//! a message naming the file, so a bad file fails `lb check` and a reload, never a handshake.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Largest PEM file read (a long chain is a few dozen KiB).
const MAX_PEM: u64 = 1 << 20;

/// A certificate chain with its key, checked to match and to be valid now.
#[derive(Clone)]
pub struct LoadedCert {
    /// The chain's file, as configured.
    pub cert_path: String,
    /// The key's file, as configured.
    pub key_path: String,
    /// DNS names the leaf certificate is valid for (its subjectAltNames, else its CN), lowercase;
    /// wildcards as `*.example.com`.
    pub names: Vec<String>,
    /// The leaf's notAfter, in Unix seconds.
    pub not_after: i64,
    /// The chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the chain and key files: tells a changed file apart.
    pub digest: [u8; 32],
}

impl PartialEq for LoadedCert {
    fn eq(&self, other: &Self) -> bool {
        (&self.cert_path, &self.key_path, self.digest) == (&other.cert_path, &other.key_path, other.digest)
    }
}

impl std::fmt::Debug for LoadedCert {
    // The key never appears in logs or debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert", &self.cert_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads a regular file of at most [`MAX_PEM`] bytes.
fn read(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cannot read {path}: not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!("{path}: larger than {MAX_PEM} bytes"));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one).
pub fn certificates(path: &str) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate found (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok((certs, bytes))
}

/// A chain and its key: parsed, matched, and valid at `now` (Unix seconds).
pub fn cert_and_key(cert_path: &str, key_path: &str, now: i64) -> Result<LoadedCert, String> {
    let (chain, cert_bytes) = certificates(cert_path)?;
    let key_bytes = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("{key_path}: no private key found (PKCS#8, PKCS#1 or SEC1 PEM): {e}"))?;
    let leaf = leaf_info(cert_path, &chain[0], now)?;
    let provider = super::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_path}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(format!("{key_path}: this key does not match the certificate in {cert_path}")),
    }
    let digest = crate::config::Digest::of(&[&cert_bytes, &key_bytes]).0;
    Ok(LoadedCert {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        names: leaf.names,
        not_after: leaf.not_after,
        key: Arc::new(certified),
        digest,
    })
}

struct Leaf {
    names: Vec<String>,
    not_after: i64,
}

/// The leaf's names and validity, refusing a certificate that is expired or not yet valid.
fn leaf_info(path: &str, der: &CertificateDer<'_>, now: i64) -> Result<Leaf, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("{path}: unreadable certificate: {e}"))?;
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if now > not_after {
        return Err(format!("{path}: the certificate expired on {}", validity.not_after));
    }
    if now < not_before {
        return Err(format!("{path}: the certificate is not valid before {}", validity.not_before));
    }
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase),
        );
    }
    Ok(Leaf { names, not_after })
}
