//! TLS: the proxy's CA and leaf certificates towards workloads, and trust towards tools.

mod ca;
mod leaf;
mod roots;

use std::path::PathBuf;

pub use ca::CertAuthority;
pub use leaf::LeafCertificates;
pub use roots::{client_config, parse_pem_certs};

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
    #[error("no PEM certificate found")]
    NoCertificate,
}
