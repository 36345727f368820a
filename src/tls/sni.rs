//! Choosing a listener's certificate by the client's SNI name: an exact name first, then the
//! wildcard one label up (`*.example.com` covers `a.example.com`, not `example.com` nor
//! `a.b.example.com`, as browsers match), else the first certificate (also for clients that send no
//! name, e.g. ones connecting by IP address).

use super::load::LoadedCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// A listener's certificates by name.
#[derive(Debug)]
pub struct Sni {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*` (`.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Sni {
    /// Indexes `certs` by their names; on a name two certificates share, the first listed wins.
    pub fn new(certs: &[LoadedCert]) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for cert in certs {
            for name in &cert.names {
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        wildcard.entry(suffix.to_owned()).or_insert_with(|| Arc::clone(&cert.key));
                    }
                    _ => {
                        exact.entry(name.clone()).or_insert_with(|| Arc::clone(&cert.key));
                    }
                }
            }
        }
        Self { exact, wildcard, default: certs.first().map(|c| Arc::clone(&c.key)) }
    }

    /// The certificate for `name` (already lowercase, as rustls hands it over).
    pub fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = name.and_then(|name| {
            self.exact.get(name).or_else(|| name.find('.').and_then(|dot| self.wildcard.get(&name[dot..])))
        });
        found.or(self.default.as_ref()).cloned()
    }
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}
