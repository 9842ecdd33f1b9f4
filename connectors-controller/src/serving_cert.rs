//! The HTTPS server's certificate: a leaf from the cluster CA for the Service's names, issued
//! by every replica for itself, re-issued when a third of its life is left and whenever the
//! signing root changes, and swapped in place (new connections get the new one; no restart).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::ca::store::CaReceiver;
use crate::ca::{now, rfc3339};

/// The certificate in use, shared with the TLS acceptor.
#[derive(Default)]
pub struct CertSlot {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("loaded", &self.current.load().is_some())
            .finish()
    }
}

impl CertSlot {
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// The names of the certificate: `<service>.<ns>.svc`, `<service>.<ns>.svc.<domain>`,
/// `<service>.<ns>`, `<service>`, then `extra`.
pub fn names(
    service: &str,
    namespace: &str,
    cluster_domain: &str,
    extra: &[String],
) -> Vec<String> {
    let mut out = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ];
    for e in extra {
        let e = e.trim();
        if !e.is_empty() && !out.iter().any(|n| n == e) {
            out.push(e.to_owned());
        }
    }
    out
}

/// Keeps `slot` holding a valid certificate for `names`, until `stop`.
pub async fn maintain(
    slot: Arc<CertSlot>,
    mut ca: CaReceiver,
    names: Vec<String>,
    validity: Duration,
    provider: Arc<rustls::crypto::CryptoProvider>,
    stop: CancellationToken,
) {
    // (generation, renew at) of the certificate in the slot.
    let mut held: Option<(String, i64)> = None;
    loop {
        let state = ca.borrow_and_update().clone();
        let t = now();
        let mut wake = t + 60;
        if let Some(state) = state {
            let generation = state.ca.generation(t);
            let due = held
                .as_ref()
                .is_none_or(|(g, renew_at)| *g != generation || t >= *renew_at);
            if due {
                match state.ca.issue_serving(&names, validity, t) {
                    Ok(cert) => {
                        let key = provider.key_provider.load_private_key(cert.key);
                        match key {
                            Ok(key) => {
                                slot.current
                                    .store(Some(Arc::new(CertifiedKey::new(cert.chain, key))));
                                let renew_at =
                                    cert.not_before + (cert.not_after - cert.not_before) * 2 / 3;
                                tracing::info!(
                                    generation = %cert.generation,
                                    not_after = %rfc3339(cert.not_after),
                                    renew_at = %rfc3339(renew_at),
                                    "HTTPS certificate in use"
                                );
                                held = Some((cert.generation, renew_at));
                            }
                            Err(e) => tracing::error!(error = %e, "cannot load the HTTPS key"),
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot issue the HTTPS certificate"),
                }
            }
            if let Some((_, renew_at)) = &held {
                wake = wake.min(*renew_at);
            }
            if let Some(change) = state.ca.next_signer_change(t) {
                wake = wake.min(change);
            }
            if held.is_none() {
                wake = t + 2;
            }
        }
        let sleep = Duration::from_secs(u64::try_from((wake - now()).max(1)).unwrap_or(60));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = ca.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_service() {
        assert_eq!(
            names(
                "connectors-controller",
                "connectors-system",
                "cluster.local",
                &[
                    "127.0.0.1".into(),
                    "connectors-controller".into(),
                    " ".into()
                ]
            ),
            [
                "connectors-controller.connectors-system.svc",
                "connectors-controller.connectors-system.svc.cluster.local",
                "connectors-controller.connectors-system",
                "connectors-controller",
                "127.0.0.1",
            ]
        );
    }
}
