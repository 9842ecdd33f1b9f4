//! What the cluster CA signs: an agent's intermediate CA, and the controller's HTTPS
//! certificate.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData as _, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ClusterCa;
use super::root::{BACKDATE, RootError, offset, random_serial};
use super::{rfc3339, secs};

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The agent's request is at fault (400).
    #[error("{0}")]
    BadRequest(String),
    /// Ours (500).
    #[error("cannot sign: {0}")]
    Sign(String),
}

impl From<RootError> for IssueError {
    fn from(e: RootError) -> Self {
        IssueError::Sign(e.to_string())
    }
}

impl From<rcgen::Error> for IssueError {
    fn from(e: rcgen::Error) -> Self {
        IssueError::Sign(e.to_string())
    }
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    /// The generation of the root that signed it.
    pub generation: String,
}

/// A certificate and its key, for the HTTPS server.
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub generation: String,
}

/// The end of a certificate's validity: `validity` from now, cut at the signing root's own end
/// and at `cap` (the previous root's `valid_until`).
fn not_after(now: i64, validity: Duration, root_not_after: i64, cap: Option<i64>) -> i64 {
    let mut end = now.saturating_add(secs(validity)).min(root_not_after);
    if let Some(cap) = cap {
        end = end.min(cap);
    }
    end
}

