//! Kubernetes mode: the agent's signing CA is an intermediate the controller issues for a key
//! the agent generates and never sends (a CSR goes instead). It is short-lived (a day by
//! default); the agent renews it at half its life, and at once when the cluster CA's generation
//! changes (a rotation). A compromised node can mint certificates only until its intermediate
//! expires.

use std::sync::Arc;
use std::time::Duration;

use connectors_crd::node_api::{self, IntermediateRequest, IntermediateResponse};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{CertAuthority, LeafCertificates, TlsError};
use crate::controller_api::{ControllerClient, ControllerError};

/// Retry pace while the controller cannot issue one.
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IntermediateError {
    #[error("cannot make a key or a CSR: {0}")]
    Csr(String),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error("the controller's intermediate is not usable: {0}")]
    Bad(String),
}

/// An intermediate and what came with it.
pub struct Issued {
    pub ca: CertAuthority,
    pub not_after: OffsetDateTime,
    pub generation: String,
}

/// Asks the controller for an intermediate for a new key.
pub async fn request(
    controller: &ControllerClient,
    node: &str,
) -> Result<Issued, IntermediateError> {
    let key = KeyPair::generate().map_err(|e| IntermediateError::Csr(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("connectors agent {node}"));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| IntermediateError::Csr(e.to_string()))?;
    let answer: IntermediateResponse = controller
        .post(
            node_api::INTERMEDIATE_PATH,
            &IntermediateRequest { csr_pem: csr },
        )
        .await?;
    let not_after = OffsetDateTime::parse(
        &answer.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| IntermediateError::Bad(format!("notAfter '{}': {e}", answer.not_after)))?;
    let ca =
        CertAuthority::intermediate(&answer.certificate_pem, key, &answer.roots_pem, not_after)
            .map_err(|e| IntermediateError::Bad(e.to_string()))?;
    Ok(Issued {
        ca,
        not_after,
        generation: answer.ca_generation,
    })
}

/// Asks until the controller issues one (the agent cannot serve TLS without it).
pub async fn first(
    controller: &ControllerClient,
    node: &str,
    shutdown: &CancellationToken,
) -> Result<Issued, TlsError> {
    let mut pause = RETRY;
    loop {
        match request(controller, node).await {
            Ok(i) => {
                tracing::info!(not_after = %i.not_after, generation = %i.generation, "intermediate CA issued by the controller");
                return Ok(i);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "no intermediate CA from the controller yet");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => {
                return Err(TlsError::Config("stopped before the controller issued an intermediate CA".into()));
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Renews the intermediate at half its life, or when `generations` (the cluster CA's, as the
/// controller reports it) moves away from the one it was issued under, and signs with each new
/// one from then on.
pub async fn renew(
    controller: ControllerClient,
    node: String,
    leaves: Arc<LeafCertificates>,
    mut not_after: OffsetDateTime,
    mut generation: String,
    mut generations: watch::Receiver<String>,
    shutdown: CancellationToken,
) {
    loop {
        let left = not_after - OffsetDateTime::now_utc();
        let half = Duration::try_from(left / 2).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(half.max(Duration::from_secs(1))) => {}
            r = generations.changed() => {
                if r.is_err() { return; }
                let g = generations.borrow_and_update().clone();
                if g.is_empty() || g == generation { continue; }
                tracing::info!(from = %generation, to = %g, "the cluster CA changed: renewing the intermediate");
            }
            () = shutdown.cancelled() => return,
        }
        let mut pause = RETRY;
        loop {
            match request(&controller, &node).await {
                Ok(issued) => {
                    tracing::info!(not_after = %issued.not_after, generation = %issued.generation, "intermediate CA renewed");
                    not_after = issued.not_after;
                    generation = issued.generation;
                    leaves.set_ca(Arc::new(issued.ca));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "cannot renew the intermediate CA");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
