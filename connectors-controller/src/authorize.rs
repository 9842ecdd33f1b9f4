//! Whether an agent may have a Connector's credentials: only when some labelled, unfinished pod
//! on its node may use the Connector, by the rules of [`connectors_crd::access`]: the namespace
//! rule, then a SubjectAccessReview for the pod's ServiceAccount (answers cached
//! [`SAR_CACHE_TTL`] per ServiceAccount and Connector).

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors_crd::access::{self, Denied, WorkloadIdentity};
use connectors_crd::{ConnectorId, access::INJECT_LABEL};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::caches::WorkloadCaches;
use crate::metrics::Metrics;

/// The longest a SubjectAccessReview's answer is reused.
pub const SAR_CACHE_TTL: Duration = Duration::from_secs(10);
const SAR_CACHE_ENTRIES: usize = 16_384;
/// Refusals quoted in one reason, at most.
const REASONS_QUOTED: usize = 3;

/// The answer for one Connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This workload may use it.
    Allowed(WorkloadIdentity),
    /// Nobody on the node may; `rule` names what refused (metrics), `reason` says what to change.
    Denied { rule: &'static str, reason: String },
}

type SarKey = (String, String, ConnectorId);

pub struct AccessChecker {
    client: Client,
    cache: quick_cache::sync::Cache<SarKey, (Result<(), Denied>, Instant)>,
    metrics: Arc<Metrics>,
}

impl AccessChecker {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            cache: quick_cache::sync::Cache::new(SAR_CACHE_ENTRIES),
            metrics,
        }
    }

    /// The RBAC rule for `who` and Connector `id`.
    async fn rbac(
        &self,
        who: &WorkloadIdentity,
        id: &ConnectorId,
    ) -> Result<Result<(), Denied>, kube::Error> {
        let key = (
            who.namespace.clone(),
            who.service_account.clone(),
            id.clone(),
        );
        if let Some((answer, at)) = self.cache.get(&key)
            && at.elapsed() < SAR_CACHE_TTL
        {
            self.metrics.access_review("cached");
            // The pod named in a cached refusal may be another of the same ServiceAccount.
            return Ok(answer);
        }
        let review = access::review_for(who, id);
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.metrics.access_review("error");
                return Err(e);
            }
        };
        let outcome = access::rbac_outcome(who, id, &answer);
        self.metrics
            .access_review(if outcome.is_ok() { "allowed" } else { "denied" });
        self.cache.insert(key, (outcome.clone(), Instant::now()));
        Ok(outcome)
    }

    /// Whether any workload on `node` may use Connector `id`. Err: the API server could not
    /// answer for some workload and none was allowed (the caller should retry, not refuse).
    pub async fn decide(
        &self,
        caches: &WorkloadCaches,
        node: &str,
        id: &ConnectorId,
    ) -> Result<Decision, kube::Error> {
        let Some(connector) = caches.connector(id) else {
            return Ok(Decision::Denied {
                rule: "not-found",
                reason: format!("Connector {id} does not exist"),
            });
        };
        let workloads = caches.workloads_on(node);
        if workloads.is_empty() {
            return Ok(Decision::Denied {
                rule: "no-pod",
                reason: format!(
                    "no pod labelled {INJECT_LABEL}: \"true\" runs on node {node}, so no workload there may use Connector {id}"
                ),
            });
        }
        // One check per (namespace, ServiceAccount): the rules depend on nothing else.
        let mut seen = std::collections::BTreeSet::new();
        let mut refusals: Vec<(WorkloadIdentity, Denied)> = Vec::new();
        let mut unavailable = None;
        for who in workloads {
            if !seen.insert((who.namespace.clone(), who.service_account.clone())) {
                continue;
            }
            if let Err(d) = access::namespace_rule(&connector, &who.namespace) {
                refusals.push((who, d));
                continue;
            }
            match self.rbac(&who, id).await {
                Ok(Ok(())) => return Ok(Decision::Allowed(who)),
                Ok(Err(d)) => refusals.push((who, d)),
                Err(e) => unavailable = Some(e),
            }
        }
        if let Some(e) = unavailable {
            return Err(e);
        }
        Ok(denial(node, id, &refusals))
    }
}

/// The refusal of a Connector for a node, quoting what refused each workload (a few).
fn denial(node: &str, id: &ConnectorId, refusals: &[(WorkloadIdentity, Denied)]) -> Decision {
    let rule = if refusals.iter().any(|(_, d)| d.rule() == "rbac") {
        "rbac"
    } else {
        "namespace"
    };
    let mut quoted: Vec<String> = refusals
        .iter()
        .take(REASONS_QUOTED)
        .map(|(who, d)| format!("{who}: {d}"))
        .collect();
    if refusals.len() > REASONS_QUOTED {
        quoted.push(format!(
            "and {} more workloads",
            refusals.len() - REASONS_QUOTED
        ));
    }
    Decision::Denied {
        rule,
        reason: format!(
            "no workload on node {node} may use Connector {id}: {}",
            quoted.join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_names_each_workload_and_rule() {
        let id = ConnectorId::new("a", "git");
        let who = |ns: &str| WorkloadIdentity {
            namespace: ns.into(),
            pod: "p".into(),
            service_account: "sa".into(),
        };
        let refusals = vec![
            (
                who("b"),
                Denied::NotShared {
                    connector: id.clone(),
                    pod_namespace: "b".into(),
                },
            ),
            (
                who("a"),
                Denied::Rbac {
                    connector: id.clone(),
                    namespace: "a".into(),
                    service_account: "sa".into(),
                    reason: None,
                },
            ),
        ];
        let Decision::Denied { rule, reason } = denial("n1", &id, &refusals) else {
            panic!("allowed");
        };
        assert_eq!(rule, "rbac");
        assert!(
            reason.starts_with("no workload on node n1 may use Connector a/git: pod b/p"),
            "{reason}"
        );
        assert!(
            reason.contains("connectors.io/shared-with: \"b\""),
            "{reason}"
        );
        assert!(
            reason.contains("a/sa may not get Connector a/git"),
            "{reason}"
        );
        let Decision::Denied { rule, .. } = denial("n1", &id, &refusals[..1]) else {
            panic!("allowed");
        };
        assert_eq!(rule, "namespace");
    }
}
