//! Trust towards tools, shared by the agent's proxy and the controller's probes: the system
//! roots, plus the CA certificates of a Connector's `caCertSecretRef`.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret as _;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("CA certificate refused: {0}")]
    Refused(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("client certificate: {0}")]
    ClientCertificate(String),
}

/// The system's trusted roots, loaded once.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
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
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TrustError::NoCertificate);
    }
    Ok(certs)
}

/// A client configuration trusting the system roots and `extra` CA certificates. ALPN is left
/// to the caller's HTTPS connector.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    extra: &[CertificateDer<'static>],
) -> Result<ClientConfig, TrustError> {
    client_config_with_identity(provider, extra, None)
}

/// As [`client_config`], presenting `identity` (a Connector's client certificate) when the
/// tool asks for one.
pub fn client_config_with_identity(
    provider: Arc<CryptoProvider>,
    extra: &[CertificateDer<'static>],
    identity: Option<&crate::credentials::ClientIdentity>,
) -> Result<ClientConfig, TrustError> {
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    for c in extra {
        roots
            .add(c.clone())
            .map_err(|e| TrustError::Refused(e.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let Some(identity) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = parse_pem_certs(identity.certificate_pem.as_bytes())
        .map_err(|_| TrustError::ClientCertificate("no PEM certificate in it".into()))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.expose_secret().as_bytes())
        .map_err(|_| TrustError::ClientCertificate("no PEM private key in it".into()))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| TrustError::ClientCertificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificate_is_refused() {
        assert_eq!(
            parse_pem_certs(b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap_err(),
            TrustError::NoCertificate
        );
    }

    #[test]
    fn config_with_system_roots_builds() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        client_config(provider, &[]).unwrap();
    }
}
