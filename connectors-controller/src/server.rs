//! The routes of the HTTPS server: the agent API, the pod webhook, and the unified REST API
//! (`/connectors/...`, when `--api` is on); each part keeps its own state and body limits.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;

use crate::agent_api::{self, AgentApi, ApiError};
use crate::webhook::{self, Webhook};

pub fn router(agent: Arc<AgentApi>, webhook: Arc<Webhook>, api: Option<Router>) -> Router {
    Router::new()
        .merge(agent_api::routes(agent))
        .merge(webhook::routes(webhook))
        .merge(api.unwrap_or_default())
        .fallback(|| async {
            ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()).into_response()
        })
}
