//! The unified REST API on this replica (every replica serves it, leader or not): the
//! [`connectors_api`] routes over the Connector and class caches ([`crate::api_store`]), with
//! callers checked by TokenReview and SubjectAccessReview ([`crate::api_gate`]), and the
//! settings of the `--api-*` flags.

use std::sync::Arc;

use axum::Router;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::api_gate::KubeGate;
use crate::api_store::KubeStore;
use crate::caches::WorkloadCaches;
use crate::config::Args;
use crate::metrics::Metrics;

/// The API's settings from the flags.
pub fn settings(args: &Args) -> connectors_api::Settings {
    let mut s = connectors_api::Settings {
        allow_writes: args.api_allow_writes,
        timeout: args.api_timeout,
        cache_ttl: args.api_cache_ttl,
        ..Default::default()
    };
    s.connect_timeout = s.connect_timeout.min(args.api_timeout);
    s.limits.max_response_bytes =
        usize::try_from(args.api_max_response_bytes).unwrap_or(usize::MAX);
    s
}

/// The API's routes, and the task that fills its class cache until `stop`.
pub fn start(
    args: &Args,
    client: Client,
    caches: WorkloadCaches,
    metrics: Arc<Metrics>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    stop: CancellationToken,
) -> (Router, impl Future<Output = ()> + Send + 'static) {
    let (store, fill) = KubeStore::start(client.clone(), caches, stop);
    let api = connectors_api::Api::new(
        Arc::new(store),
        Arc::new(KubeGate::new(client, metrics)),
        Arc::new(connectors_api::SystemResolver),
        provider,
        settings(args),
    );
    tracing::info!(
        writes = args.api_allow_writes,
        timeout = ?args.api_timeout,
        cache_ttl = ?args.api_cache_ttl,
        "unified REST API served on the HTTPS port"
    );
    (connectors_api::router(api), fill)
}
