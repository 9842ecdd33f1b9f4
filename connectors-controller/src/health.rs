//! The controller's own plain-HTTP endpoints, each on its own port: health and readiness, and
//! metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Debug, Default)]
pub struct Health {
    /// The API server answered (the Lease, or the first list).
    pub api_reachable: AtomicBool,
    /// This replica leads and reconciles.
    pub leading: AtomicBool,
    /// The leader's caches hold the first full list.
    pub synced: AtomicBool,
    /// Shutdown has begun.
    pub stopping: AtomicBool,
    /// The HTTPS server can answer: the cluster CA is loaded, its certificate issued, and the
    /// agent API's caches synced.
    pub serving: AtomicBool,
}

impl Health {
    /// Ready: the API server answers, the HTTPS server can answer, and a leader has its caches
    /// synced. A standby replica is ready too: it serves, and is ready to take over.
    pub fn ready(&self) -> bool {
        self.api_reachable.load(Ordering::Acquire)
            && self.serving.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && (!self.leading.load(Ordering::Acquire) || self.synced.load(Ordering::Acquire))
    }

    pub fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Release);
    }
}

/// `/healthz` and `/readyz`.
pub fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// `/metrics`.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(encode_metrics))
        .with_state(metrics)
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    if h.ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn encode_metrics(State(m): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Serves a router until `stop` is cancelled.
pub async fn serve(router: Router, listener: TcpListener, stop: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::warn!(?addr, error = %e, "endpoint server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rules() {
        let h = Health::default();
        assert!(!h.ready());
        Health::set(&h.api_reachable, true);
        assert!(!h.ready(), "not ready before it can serve HTTPS");
        Health::set(&h.serving, true);
        assert!(h.ready(), "a standby is ready");
        Health::set(&h.leading, true);
        assert!(!h.ready(), "a leader waits for its caches");
        Health::set(&h.synced, true);
        assert!(h.ready());
        Health::set(&h.stopping, true);
        assert!(!h.ready());
    }
}
