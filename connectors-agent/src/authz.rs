//! May this pod use this Connector? The namespace rule (own namespace, or shared by the
//! Connector's annotation) and RBAC (the pod's ServiceAccount may `get` the Connector, asked with
//! a SubjectAccessReview), as `connectors_crd::access` defines them.
//!
//! Answers are cached per (ServiceAccount, Connector) for a short time (`--authz-ttl`) and asked
//! again after it, so a RoleBinding added or removed takes effect within the TTL. When the API
//! server cannot answer, a cached answer still serves until its TTL; past it, the request is
//! refused (503) naming the cause: nothing is ever allowed by default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connectors_crd::ConnectorId;
use connectors_crd::access::{self, Denied, WorkloadIdentity};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::metrics::Metrics;

/// How long a SubjectAccessReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries kept at most; the oldest are dropped first.
const MAX_ENTRIES: usize = 16_384;

/// Why a request may not go on with the Connector's credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Denied(Denied),
    #[error("cannot check whether {who} may use Connector {connector}: {cause}")]
    Unavailable {
        who: String,
        connector: ConnectorId,
        cause: String,
    },
}

/// The RBAC checks, with their cache (cheap to clone: clones share it).
#[derive(Clone)]
pub struct Access {
    client: Client,
    ttl: Duration,
    cache: std::sync::Arc<Mutex<HashMap<Key, Cached>>>,
    metrics: std::sync::Arc<Metrics>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    service_account: String,
    connector: ConnectorId,
}

#[derive(Clone, Debug)]
struct Cached {
    at: Instant,
    outcome: Result<(), Denied>,
}

impl Access {
    pub fn new(client: Client, ttl: Duration, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            client,
            ttl,
            cache: std::sync::Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Whether `who` may use Connector `id` by RBAC (the namespace rule is checked by the caller,
    /// who has the Connector).
    pub async fn rbac(&self, who: &WorkloadIdentity, id: &ConnectorId) -> Result<(), AccessError> {
        let key = Key {
            namespace: who.namespace.clone(),
            service_account: who.service_account.clone(),
            connector: id.clone(),
        };
        if let Some(c) = self.fresh(&key) {
            self.metrics.authz_cache(true);
            return c.outcome.map_err(AccessError::Denied);
        }
        self.metrics.authz_cache(false);
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = access::review_for(who, id);
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                return Err(AccessError::Unavailable {
                    who: who.to_string(),
                    connector: id.clone(),
                    cause: format!("the SubjectAccessReview failed: {e}"),
                });
            }
            Err(_) => {
                return Err(AccessError::Unavailable {
                    who: who.to_string(),
                    connector: id.clone(),
                    cause: format!(
                        "the API server did not answer the SubjectAccessReview within {}s",
                        REVIEW_TIMEOUT.as_secs()
                    ),
                });
            }
        };
        let outcome = access::rbac_outcome(who, id, &answer);
        self.remember(key, outcome.clone());
        outcome.map_err(AccessError::Denied)
    }

    fn fresh(&self, key: &Key) -> Option<Cached> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(key)
            .filter(|c| c.at.elapsed() < self.ttl)
            .cloned()
    }

    fn remember(&self, key: Key, outcome: Result<(), Denied>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, c| c.at.elapsed() < ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                at: Instant::now(),
                outcome,
            },
        );
    }
}
