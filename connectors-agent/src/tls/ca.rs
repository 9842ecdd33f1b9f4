//! The certificate authority whose leaf certificates the proxy presents to workloads.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// A CA certificate and its signing key: a root (standalone mode), or an intermediate issued to
/// this agent by the controller (Kubernetes mode), which then sends it after each leaf.
pub struct CertAuthority {
    pub(super) issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// Certificates sent after a leaf: the intermediate itself, or nothing for a root.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// What workloads must trust (PEM): the root, or the roots the controller publishes.
    trust_pem: String,
    /// When this CA stops being valid (leaves never outlive it).
    pub(super) not_after: Option<OffsetDateTime>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Loads the CA from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| TlsError::Read {
            path: cert.to_owned(),
            source: e,
        })?;
        let key_pem = std::fs::read_to_string(key).map_err(|e| TlsError::Read {
            path: key.to_owned(),
            source: e,
        })?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| TlsError::BadCa {
            path: cert.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self {
            issuer,
            cert_der: der,
            cert_pem: cert_pem.to_owned(),
            chain: Vec::new(),
            trust_pem: cert_pem.to_owned(),
            not_after: None,
        })
    }

    /// An intermediate CA issued for `key`, valid until `not_after`, under `roots_pem` (what
    /// workloads trust).
    pub fn intermediate(
        cert_pem: &str,
        key: KeyPair,
        roots_pem: &str,
        not_after: OffsetDateTime,
    ) -> Result<Self, rcgen::Error> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
                .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self {
            issuer,
            chain: vec![der.clone()],
            cert_der: der,
            cert_pem: cert_pem.to_owned(),
            trust_pem: roots_pem.to_owned(),
            not_after: Some(not_after),
        })
    }

    /// Creates a new CA (ECDSA P-256, ten years).
    pub fn generate(common_name: &str) -> Result<(Self, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Connectors");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        Ok((
            Self {
                issuer: Issuer::new(params, key),
                cert_der: cert.der().clone(),
                trust_pem: cert_pem.clone(),
                cert_pem,
                chain: Vec::new(),
                not_after: None,
            },
            key_pem,
        ))
    }

    /// Loads the CA at `cert`/`key`, or creates one there when neither file exists.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<(Self, bool), TlsError> {
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Self::load(cert, key)?, false)),
            (false, false) => {
                let (ca, key_pem) =
                    Self::generate("Connectors proxy CA").map_err(|e| TlsError::BadCa {
                        path: cert.to_owned(),
                        reason: e.to_string(),
                    })?;
                write_private(key, key_pem.as_bytes())?;
                write_file(cert, ca.cert_pem.as_bytes())?;
                Ok((ca, true))
            }
            (c, _) => Err(TlsError::HalfCa {
                present: if c { cert } else { key }.to_owned(),
                missing: if c { key } else { cert }.to_owned(),
            }),
        }
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// What workloads must trust, PEM (the root, or the cluster's roots).
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, data).map_err(|e| TlsError::Write {
        path: path.to_owned(),
        source: e,
    })
}

/// Writes a file only its owner can read, creating it with that mode (never world-readable).
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e| TlsError::Write {
        path: PathBuf::from(path),
        source: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn creates_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let (ca1, created) = CertAuthority::load_or_create(&c, &k).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        let (ca2, created) = CertAuthority::load_or_create(&c, &k).unwrap();
        assert!(!created);
        assert_eq!(ca1.cert_der(), ca2.cert_der());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&c, "x").unwrap();
        let err = CertAuthority::load_or_create(&c, &k).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }
}
