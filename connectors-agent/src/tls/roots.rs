//! Trust towards tools: the system roots, plus a Connector's own CA certificates.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::TlsError;

/// The system's trusted roots, loaded once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "some system root certificates could not be loaded");
        }
        loaded.certs
    })
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// A client configuration trusting the system roots and `extra` CA certificates. (The HTTPS
/// connector sets ALPN.)
pub fn client_config(
    provider: Arc<CryptoProvider>,
    extra: &[CertificateDer<'static>],
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    for c in extra {
        roots
            .add(c.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate refused: {e}")))?;
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
