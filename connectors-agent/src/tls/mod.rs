//! TLS: the proxy's CA and leaf certificates towards workloads, and trust towards tools.

mod ca;
pub mod intermediate;
mod leaf;

use std::path::PathBuf;

pub use ca::CertAuthority;
pub use connectors_crd::tls::TrustError;
pub use leaf::LeafCertificates;

/// A client configuration trusting the system roots and `extra` CA certificates (shared with
/// the controller's probes).
pub fn client_config(
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsError> {
    Ok(connectors_crd::tls::client_config(provider, extra)?)
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_certs(
    pem: &[u8],
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    Ok(connectors_crd::tls::parse_pem_certs(pem)?)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA certificate and key: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("{present} exists but {missing} does not: give both CA files or neither")]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("cannot mint a certificate for '{host}': {reason}")]
    Mint { host: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Trust(#[from] TrustError),
}
