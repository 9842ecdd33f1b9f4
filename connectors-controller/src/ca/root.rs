//! One root CA: an ECDSA P-256 key and its self-signed certificate.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::{rfc3339, secs};

/// How far back a certificate's validity starts, for clocks a little behind ours.
pub const BACKDATE: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("the certificate is not PEM: {0}")]
    CertPem(String),
    #[error("the certificate does not parse: {0}")]
    Cert(String),
    #[error("the certificate is not a CA")]
    NotCa,
    #[error("the private key does not parse (PKCS#8 ECDSA P-256 expected)")]
    Key,
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A root CA.
pub struct Root {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The first 16 hex digits of the SHA-256 of the certificate.
    pub fingerprint: String,
    /// The subject's common name.
    pub name: String,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Root {
    /// A new root, valid from `now` (a little backdated) for `validity`.
    pub fn generate(validity: Duration, now: i64) -> Result<Self, RootError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "connectors.io");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Connectors cluster CA {}", rfc3339(now)),
        );
        // Root -> agent intermediate -> leaf.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Backdated for clocks a little behind (a tenth of a short validity at most, so that a
        // third of it is still left after creation).
        params.not_before = offset(now - BACKDATE.min(secs(validity) / 10));
        params.not_after = offset(now.saturating_add(secs(validity)));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.pem(), cert.der().clone(), key)
    }

    /// A root from its PEM certificate and PEM (PKCS#8) key, checked to belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, RootError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| RootError::CertPem(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| RootError::Key)?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(RootError::Key);
        }
        let pem = pem_of(&der);
        Self::from_parts(pem, der, key)
    }

    fn from_parts(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<Self, RootError> {
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| RootError::Cert(e.to_string()))?;
        if !x509.is_ca() {
            return Err(RootError::NotCa);
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(RootError::KeyMismatch);
        }
        let name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_owned();
        let validity = x509.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        Ok(Self {
            fingerprint: fingerprint(&cert_der),
            cert_pem,
            cert_der,
            key,
            not_before,
            not_after,
            name,
        })
    }

    /// The same root (the key pair cannot be cloned, so it is read back from PEM).
    pub fn duplicate(&self) -> Result<Self, RootError> {
        Self::from_pem(&self.cert_pem, &self.key_pem())
    }

    /// The key as PEM (PKCS#8), for the Secret only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// An issuer that signs with this root.
    pub fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, RootError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }
}

/// A random 16-byte serial number (positive).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; if it ever did, the time is a unique-enough serial.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The first 16 hex digits of the SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PEM of a DER certificate.
pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Unix seconds as rcgen's date type (clamped to what X.509 can say).
pub fn offset(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.clamp(0, 253_402_300_799))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_roots_read_back_and_keys_must_match() {
        let now = 1_700_000_000;
        let r = Root::generate(Duration::from_secs(86_400), now).unwrap();
        assert_eq!(r.not_before, now - BACKDATE);
        assert_eq!(r.not_after, now + 86_400);
        assert!(r.name.starts_with("Connectors cluster CA "), "{}", r.name);
        let short = Root::generate(Duration::from_secs(30), now).unwrap();
        assert_eq!(
            short.not_before,
            now - 3,
            "a short root is backdated a tenth of it"
        );
        let back = Root::from_pem(&r.cert_pem, &r.key_pem()).unwrap();
        assert_eq!(back.fingerprint, r.fingerprint);
        assert_eq!(back.cert_pem, r.cert_pem);
        let other = Root::generate(Duration::from_secs(86_400), now).unwrap();
        assert_ne!(other.fingerprint, r.fingerprint);
        assert!(matches!(
            Root::from_pem(&r.cert_pem, &other.key_pem()),
            Err(RootError::KeyMismatch)
        ));
        assert!(matches!(
            Root::from_pem("nope", &r.key_pem()),
            Err(RootError::CertPem(_))
        ));
        assert!(matches!(
            Root::from_pem(&r.cert_pem, "nope"),
            Err(RootError::Key)
        ));
    }
}
