//! TLS (rustls) for the listeners, with a certificate that can be replaced while serving.
//!
//! Each TLS listener's `ServerConfig` asks a [`TlsIdentity`] for its certificate at every
//! handshake. [`TlsIdentity::read_again`] and [`TlsIdentity::install`] read the files again and swap the new certificate and
//! key in (`arc-swap`) only if they load and match: new handshakes get the new certificate,
//! connections already open keep theirs, and a bad file leaves the old one in place.

use crate::config::TlsFiles;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key, and checks that they belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no certificate found",
            cert.display()
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    CertifiedKey::from_der(certs, private, &provider()).map_err(|e| {
        format!(
            "TLS certificate {} and key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// A listener's certificate and key, read from their files, replaceable while serving.
pub struct TlsIdentity {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsIdentity({})", self.files.cert.display())
    }
}

impl TlsIdentity {
    /// Reads `files`; an error says which file is wrong and why.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, String> {
        let key = load(&files.cert, &files.key)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Reads the files again, checked as at start, without serving them yet.
    pub fn read_again(&self) -> Result<CertifiedKey, String> {
        load(&self.files.cert, &self.files.key)
    }

    /// Serves `key` (from [`read_again`](Self::read_again)) from the next handshake on;
    /// connections already open keep the certificate they were made with.
    pub fn install(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// Where the certificate is read from, for logs.
    pub fn cert_file(&self) -> &Path {
        &self.files.cert
    }

    /// An acceptor offering h2 and http/1.1 whose handshakes use the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for TlsIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads a PEM certificate chain and private key into a TLS acceptor offering h2 and
/// http/1.1 (`check-config`, and listeners that are never reloaded).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    TlsIdentity::load(&TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
    })?
    .acceptor()
}
