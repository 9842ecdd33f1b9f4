//! Prometheus metrics of the agent.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    connector: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `allowed`, or the rule that refused (`namespace`, `rbac`, `unavailable`, `unidentified`).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: String,
}

type HistogramFamily = Family<ConnectorLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    response_seconds: HistogramFamily,
    refusals: Family<RefusalLabels, Counter>,
    connections: Family<ListenerLabels, Counter>,
    config_generation: Gauge,
    config_problems: Gauge,
    decisions: Family<DecisionLabels, Counter>,
    authz_cache: Family<CacheLabels, Counter>,
    pods_redirected: Gauge,
    redirect_activation: Histogram,
    passed_through: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("connectors_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests forwarded to tools, by Connector and response code",
            requests.clone(),
        );
        let response_seconds: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "response_seconds",
            "Time from request to the tool's response headers",
            response_seconds.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests and connections the proxy refused or could not serve, by reason",
            refusals.clone(),
        );
        let connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by listener",
            connections.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the configuration in use",
            config_generation.clone(),
        );
        let config_problems = Gauge::default();
        registry.register(
            "config_problems",
            "Problems found in the configuration in use",
            config_problems.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "access_decisions",
            "Kubernetes mode: may this pod use this Connector, by outcome (allowed, or the rule that refused)",
            decisions.clone(),
        );
        let authz_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "authz_cache",
            "SubjectAccessReview answers served from the cache (hit) or asked for (miss)",
            authz_cache.clone(),
        );
        let pods_redirected = Gauge::default();
        registry.register(
            "pods_redirected",
            "Labelled pods of this node whose connections to tools are redirected",
            pods_redirected.clone(),
        );
        let redirect_activation = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "redirect_activation_seconds",
            "From a labelled pod's cgroup appearing to its redirect being active",
            redirect_activation.clone(),
        );
        let passed_through = Counter::default();
        registry.register(
            "passed_through",
            "Redirected connections or requests no Connector serves, passed to their destination untouched",
            passed_through.clone(),
        );
        Self {
            registry,
            decisions,
            authz_cache,
            pods_redirected,
            redirect_activation,
            passed_through,
            requests,
            response_seconds,
            refusals,
            connections,
            config_generation,
            config_problems,
        }
    }

    pub fn request(&self, connector: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                connector: connector.to_owned(),
                code,
            })
            .inc();
        self.response_seconds
            .get_or_create(&ConnectorLabels {
                connector: connector.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn connection(&self, listener: &str) {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }

    pub fn config(&self, generation: u64, problems: usize) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.config_problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }

    pub fn decision(&self, outcome: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn authz_cache(&self, hit: bool) {
        self.authz_cache
            .get_or_create(&CacheLabels {
                result: if hit { "hit" } else { "miss" }.to_owned(),
            })
            .inc();
    }

    pub fn pods_redirected(&self, n: usize) {
        self.pods_redirected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn redirect_activated(&self, after: Duration) {
        self.redirect_activation.observe(after.as_secs_f64());
    }

    pub fn passed_through(&self) {
        self.passed_through.inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}
