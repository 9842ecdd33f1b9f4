//! The agent API ([`connectors_crd::node_api`]), served by every replica:
//! - `POST /agent/v1/intermediate`: signs the agent's CSR as an intermediate CA for its node;
//! - `POST /agent/v1/credentials`: the Secrets of the Connectors a workload on its node may
//!   use, and for the others a refusal saying which rule refused.
//!
//! Every request is authenticated first ([`crate::tokens`]); errors are `{"message": ...}`.
//! Secret data is read from the API server per request (never cached) and never logged.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use connectors_crd::node_api::{
    self, ConnectorRef, CredentialsItem, CredentialsRequest, CredentialsResponse, ErrorBody,
    IntermediateRequest, IntermediateResponse, SecretData,
};
use connectors_crd::{Connector, ConnectorId};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use serde::Serialize;

use crate::authorize::{AccessChecker, Decision};
use crate::ca::store::CaReceiver;
use crate::ca::{IssueError, now, rfc3339};
use crate::caches::WorkloadCaches;
use crate::metrics::Metrics;
use crate::tokens::{Agent, AgentAuthenticator, AuthError};

/// Request bodies at most.
const BODY_LIMIT: usize = 1 << 20;
/// Connectors asked for in one request, at most.
pub const MAX_CONNECTORS: usize = 1024;

pub struct AgentApi {
    pub client: Client,
    pub ca: CaReceiver,
    pub caches: WorkloadCaches,
    pub tokens: AgentAuthenticator,
    pub access: AccessChecker,
    pub metrics: Arc<Metrics>,
    pub intermediate_validity: Duration,
}

/// The agent API's routes.
pub fn routes(api: Arc<AgentApi>) -> Router {
    Router::new()
        .route(node_api::INTERMEDIATE_PATH, post(intermediate))
        .route(node_api::CREDENTIALS_PATH, post(credentials))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// An error answer: `{"message": ...}`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(self.0, &ErrorBody { message: self.1 })
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError(e.status(), e.to_string())
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot {what} now (API server: {e}); retry"),
    )
}

async fn authenticate(api: &AgentApi, headers: &HeaderMap) -> Result<Arc<Agent>, ApiError> {
    Ok(api.tokens.authenticate(headers).await?)
}

async fn intermediate(
    State(api): State<Arc<AgentApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = issue_intermediate(&api, &headers, &body).await;
    finish(&api, "intermediate", result)
}

#[tracing::instrument(name = "intermediate", skip_all, fields(node))]
async fn issue_intermediate(
    api: &AgentApi,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let agent = authenticate(api, headers).await?;
    tracing::Span::current().record("node", agent.node.as_str());
    let request: IntermediateRequest = parse(body)?;
    let state = api.ca.borrow().clone().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster CA is not loaded yet; retry".into(),
        )
    })?;
    let t = now();
    let issued = state
        .ca
        .issue_intermediate(&request.csr_pem, &agent.node, api.intermediate_validity, t)
        .map_err(|e| match e {
            IssueError::BadRequest(m) => ApiError(StatusCode::BAD_REQUEST, m),
            IssueError::Sign(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
        })?;
    api.metrics.intermediate_issued();
    tracing::info!(
        pod = %agent.pod,
        generation = %issued.generation,
        not_after = %rfc3339(issued.not_after),
        "signed an agent's intermediate"
    );
    Ok(json(
        StatusCode::OK,
        &IntermediateResponse {
            certificate_pem: issued.certificate_pem,
            roots_pem: state.ca.roots_signing_first(t),
            not_after: rfc3339(issued.not_after),
            ca_generation: issued.generation,
        },
    ))
}

async fn credentials(
    State(api): State<Arc<AgentApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = serve_credentials(&api, &headers, &body).await;
    finish(&api, "credentials", result)
}

#[tracing::instrument(name = "credentials", skip_all, fields(node))]
async fn serve_credentials(
    api: &AgentApi,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let agent = authenticate(api, headers).await?;
    tracing::Span::current().record("node", agent.node.as_str());
    let request: CredentialsRequest = parse(body)?;
    if request.connectors.len() > MAX_CONNECTORS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_CONNECTORS} Connectors per request"),
        ));
    }
    if !api.caches.synced() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the Connector and pod caches are not synced yet; retry".into(),
        ));
    }
    let mut items = Vec::with_capacity(request.connectors.len());
    for r in &request.connectors {
        items.push(item(api, &agent, r).await?);
    }
    let ca_generation = api
        .ca
        .borrow()
        .as_ref()
        .map(|s| s.ca.generation(now()))
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &CredentialsResponse {
            items,
            ca_generation,
        },
    ))
}

