//! Certificate checks shared by the controller's CA tests: PEM parsing, chain verification with
//! rustls-webpki (a real path build to a trust anchor, at a given time), and an agent's side of
//! an intermediate (its key, its CSR, a leaf it signs).

#![allow(dead_code, reason = "each test binary uses a part")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

pub fn anchors(roots: &[CertificateDer<'_>]) -> Vec<TrustAnchor<'static>> {
    roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .expect("a trust anchor")
                .to_owned()
        })
        .collect()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Verifies `leaf` (a server certificate) through `intermediates` to one of `roots`, now.
pub fn verify(
    roots: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), webpki::Error> {
    let anchors = anchors(roots);
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(unix_now())),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
}

/// Whether `leaf` is valid for `name`.
pub fn valid_for(leaf: &CertificateDer<'_>, name: &str) -> bool {
    let ee = webpki::EndEntityCert::try_from(leaf).expect("end-entity certificate");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// An agent's key and its CSR (ECDSA P-256).
pub fn agent_csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "an agent's own idea of its name");
    let csr = p
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("CSR PEM");
    (key, csr)
}

/// A leaf for `name` that the agent signs with its intermediate.
pub fn leaf_signed_by(
    intermediate_pem: &str,
    key: &KeyPair,
    name: &str,
) -> CertificateDer<'static> {
    let issuer = Issuer::from_ca_cert_pem(intermediate_pem, key).expect("intermediate");
    let leaf_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec![name.to_owned()]).expect("params");
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::hours(1);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.signed_by(&leaf_key, &issuer).expect("leaf").der().clone()
}

/// `(is CA, path length)` of a certificate.
pub fn basic_constraints(der: &CertificateDer<'_>) -> (bool, Option<u32>) {
    let (_, x) = x509_parser::parse_x509_certificate(der).expect("certificate");
    let bc = x
        .basic_constraints()
        .expect("basicConstraints")
        .expect("basicConstraints present")
        .value;
    (bc.ca, bc.path_len_constraint)
}

pub fn subject(der: &CertificateDer<'_>) -> String {
    let (_, x) = x509_parser::parse_x509_certificate(der).expect("certificate");
    x.subject().to_string()
}

pub fn issuer(der: &CertificateDer<'_>) -> String {
    let (_, x) = x509_parser::parse_x509_certificate(der).expect("certificate");
    x.issuer().to_string()
}

/// `keyCertSign`, `cRLSign`, `digitalSignature`.
pub fn ca_key_usages(der: &CertificateDer<'_>) -> (bool, bool, bool) {
    let (_, x) = x509_parser::parse_x509_certificate(der).expect("certificate");
    let ku = x
        .key_usage()
        .expect("keyUsage")
        .expect("keyUsage present")
        .value;
    (ku.key_cert_sign(), ku.crl_sign(), ku.digital_signature())
}