impl ClusterCa {
    /// Signs an agent's CSR (ECDSA P-256, signature checked) as an intermediate CA for `node`:
    /// CA, path length 0, keyCertSign + cRLSign + digitalSignature, valid `validity`. The CSR's
    /// subject and extensions are ignored: the certificate names the node.
    pub fn issue_intermediate(
        &self,
        csr_pem: &str,
        node: &str,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, IssueError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            IssueError::BadRequest(format!(
                "csrPem is not a PEM certificate signing request with a valid signature ({e})"
            ))
        })?;
        let raw = csr.public_key.der_bytes();
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 || raw.len() != 65 || raw[0] != 4 {
            return Err(IssueError::BadRequest(
                "the CSR's key must be ECDSA P-256 (signed with SHA-256)".into(),
            ));
        }
        let (root, cap) = self.signer(now);
        let end = not_after(now, validity, root.not_after, cap);
        if end <= now {
            return Err(IssueError::Sign(format!(
                "the signing root {} is no longer valid",
                root.name
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "connectors.io");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("connectors-agent on node {node}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(end);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&root.issuer()?)?;
        Ok(Issued {
            certificate_pem: cert.pem(),
            not_after: end,
            generation: root.fingerprint.clone(),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses), from a fresh key.
    pub fn issue_serving(
        &self,
        names: &[String],
        validity: Duration,
        now: i64,
    ) -> Result<ServingCert, IssueError> {
        let (root, cap) = self.signer(now);
        let end = not_after(now, validity, root.not_after, cap);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| IssueError::Sign(format!("'{n}' is not a DNS name"))),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(end);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &root.issuer()?)?;
        tracing::debug!(
            names = ?names,
            root = %root.name,
            not_after = %rfc3339(end),
            "issued the HTTPS certificate"
        );
        Ok(ServingCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: now,
            not_after: end,
            generation: root.fingerprint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Previous;
    use crate::ca::tests::root;
    use rcgen::Issuer;
    use rustls_pki_types::{TrustAnchor, UnixTime};

    const NOW: i64 = 1_700_000_000;

    fn agent_csr() -> (KeyPair, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "whatever the agent says");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        (key, csr)
    }

    fn anchor(ca: &ClusterCa) -> TrustAnchor<'static> {
        webpki::anchor_from_trusted_cert(&ca.current.cert_der)
            .unwrap()
            .to_owned()
    }

    fn verify(
        anchors: &[TrustAnchor<'_>],
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        at: i64,
    ) -> Result<(), webpki::Error> {
        let ee = webpki::EndEntityCert::try_from(leaf)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap())),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn an_intermediate_chains_to_the_root_and_may_sign_leaves_only() {
        let ca = ClusterCa::new(root(NOW));
        let (key, csr) = agent_csr();
        let issued = ca
            .issue_intermediate(&csr, "n1", Duration::from_secs(86_400), NOW)
            .unwrap();
        assert_eq!(issued.not_after, NOW + 86_400);
        assert_eq!(issued.generation, ca.current.fingerprint);
        let inter = der(&issued.certificate_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&inter).unwrap();
        let subject = x.subject().to_string();
        assert!(subject.contains("connectors-agent on node n1"), "{subject}");
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());

        // A leaf the agent signs with its key chains to the root...
        let agent = Issuer::from_ca_cert_der(&inter, &key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut lp = CertificateParams::new(vec!["git.corp".to_owned()]).unwrap();
        lp.not_before = offset(NOW - 60);
        lp.not_after = offset(NOW + 3600);
        let leaf = lp.signed_by(&leaf_key, &agent).unwrap();
        let anchors = [anchor(&ca)];
        verify(&anchors, leaf.der(), std::slice::from_ref(&inter), NOW).unwrap();
        // ...but not after the intermediate expires,
        assert!(
            verify(
                &anchors,
                leaf.der(),
                std::slice::from_ref(&inter),
                NOW + 86_401
            )
            .is_err()
        );
        // and a CA under the intermediate is refused (path length 0).
        let sub_key = KeyPair::generate().unwrap();
        let mut sp = CertificateParams::default();
        sp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        sp.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        sp.not_before = offset(NOW - 60);
        let sub = sp.signed_by(&sub_key, &agent).unwrap();
        let sub_issuer = Issuer::from_ca_cert_der(sub.der(), &sub_key).unwrap();
        let deep = lp.signed_by(&leaf_key, &sub_issuer).unwrap();
        let err = verify(
            &anchors,
            deep.der(),
            &[sub.der().clone(), inter.clone()],
            NOW,
        );
        assert!(err.is_err(), "a CA under a pathlen-0 intermediate verified");
    }

    #[test]
    fn bad_requests_are_refused_saying_why() {
        let ca = ClusterCa::new(root(NOW));
        let err = ca
            .issue_intermediate("garbage", "n1", Duration::from_secs(60), NOW)
            .unwrap_err();
        assert!(matches!(err, IssueError::BadRequest(_)), "{err}");
        let rsa_like = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&rsa_like)
            .unwrap()
            .pem()
            .unwrap();
        let err = ca
            .issue_intermediate(&csr, "n1", Duration::from_secs(60), NOW)
            .unwrap_err();
        assert!(err.to_string().contains("ECDSA P-256"), "{err}");
    }

    #[test]
    fn during_a_rotation_the_previous_root_signs_and_its_certificates_end_in_time() {
        let old = root(NOW);
        let old_fp = old.fingerprint.clone();
        let mut ca = ClusterCa::new(root(NOW));
        ca.previous = Some(Previous {
            root: old,
            sign_until: NOW + 120,
            valid_until: NOW + 120 + 3600,
        });
        let (_, csr) = agent_csr();
        let a = ca
            .issue_intermediate(&csr, "n1", Duration::from_secs(86_400), NOW)
            .unwrap();
        assert_eq!(a.generation, old_fp);
        assert_eq!(
            a.not_after,
            NOW + 120 + 3600,
            "cut at the previous root's end"
        );
        let b = ca
            .issue_intermediate(&csr, "n1", Duration::from_secs(86_400), NOW + 120)
            .unwrap();
        assert_eq!(b.generation, ca.current.fingerprint);
        assert_eq!(b.not_after, NOW + 120 + 86_400);
    }

    #[test]
    fn the_serving_certificate_names_the_service() {
        let ca = ClusterCa::new(root(NOW));
        let names = [
            "connectors-controller.connectors-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let s = ca
            .issue_serving(&names, Duration::from_secs(7 * 86_400), NOW)
            .unwrap();
        let ee = webpki::EndEntityCert::try_from(&s.chain[0]).unwrap();
        let anchors = [anchor(&ca)];
        verify(&anchors, &s.chain[0], &[], NOW).unwrap();
        ee.verify_is_valid_for_subject_name(
            &rustls_pki_types::ServerName::try_from("connectors-controller.connectors-system.svc")
                .unwrap(),
        )
        .unwrap();
        ee.verify_is_valid_for_subject_name(
            &rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        assert!(
            ee.verify_is_valid_for_subject_name(
                &rustls_pki_types::ServerName::try_from("other.svc").unwrap()
            )
            .is_err()
        );
    }
}
