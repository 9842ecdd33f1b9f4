//! The unified REST API of Connectors: one API for UIs (branches, tags, image tags,
//! namespaces...) in the style of the existing Connectors product, route-compatible with its
//! UIs, that never shows a credential.
//!
//! - `GET|HEAD|OPTIONS /connectors/v1alpha1/{namespace}/{connector}/path/{api-path}` (a
//!   Connector's `status.api.path`): a list resource its class declares (`spec.api.resources`,
//!   the list envelope with search and paging), or the tool's own API, relayed with the
//!   Connector's credentials ([`relay`]). Other methods: 405 unless writes are enabled.
//! - `GET /connectors/v1alpha1/{namespace}`: the Connectors of a namespace the caller may get.
//! - `GET /connectors/v1alpha1/openapi.json`: the OpenAPI 3 document ([`openapi`]).
//! - `GET /connectors/ui/`: a page for UI developers ([`page`]).
//!
//! Callers are authenticated and authorized by a [`Gate`] (the controller: TokenReview and a
//! SubjectAccessReview for `get` on the Connector); Connectors come from a [`Store`]. Both are
//! traits so that the controller and the standalone agent serve the same API.

pub mod backend;
pub mod cache;
pub mod call;
pub mod declared;
pub mod dispatch;
pub mod error;
pub mod gitrefs;
pub mod handler;
pub mod inject;
pub mod listing;
pub mod openapi;
pub mod page;
pub mod pktline;
pub mod relay;
pub mod route;
pub mod template;
pub mod tool;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};

pub use backend::{BoxFuture, Caller, Entry, Gate, Store};
pub use error::{ApiError, Status};
pub use upstream::{Resolve, SystemResolver};

/// How the API behaves; every field has a command-line flag where the API runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Relay POST, PUT, PATCH and DELETE to tools (off: 405).
    pub allow_writes: bool,
    /// One exchange with a tool: connection, headers and body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How long tool answers are reused (zero: never).
    pub cache_ttl: Duration,
    /// The cache's size.
    pub cache_bytes: u64,
    /// Bytes of a request body (writes) at most.
    pub max_request_bytes: usize,
    pub limits: Limits,
}

/// Bounds on what one list takes from a tool.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes read from one tool answer.
    pub max_response_bytes: usize,
    /// Items collected for one list.
    pub max_items: usize,
    /// Pages requested for one list.
    pub max_pages: usize,
    /// All the pages of one list.
    pub list_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_writes: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(5),
            cache_bytes: 64 << 20,
            max_request_bytes: 4 << 20,
            limits: Limits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_response_bytes: 16 << 20,
            max_items: 100_000,
            max_pages: 1000,
            list_timeout: Duration::from_secs(60),
        }
    }
}

/// The API: what it serves from, and how.
pub struct Api {
    store: Arc<dyn Store>,
    gate: Arc<dyn Gate>,
    upstream: upstream::Upstream,
    cache: cache::AnswerCache,
    settings: Settings,
}

impl Api {
    pub fn new(
        store: Arc<dyn Store>,
        gate: Arc<dyn Gate>,
        resolver: Arc<dyn Resolve>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        settings: Settings,
    ) -> Arc<Self> {
        let upstream = upstream::Upstream::new(
            provider,
            resolver,
            upstream::UpstreamSettings {
                connect_timeout: settings.connect_timeout,
                timeout: settings.timeout,
                max_response_bytes: settings.limits.max_response_bytes,
            },
        );
        Arc::new(Self {
            store,
            gate,
            upstream,
            cache: cache::AnswerCache::new(settings.cache_ttl, settings.cache_bytes),
            settings,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The API's routes. Bodies are read by the handler itself, within `max_request_bytes`.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(openapi::PATH, get(openapi::serve))
        .route("/connectors/ui", get(page::to_index))
        .route("/connectors/ui/", get(page::index))
        .route("/connectors/ui/{file}", get(page::asset))
        .route("/connectors/v1alpha1/{*rest}", any(handler::handle))
        .with_state(api)
}
