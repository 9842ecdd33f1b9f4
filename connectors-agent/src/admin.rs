//! The agent's own HTTP endpoints: health, metrics, and a status API. None of them ever
//! returns a credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::proxy::Shared;

#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub ready: Arc<AtomicBool>,
}

/// `/healthz` and `/readyz`.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `/metrics`.
pub fn metrics_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/connectors`, `/problems`, `/config`, `/ca.crt`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/connectors", get(connectors))
        .route("/problems", get(problems))
        .route("/config", get(config))
        .route("/ca.crt", get(ca))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Acquire) && !s.shared.shutdown.is_cancelled() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.shared.metrics.encode(),
    )
        .into_response()
}

async fn connectors(State(s): State<AdminState>) -> Response {
    let catalog = s.shared.catalog.load();
    Json(json!({
        "generation": catalog.generation,
        "items": catalog.reports,
    }))
    .into_response()
}

async fn problems(State(s): State<AdminState>) -> Response {
    let catalog = s.shared.catalog.load();
    Json(json!({
        "generation": catalog.generation,
        "items": catalog.problems.iter().map(|p| json!({
            "source": p.source.to_string(),
            "object": p.object,
            "message": p.message,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn config(State(s): State<AdminState>) -> Response {
    let catalog = s.shared.catalog.load();
    Json(json!({
        "generation": catalog.generation,
        "connectors": catalog.reports.len(),
        "problems": catalog.problems.len(),
        "endpoints": catalog.endpoints().iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn ca(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.shared.leaves.ca().cert_pem().to_owned(),
    )
        .into_response()
}

/// Serves a router until shutdown.
pub async fn serve(router: Router, listener: TcpListener, shared: Arc<Shared>) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let shutdown = shared.shutdown.clone();
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::warn!(?addr, error = %e, "endpoint server failed");
    }
}
