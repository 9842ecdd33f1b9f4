//! `POST /webhook/v1/pods`: the mutating admission webhook (`admission.k8s.io/v1`
//! AdmissionReview, JSONPatch) that gives pods labelled `connectors.io/inject: "true"` the trust
//! of the cluster CA ([`crate::pod_trust`]). Before it answers, the pod's namespace gets the
//! ConfigMap the pod mounts if it lacks it; when that fails the pod is refused, saying why (it
//! would otherwise wait forever for its volume). A dry run writes nothing.
//!
//! The endpoint needs no authentication: its answer is a function of the pod it is shown, and
//! its one write (that ConfigMap, in an existing namespace) is what the leader does anyway.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;
use connectors_crd::access::{INJECT_LABEL, INJECT_VALUE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bundle::Bundles;
use crate::metrics::Metrics;
use crate::pod_trust;

pub const PATH: &str = "/webhook/v1/pods";
/// An AdmissionReview holds the whole pod (objects are at most 1.5 MiB in etcd).
const BODY_LIMIT: usize = 6 << 20;

pub struct Webhook {
    pub bundles: Arc<Bundles>,
    pub metrics: Arc<Metrics>,
}

pub fn routes(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route(PATH, post(admit))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(webhook)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
    /// A dry run: nothing may be written.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSONPatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AdmissionStatus>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct AdmissionStatus {
    pub code: u16,
    pub message: String,
}

fn labelled(pod: &Value) -> bool {
    pod["metadata"]["labels"][INJECT_LABEL].as_str() == Some(INJECT_VALUE)
}

async fn admit(State(hook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let review: AdmissionReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            hook.metrics.admission("error");
            return (
                StatusCode::BAD_REQUEST,
                format!("not an admission.k8s.io/v1 AdmissionReview: {e}\n"),
            )
                .into_response();
        }
    };
    let Some(request) = review.request else {
        hook.metrics.admission("error");
        return (
            StatusCode::BAD_REQUEST,
            "the AdmissionReview has no request\n",
        )
            .into_response();
    };
    let response = decide(&hook, request).await;
    let answer = AdmissionReview {
        api_version: "admission.k8s.io/v1".to_owned(),
        kind: "AdmissionReview".to_owned(),
        request: None,
        response: Some(response),
    };
    match serde_json::to_vec(&answer) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[tracing::instrument(name = "admission", skip_all, fields(uid = %request.uid, namespace, pod))]
async fn decide(hook: &Webhook, request: AdmissionRequest) -> AdmissionResponse {
    let mut response = AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        ..Default::default()
    };
    let Some(pod) = request.object.as_ref() else {
        hook.metrics.admission("unchanged");
        return response;
    };
    let creating = request.operation.as_deref().is_none_or(|o| o == "CREATE");
    if !creating || !labelled(pod) {
        hook.metrics.admission("unchanged");
        return response;
    }
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod["metadata"]["namespace"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned());
    let name = pod["metadata"]["name"]
        .as_str()
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or("")
        .to_owned();
    let span = tracing::Span::current();
    span.record("namespace", namespace.as_str());
    span.record("pod", name.as_str());
    let dry_run = request.dry_run.unwrap_or(false);
    if !dry_run && let Err(e) = hook.bundles.ensure_present(&namespace).await {
        hook.metrics.admission("error");
        tracing::warn!(error = %e, "labelled pod refused: its trust bundle is missing");
        response.allowed = false;
        response.status = Some(AdmissionStatus {
            code: 500,
            message: format!(
                "connectors: the pod would mount ConfigMap {} that is missing and cannot be created ({e}); retry",
                crate::bundle::CONFIGMAP
            ),
        });
        return response;
    }
    let ops = pod_trust::patch(pod);
    if ops.is_empty() {
        hook.metrics.admission("unchanged");
        return response;
    }
    match serde_json::to_vec(&ops) {
        Ok(bytes) => {
            hook.metrics.admission("mutated");
            tracing::debug!(
                operations = ops.len(),
                "labelled pod given the cluster CA trust"
            );
            response.patch_type = Some("JSONPatch".to_owned());
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Err(e) => {
            hook.metrics.admission("error");
            tracing::error!(error = %e, "cannot encode the patch");
        }
    }
    response
}
