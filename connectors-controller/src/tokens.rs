//! Who is calling the agent API: the token is reviewed (TokenReview, for the agent audience),
//! must be the agents' ServiceAccount's and bound to a pod (the `pod-name` and `pod-uid` extras
//! of bound tokens); that pod is read, and must be that ServiceAccount's, with the same uid, on
//! a node and not finished. Its node is the agent's node (as the Node authorizer does for
//! kubelets). A review is cached for at most [`CACHE_TTL`], never past the token's `exp`.
//!
//! Tokens are never logged, and no answer quotes one; the cache is keyed by their SHA-256.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::config::ServiceAccountName;
use crate::metrics::Metrics;

/// The longest a review is trusted without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Reviews kept at most.
const CACHE_ENTRIES: usize = 4096;
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// An authenticated agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Its pod, in the agents' namespace.
    pub pod: String,
    /// The node the pod runs on.
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401
    #[error(
        "no bearer token: send the agent pod's projected ServiceAccount token (audience {0}) as `Authorization: Bearer <token>`"
    )]
    Missing(String),
    /// 401
    #[error("the token was not accepted for audience {audience}{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Invalid {
        audience: String,
        reason: Option<String>,
    },
    /// 403
    #[error("{0}")]
    Forbidden(String),
    /// 503
    #[error("cannot check the token now (API server: {0}); retry")]
    Unavailable(String),
}

impl AuthError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Missing(_) | AuthError::Invalid { .. } => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => http::StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Clone)]
struct Cached {
    agent: Arc<Agent>,
    until: Instant,
}

pub struct AgentAuthenticator {
    client: Client,
    audience: String,
    account: ServiceAccountName,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    metrics: Arc<Metrics>,
}

impl AgentAuthenticator {
    pub fn new(
        client: Client,
        audience: &str,
        account: ServiceAccountName,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            audience: audience.to_owned(),
            account,
            cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
            metrics,
        }
    }

    /// The agent the request's bearer token belongs to.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Agent>, AuthError> {
        let token = bearer(headers).ok_or_else(|| AuthError::Missing(self.audience.clone()))?;
        let key = digest(token);
        if let Some(hit) = self.cache.get(&key)
            && Instant::now() < hit.until
        {
            self.metrics.token_review("cached");
            return Ok(hit.agent);
        }
        let result = self.review(token).await;
        match &result {
            Ok(agent) => {
                self.metrics.token_review("authenticated");
                if let Some(ttl) = cache_ttl(token, unix_now()) {
                    self.cache.insert(
                        key,
                        Cached {
                            agent: agent.clone(),
                            until: Instant::now() + ttl,
                        },
                    );
                }
            }
            Err(AuthError::Unavailable(_)) => self.metrics.token_review("error"),
            Err(_) => self.metrics.token_review("rejected"),
        }
        result
    }

    async fn review(&self, token: &str) -> Result<Arc<Agent>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid {
                audience: self.audience.clone(),
                reason: status.error.filter(|e| !e.is_empty()),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.account.user() {
            return Err(AuthError::Forbidden(format!(
                "the token is {username}'s, not the agents' ServiceAccount {} (--agent-service-account)",
                self.account
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (one(POD_NAME_EXTRA), one(POD_UID_EXTRA)) else {
            return Err(AuthError::Forbidden(format!(
                "the token is not bound to a pod: an agent presents its pod's projected ServiceAccount token (a serviceAccountToken volume with audience {})",
                self.audience
            )));
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.account.namespace);
        let pod = pods
            .get_opt(&pod_name)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                AuthError::Forbidden(format!(
                    "the token's pod {}/{pod_name} does not exist",
                    self.account.namespace
                ))
            })?;
        let node = agent_node(&pod, &pod_uid, &self.account).map_err(AuthError::Forbidden)?;
        tracing::debug!(pod = %pod_name, %node, "agent authenticated");
        Ok(Arc::new(Agent {
            pod: pod_name,
            node,
        }))
    }
}

/// The node of the agent's pod, after checking it is the token's pod, of the agents'
/// ServiceAccount, on a node and not finished.
fn agent_node(pod: &Pod, token_uid: &str, account: &ServiceAccountName) -> Result<String, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let id = format!("{}/{name}", account.namespace);
    if pod.metadata.uid.as_deref() != Some(token_uid) {
        return Err(format!(
            "the token was issued for another pod named {id} (uid differs): that pod is gone"
        ));
    }
    let spec = pod.spec.as_ref();
    let sa = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if sa != account.name {
        return Err(format!(
            "pod {id} runs as ServiceAccount {sa}, not {}",
            account.name
        ));
    }
    if let Some(phase) = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .filter(|p| matches!(*p, "Succeeded" | "Failed"))
    {
        return Err(format!("pod {id} has finished ({phase})"));
    }
    spec.and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("pod {id} is not running on a node"))
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The SHA-256 of a token: the key of the review caches (tokens themselves are never kept).
pub fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn unix_now() -> i64 {
    crate::ca::now()
}

/// How long a review of `token` may be cached at `now`: [`CACHE_TTL`], cut at the token's
/// `exp` (read from the JWT payload without verifying it: only to bound the cache). None: do
/// not cache (no readable `exp`, or expired).
pub fn cache_ttl(token: &str, now: i64) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let left = u64::try_from(exp.checked_sub(now)?).ok()?;
    (left > 0).then(|| CACHE_TTL.min(Duration::from_secs(left)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    fn jwt(exp: i64) -> String {
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"exp": exp, "sub": "x"}))
        )
    }

    #[test]
    fn reviews_are_cached_a_minute_at_most_and_never_past_exp() {
        assert_eq!(cache_ttl(&jwt(1000 + 3600), 1000), Some(CACHE_TTL));
        assert_eq!(cache_ttl(&jwt(1010), 1000), Some(Duration::from_secs(10)));
        assert_eq!(cache_ttl(&jwt(1000), 1000), None);
        assert_eq!(cache_ttl(&jwt(900), 1000), None);
        assert_eq!(cache_ttl("not-a-jwt", 1000), None);
        assert_eq!(cache_ttl("a.!!!.c", 1000), None);
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    fn pod(uid: &str, sa: &str, node: Option<&str>, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("agent-x".into());
        p.metadata.uid = Some(uid.into());
        p.spec = Some(PodSpec {
            service_account_name: Some(sa.into()),
            node_name: node.map(Into::into),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn the_agents_node_comes_from_its_pod() {
        let account = ServiceAccountName {
            namespace: "connectors-system".into(),
            name: "connectors-agent".into(),
        };
        let ok = pod("u1", "connectors-agent", Some("n1"), "Running");
        assert_eq!(agent_node(&ok, "u1", &account).unwrap(), "n1");
        let pending = pod("u1", "connectors-agent", Some("n1"), "Pending");
        assert_eq!(agent_node(&pending, "u1", &account).unwrap(), "n1");
        let err = agent_node(&ok, "u2", &account).unwrap_err();
        assert!(err.contains("uid differs"), "{err}");
        let err =
            agent_node(&pod("u1", "other", Some("n1"), "Running"), "u1", &account).unwrap_err();
        assert!(err.contains("ServiceAccount other"), "{err}");
        let err = agent_node(
            &pod("u1", "connectors-agent", None, "Pending"),
            "u1",
            &account,
        )
        .unwrap_err();
        assert!(err.contains("not running on a node"), "{err}");
        let err = agent_node(
            &pod("u1", "connectors-agent", Some("n1"), "Succeeded"),
            "u1",
            &account,
        )
        .unwrap_err();
        assert!(err.contains("finished"), "{err}");
    }
}
