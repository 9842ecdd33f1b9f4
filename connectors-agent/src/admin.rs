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
use crate::source::SourceHealth;

#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub ready: Arc<AtomicBool>,
    /// Whether the configuration source reads; a failing one makes the agent not ready.
    pub source: Arc<SourceHealth>,
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
    if !s.ready.load(Ordering::Acquire) || s.shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    match s.source.failure() {
        None => "ready\n".into_response(),
        Some(f) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the configuration cannot be read ({} attempts): {}; the last good configuration (generation {}) is still served\n",
                f.attempts,
                f.reason,
                s.shared.catalog.load().generation
            ),
        )
            .into_response(),
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
    let mut items: Vec<serde_json::Value> = catalog
        .problems
        .iter()
        .map(|p| {
            json!({
                "source": p.source.to_string(),
                "object": p.object,
                "message": p.message,
            })
        })
        .collect();
    if let Some(f) = s.source.failure() {
        items.insert(
            0,
            json!({
                "source": "configuration source",
                "object": null,
                "message": format!(
                    "cannot be read ({} attempts since {}): {}; the last good configuration is still served",
                    f.attempts, f.since, f.reason
                ),
            }),
        );
    }
    Json(json!({
        "generation": catalog.generation,
        "items": items,
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
        s.shared.leaves.ca().trust_pem().to_owned(),
    )
        .into_response()
}

/// Connections one endpoint server keeps open at once; more wait in the listen queue.
const MAX_ENDPOINT_CONNECTIONS: usize = 64;
/// How long a client of the endpoints may take to send a request head.
const ENDPOINT_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves a router until shutdown, with a cap on open connections and a header timeout, so that
/// a client holding connections open cannot stop health checks or scrapes.
pub async fn serve(router: Router, listener: TcpListener, shared: Arc<Shared>) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ENDPOINT_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(?addr, error = %e, "endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => break,
        };
        let router = router.clone();
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(ENDPOINT_HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "endpoint connection ended with an error");
                },
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}
