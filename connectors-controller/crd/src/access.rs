//! Which workloads may use which Connector: the rule the agent (per connection) and the
//! controller (before it hands an agent credentials) apply alike.
//!
//! A pod may use a Connector when both hold:
//! 1. **Namespace**: the Connector is in the pod's namespace, or it is shared with the pod's
//!    namespace by its annotation `connectors.io/shared-with` (a comma-separated list of
//!    namespaces, or `*` for every namespace). Sharing is decided by whoever may edit the
//!    Connector, in the Connector's own namespace.
//! 2. **RBAC**: the pod's ServiceAccount may `get` the Connector (`connectors.io`, resource
//!    `connectors`), checked with a SubjectAccessReview ([`review_for`]).
//!
//! A pod is a workload of Connectors only when it carries the label `connectors.io/inject:
//! "true"` ([`INJECT_LABEL`]).

use std::fmt;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

use crate::{Connector, ConnectorId};

/// The label that puts a pod's connections to tools under the agent.
pub const INJECT_LABEL: &str = "connectors.io/inject";
/// The value [`INJECT_LABEL`] must have.
pub const INJECT_VALUE: &str = "true";
/// The Connector annotation listing the other namespaces whose pods may use it.
pub const SHARED_WITH_ANNOTATION: &str = "connectors.io/shared-with";

/// A workload's identity, as the API server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadIdentity {
    pub namespace: String,
    pub pod: String,
    /// The pod's ServiceAccount (`default` when the pod names none).
    pub service_account: String,
}

impl WorkloadIdentity {
    /// `system:serviceaccount:<ns>:<sa>`, the user RBAC sees.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {}/{} (ServiceAccount {})",
            self.namespace, self.pod, self.service_account
        )
    }
}

/// Why a pod may not use a Connector, in words that say what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "Connector {connector} is in namespace '{}' and not shared with namespace '{pod_namespace}'; to share it, annotate it with {SHARED_WITH_ANNOTATION}: \"{pod_namespace}\"",
        connector.namespace
    )]
    NotShared {
        connector: ConnectorId,
        pod_namespace: String,
    },
    #[error(
        "ServiceAccount {namespace}/{service_account} may not get Connector {connector}{}; to allow it, bind a Role with verbs [get] on resource connectors.connectors.io (resourceNames [{}]) in namespace '{}' to the ServiceAccount",
        .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        connector.name,
        connector.namespace
    )]
    Rbac {
        connector: ConnectorId,
        namespace: String,
        service_account: String,
        /// The authorizer's own reason, if it gave one.
        reason: Option<String>,
    },
}

impl Denied {
    /// A short name of the rule that refused, for metrics and the refusal header.
    pub fn rule(&self) -> &'static str {
        match self {
            Denied::NotShared { .. } => "namespace",
            Denied::Rbac { .. } => "rbac",
        }
    }
}

/// The namespace rule: whether pods of `pod_namespace` may use `connector` at all.
pub fn namespace_rule(connector: &Connector, pod_namespace: &str) -> Result<(), Denied> {
    let id = connector.id();
    if id.namespace == pod_namespace || shared_with(connector, pod_namespace) {
        return Ok(());
    }
    Err(Denied::NotShared {
        connector: id,
        pod_namespace: pod_namespace.to_owned(),
    })
}

/// Whether the Connector's [`SHARED_WITH_ANNOTATION`] names `namespace` (or is `*`).
pub fn shared_with(connector: &Connector, namespace: &str) -> bool {
    connector
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SHARED_WITH_ANNOTATION))
        .is_some_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == namespace)
        })
}

/// The SubjectAccessReview that asks whether `who` may `get` Connector `id`. The groups are
/// those the API server gives every ServiceAccount, so bindings to them count.
pub fn review_for(who: &WorkloadIdentity, id: &ConnectorId) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(who.user()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", who.namespace),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(crate::GROUP.to_owned()),
                resource: Some("connectors".to_owned()),
                verb: Some("get".to_owned()),
                namespace: Some(id.namespace.clone()),
                name: Some(id.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Reads a SubjectAccessReview's answer: `Ok` when allowed, the [`Denied::Rbac`] otherwise.
pub fn rbac_outcome(
    who: &WorkloadIdentity,
    id: &ConnectorId,
    answer: &SubjectAccessReview,
) -> Result<(), Denied> {
    let status = answer.status.as_ref();
    if status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false)) {
        return Ok(());
    }
    Err(Denied::Rbac {
        connector: id.clone(),
        namespace: who.namespace.clone(),
        service_account: who.service_account.clone(),
        reason: status
            .and_then(|s| s.reason.clone())
            .filter(|r| !r.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectorSpec;
    use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;

    fn connector(ns: &str, shared: Option<&str>) -> Connector {
        let mut c = Connector::new("git", ConnectorSpec::default());
        c.metadata.namespace = Some(ns.into());
        if let Some(s) = shared {
            c.metadata.annotations =
                Some([(SHARED_WITH_ANNOTATION.to_owned(), s.to_owned())].into());
        }
        c
    }

    fn who(ns: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            namespace: ns.into(),
            pod: "p".into(),
            service_account: "builder".into(),
        }
    }

    #[test]
    fn own_namespace_and_shared_ones() {
        assert!(namespace_rule(&connector("a", None), "a").is_ok());
        let err = namespace_rule(&connector("a", None), "b").unwrap_err();
        assert_eq!(err.rule(), "namespace");
        let text = err.to_string();
        assert!(text.contains("connectors.io/shared-with: \"b\""), "{text}");
        assert!(namespace_rule(&connector("a", Some("c, b")), "b").is_ok());
        assert!(namespace_rule(&connector("a", Some("*")), "z").is_ok());
        assert!(namespace_rule(&connector("a", Some("bb")), "b").is_err());
    }

    #[test]
    fn reviews_ask_for_get_on_the_connector_as_the_service_account() {
        let id = ConnectorId::new("a", "git");
        let r = review_for(&who("b"), &id);
        assert_eq!(
            r.spec.user.as_deref(),
            Some("system:serviceaccount:b:builder")
        );
        let ra = r.spec.resource_attributes.unwrap();
        assert_eq!(ra.verb.as_deref(), Some("get"));
        assert_eq!(ra.namespace.as_deref(), Some("a"));
        assert_eq!(ra.name.as_deref(), Some("git"));
        assert!(
            r.spec
                .groups
                .unwrap()
                .contains(&"system:serviceaccounts:b".to_owned())
        );
    }

    #[test]
    fn denials_say_what_to_bind() {
        let id = ConnectorId::new("a", "git");
        let mut answer = SubjectAccessReview::default();
        assert!(rbac_outcome(&who("a"), &id, &answer).is_err());
        answer.status = Some(SubjectAccessReviewStatus {
            allowed: true,
            ..Default::default()
        });
        assert!(rbac_outcome(&who("a"), &id, &answer).is_ok());
        answer.status = Some(SubjectAccessReviewStatus {
            allowed: false,
            reason: Some("no RBAC policy matched".into()),
            ..Default::default()
        });
        let text = rbac_outcome(&who("a"), &id, &answer)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("a/builder may not get Connector a/git (no RBAC policy matched)"),
            "{text}"
        );
        assert!(text.contains("resourceNames [git]"), "{text}");
    }
}
