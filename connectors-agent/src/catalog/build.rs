//! Building a catalog from objects.

use std::collections::HashMap;
use std::sync::Arc;

use connectors_crd::assess::{self, ready_condition};
use rustls_pki_types::CertificateDer;

use super::{Catalog, ConnectorReport, EndpointKey, Objects, Problem, Route, RouteState};
use crate::tls;
use crate::upstream::Upstreams;

/// Builds generation `generation` of the catalog. Never fails: each unusable object is reported
/// in `problems` and in its Connector's conditions, and the rest is served.
pub fn build(objects: &Objects, upstreams: &Upstreams, generation: u64) -> Catalog {
    let mut problems = Vec::new();
    for (name, (class, source)) in &objects.classes {
        let errs = connectors_crd::validation::validate_class(&class.spec);
        if !errs.is_empty() {
            problems.push(Problem {
                source: source.clone(),
                object: Some(format!("ConnectorClass {name}")),
                message: connectors_crd::validation::describe(&errs),
            });
        }
    }

    let mut routes = Vec::new();
    let mut reports = Vec::new();
    let mut index: HashMap<EndpointKey, Vec<_>> = HashMap::new();
    for (id, (connector, source)) in &objects.connectors {
        let _span = tracing::debug_span!("connector", connector = %id).entered();
        let class = objects
            .classes
            .get(&connector.spec.connector_class_name)
            .map(|(c, _)| c);
        let mut a = assess::assess(connector, class, |name| {
            objects
                .secrets
                .get(&(id.namespace.clone(), name.to_owned()))
                .map(|(s, _)| s)
        });
        let roots: Result<Vec<CertificateDer<'static>>, String> =
            a.ca_pem.as_ref().map_err(Clone::clone).and_then(|pems| {
                let mut all = Vec::new();
                for pem in pems {
                    all.extend(
                        tls::parse_pem_certs(pem).map_err(|e| format!("caCertSecretRef: {e}"))?,
                    );
                }
                Ok(all)
            });
        let mut state = match (&a.injector, &roots, objects.withheld.get(id)) {
            (_, _, Some(why)) => RouteState::Withheld(why.clone()),
            (Ok(c), Ok(_), None) => RouteState::Ready(c.clone()),
            (Err(e), _, None) | (_, Err(e), None) => RouteState::NotReady(e.clone()),
        };
        if let Some(why) = objects.withheld.get(id) {
            // Its Secrets are not this agent's to read: say so rather than "not found".
            for c in &mut a.conditions {
                if c.type_ == connectors_crd::condition::types::SECRET_READY {
                    *c = connectors_crd::condition::Condition::new(
                        connectors_crd::condition::types::SECRET_READY,
                        connectors_crd::condition::Status::Unknown,
                        "CredentialsNotHeld",
                        format!("this agent does not hold its credentials: {why}"),
                    );
                }
            }
        }
        let identity = match &state {
            RouteState::Ready(Some(i)) => i.client_identity().cloned(),
            _ => None,
        };
        let extra = roots.as_deref().unwrap_or_default();
        let trust = match upstreams.trust_for(extra, identity.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                let fallback = match upstreams.trust(extra) {
                    // The CA is fine: the client certificate is at fault.
                    Ok(t) if identity.is_some() => {
                        let why = format!("the client certificate in its Secret: {e}");
                        set_secret_invalid(&mut a.conditions, &why);
                        state = RouteState::NotReady(why);
                        Ok(t)
                    }
                    _ => {
                        state = RouteState::NotReady(format!("caCertSecretRef: {e}"));
                        upstreams.trust(&[])
                    }
                };
                match fallback {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(Problem {
                            source: source.clone(),
                            object: Some(format!("Connector {id}")),
                            message: format!("no upstream TLS configuration: {e}"),
                        });
                        continue;
                    }
                }
            }
        };
        a.conditions.push(ready_condition(&a.conditions));
        if let RouteState::NotReady(why) = &state {
            problems.push(Problem {
                source: source.clone(),
                object: Some(format!("Connector {id}")),
                message: why.clone(),
            });
        }
        let addresses: Vec<_> = a
            .checked
            .as_ref()
            .map(|c| c.addresses().cloned().collect())
            .unwrap_or_default();
        reports.push(ConnectorReport {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            class: connector.spec.connector_class_name.clone(),
            address: connectors_crd::address::redact(&connector.spec.address),
            source: source.clone(),
            endpoints: addresses.iter().map(|a| a.to_string()).collect(),
            conditions: a.conditions,
        });
        if addresses.is_empty() {
            continue;
        }
        let route = Arc::new(Route {
            id: id.clone(),
            connector: Arc::new(connector.clone()),
            state,
            trust,
        });
        for addr in addresses {
            index
                .entry(EndpointKey {
                    scheme: addr.scheme,
                    host: addr.host.clone(),
                    port: addr.port,
                })
                .or_default()
                .push((addr, route.clone()));
        }
        routes.push(route);
    }

    for candidates in index.values_mut() {
        // Longest prefix first; ties by Connector id, so the choice is stable.
        candidates.sort_by(|(a, ra), (b, rb)| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then_with(|| ra.id.cmp(&rb.id))
        });
        for pair in candidates.windows(2) {
            let ((a, ra), (b, rb)) = (&pair[0], &pair[1]);
            if a.path_prefix == b.path_prefix && ra.id.namespace == rb.id.namespace {
                problems.push(Problem {
                    source: objects
                        .connectors
                        .get(&rb.id)
                        .map(|(_, s)| s.clone())
                        .unwrap_or(super::Source::Api),
                    object: Some(format!("Connector {}", rb.id)),
                    message: format!(
                        "{} is also served by Connector {}, which is used for it",
                        a, ra.id
                    ),
                });
            }
        }
    }
    Catalog {
        generation,
        routes,
        index,
        reports,
        problems,
    }
}

/// Turns `SecretReady` False: the Secret's client certificate cannot be used.
fn set_secret_invalid(conditions: &mut [connectors_crd::condition::Condition], why: &str) {
    use connectors_crd::condition::{Condition, Status, types};
    for c in conditions {
        if c.type_ == types::SECRET_READY {
            *c = Condition::new(
                types::SECRET_READY,
                Status::False,
                connectors_crd::assess::reasons::SECRET_INVALID,
                why.to_owned(),
            );
        }
    }
}
