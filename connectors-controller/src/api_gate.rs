//! Who calls the unified REST API, and whether they may: the caller's bearer token is reviewed
//! (TokenReview, for the API server's own audiences, as `kubectl` tokens are), then a
//! SubjectAccessReview asks whether that user may `get` the Connector. A review is cached for
//! at most [`tokens::CACHE_TTL`] and never past the token's `exp` (as the agent API's are), an
//! access answer for [`authorize::SAR_CACHE_TTL`]; tokens are never logged and the caches are
//! keyed by their SHA-256.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use connectors_api::{ApiError, BoxFuture, Caller, Gate};
use connectors_crd::ConnectorId;
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::authorize::SAR_CACHE_TTL;
use crate::metrics::Metrics;
use crate::tokens::{self, CACHE_TTL};

/// Reviews (and access answers) kept at most.
const CACHE_ENTRIES: usize = 4096;

type AccessKey = ([u8; 32], ConnectorId);

pub struct KubeGate {
    client: Client,
    tokens: quick_cache::sync::Cache<[u8; 32], (Arc<Caller>, Instant)>,
    access: quick_cache::sync::Cache<AccessKey, (Result<(), String>, Instant)>,
    metrics: Arc<Metrics>,
}

impl KubeGate {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            tokens: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            access: quick_cache::sync::Cache::new(CACHE_ENTRIES * 4),
            metrics,
        }
    }

    async fn review(&self, token: &str) -> Result<Arc<Caller>, ApiError> {
        let key = tokens::digest(token);
        if let Some((caller, until)) = self.tokens.get(&key)
            && Instant::now() < until
        {
            return Ok(caller);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.metrics.token_review("error");
                ApiError::Unavailable(format!(
                    "cannot check the token now (API server: {e}); retry"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            self.metrics.token_review("rejected");
            return Err(ApiError::Unauthorized(format!(
                "the token was not accepted by the cluster{}; send a valid Kubernetes token as `Authorization: Bearer <token>`",
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        self.metrics.token_review("authenticated");
        let user = status.user.unwrap_or_default();
        let caller = Arc::new(Caller {
            name: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            uid: user.uid.filter(|u| !u.is_empty()),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        });
        if let Some(ttl) = tokens::cache_ttl(token, crate::ca::now()) {
            self.tokens
                .insert(key, (caller.clone(), Instant::now() + ttl.min(CACHE_TTL)));
        }
        Ok(caller)
    }

    async fn may_get(&self, caller: &Caller, id: &ConnectorId) -> Result<(), ApiError> {
        let key = (caller_digest(caller), id.clone());
        if let Some((answer, at)) = self.access.get(&key)
            && at.elapsed() < SAR_CACHE_TTL
        {
            self.metrics.access_review("cached");
            return answer.map_err(ApiError::Forbidden);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.name.clone()),
                groups: Some(caller.groups.clone()),
                uid: caller.uid.clone(),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(connectors_crd::GROUP.to_owned()),
                    resource: Some("connectors".to_owned()),
                    verb: Some("get".to_owned()),
                    namespace: Some(id.namespace.clone()),
                    name: Some(id.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.metrics.access_review("error");
                ApiError::Unavailable(format!(
                    "cannot check access to Connector {id} now (API server: {e}); retry"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        let outcome = if status.allowed && !status.denied.unwrap_or(false) {
            self.metrics.access_review("allowed");
            Ok(())
        } else {
            self.metrics.access_review("denied");
            Err(format!(
                "{} may not get Connector {id}{}; to allow it, bind a Role with verbs [get] on resource connectors.connectors.io (resourceNames [{}]) in namespace '{}' to that user or a group of it",
                caller.name,
                status
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                id.name,
                id.namespace
            ))
        };
        self.access.insert(key, (outcome.clone(), Instant::now()));
        outcome.map_err(ApiError::Forbidden)
    }
}

/// A digest of everything a SubjectAccessReview is asked about the caller.
fn caller_digest(c: &Caller) -> [u8; 32] {
    let extra: BTreeMap<&String, &Vec<String>> = c.extra.iter().collect();
    let text = serde_json::json!([c.name, c.groups, c.uid, extra]).to_string();
    tokens::digest(&text)
}

impl Gate for KubeGate {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Caller, ApiError>> {
        Box::pin(async move {
            let token = tokens::bearer(headers).ok_or_else(|| {
                ApiError::Unauthorized(
                    "no bearer token: send your Kubernetes token (a user's or a ServiceAccount's) as `Authorization: Bearer <token>`".into(),
                )
            })?;
            Ok((*self.review(token).await?).clone())
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        id: &'a ConnectorId,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.may_get(caller, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_differ_by_every_attribute() {
        let a = Caller {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
            uid: None,
            extra: BTreeMap::new(),
        };
        let mut b = a.clone();
        assert_eq!(caller_digest(&a), caller_digest(&b));
        b.groups.push("admins".into());
        assert_ne!(caller_digest(&a), caller_digest(&b));
        let mut c = a.clone();
        c.extra.insert("scopes".into(), vec!["x".into()]);
        assert_ne!(caller_digest(&a), caller_digest(&c));
    }
}