async fn item(
    api: &AgentApi,
    agent: &Agent,
    r: &ConnectorRef,
) -> Result<CredentialsItem, ApiError> {
    let id = ConnectorId::new(&r.namespace, &r.name);
    let decision = api
        .access
        .decide(&api.caches, &agent.node, &id)
        .await
        .map_err(|e| unavailable("check access", e))?;
    let mut out = CredentialsItem {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        allowed: false,
        reason: None,
        secrets: Vec::new(),
    };
    match decision {
        Decision::Allowed(who) => {
            api.metrics.credential_decision(true, "access");
            let connector = api.caches.connector(&id);
            out.allowed = true;
            out.secrets = match connector {
                Some(c) => secrets_of(&api.client, &c).await?,
                None => Vec::new(),
            };
            tracing::debug!(connector = %id, workload = %who, secrets = out.secrets.len(), "credentials handed out");
        }
        Decision::Denied { rule, reason } => {
            api.metrics.credential_decision(false, rule);
            tracing::info!(connector = %id, rule, %reason, "credentials refused");
            out.reason = Some(reason);
        }
    }
    Ok(out)
}

/// The names of the Secrets a Connector reads, in its namespace.
pub fn secret_names(c: &Connector) -> Vec<String> {
    let ns = c.metadata.namespace.as_deref();
    let mut names = Vec::new();
    if let Some(r) = c.spec.auth.as_ref().and_then(|a| a.secret_ref.as_ref())
        && (r.namespace.is_none() || r.namespace.as_deref() == ns)
    {
        names.push(r.name.clone());
    }
    if let Some(r) = &c.spec.ca_cert_secret_ref
        && !names.contains(&r.name)
    {
        names.push(r.name.clone());
    }
    names
}

async fn secrets_of(client: &Client, c: &Connector) -> Result<Vec<SecretData>, ApiError> {
    let ns = c.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for name in secret_names(c) {
        let Some(s) = api
            .get_opt(&name)
            .await
            .map_err(|e| unavailable("read the Connector's Secrets", e))?
        else {
            continue;
        };
        out.push(SecretData {
            name,
            type_: s.type_.unwrap_or_else(|| "Opaque".to_owned()),
            data: s.data.unwrap_or_default(),
            resource_version: s.metadata.resource_version.unwrap_or_default(),
        });
    }
    Ok(out)
}

fn finish(api: &AgentApi, endpoint: &str, result: Result<Response, ApiError>) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            if e.0.is_server_error() {
                tracing::warn!(endpoint, status = e.0.as_u16(), message = %e.1, "agent request failed");
            } else {
                tracing::info!(endpoint, status = e.0.as_u16(), message = %e.1, "agent request refused");
            }
            e.into_response()
        }
    };
    api.metrics
        .agent_request(endpoint, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectors_crd::ConnectorSpec;
    use connectors_crd::connector::{ConnectorAuth, LocalObjectRef, SecretReference};

    #[test]
    fn the_secrets_of_a_connector_are_in_its_namespace() {
        let mut c = Connector::new("git", ConnectorSpec::default());
        c.metadata.namespace = Some("a".into());
        assert!(secret_names(&c).is_empty());
        c.spec.auth = Some(ConnectorAuth {
            secret_ref: Some(SecretReference {
                name: "creds".into(),
                namespace: None,
            }),
            ..Default::default()
        });
        c.spec.ca_cert_secret_ref = Some(LocalObjectRef { name: "ca".into() });
        assert_eq!(secret_names(&c), ["creds", "ca"]);
        c.spec
            .auth
            .as_mut()
            .unwrap()
            .secret_ref
            .as_mut()
            .unwrap()
            .namespace = Some("b".into());
        assert_eq!(
            secret_names(&c),
            ["ca"],
            "another namespace's Secret is never read"
        );
    }
}
