//! What every reconcile shares.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::prober::Prober;
use crate::tracked::Tracked;

/// Intervals between checks.
#[derive(Clone, Debug)]
pub struct Settings {
    /// After a check that found the Connector Ready.
    pub recheck: Duration,
    /// After a check that found it not Ready.
    pub retry: Duration,
    /// After a reconcile that failed (the API server refused or did not answer).
    pub error_retry: Duration,
    /// The unified REST API is served (`--api`): each Connector's `status.api.path` is written
    /// only then.
    pub serve_api: bool,
}

pub struct Context {
    pub client: Client,
    pub prober: Prober,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Per-Connector state, forgotten when a Connector is deleted.
    pub tracked: Arc<Tracked>,
    pub settings: Settings,
}
