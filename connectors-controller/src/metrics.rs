//! Prometheus metrics of the controller.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeKindLabels {
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentRequestLabels {
    endpoint: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    result: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_seconds: HistogramFamily<KindLabels>,
    probes: Family<ProbeLabels, Counter>,
    probe_seconds: HistogramFamily<ProbeKindLabels>,
    events: Counter,
    leader: Gauge,
    tracked: Gauge,
    agent_requests: Family<AgentRequestLabels, Counter>,
    credential_decisions: Family<DecisionLabels, Counter>,
    token_reviews: Family<ResultLabels, Counter>,
    access_reviews: Family<ResultLabels, Counter>,
    intermediates: Counter,
    admissions: Family<ResultLabels, Counter>,
    ca_rotations: Family<ResultLabels, Counter>,
    bundle_writes: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("connectors_controller");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations, by kind (connector, connectorclass) and result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_seconds: HistogramFamily<KindLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "reconcile_seconds",
            "Time a reconciliation takes, probes included",
            reconcile_seconds.clone(),
        );
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "probes",
            "Probes sent to tools, by probe (liveness, auth) and result (success, failure, error)",
            probes.clone(),
        );
        let probe_seconds: HistogramFamily<ProbeKindLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "probe_seconds",
            "Time from a probe's start to the tool's response headers (or its failure)",
            probe_seconds.clone(),
        );
        let events = Counter::default();
        registry.register(
            "events",
            "Kubernetes Events published (one per Ready transition)",
            events.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, else 0",
            leader.clone(),
        );
        let tracked = Gauge::default();
        registry.register(
            "tracked_connectors",
            "Connectors this replica keeps state for (drops to zero when they are deleted)",
            tracked.clone(),
        );
        let agent_requests = Family::<AgentRequestLabels, Counter>::default();
        registry.register(
            "agent_requests",
            "Requests to the agent API, by endpoint (intermediate, credentials) and HTTP status",
            agent_requests.clone(),
        );
        let credential_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "credential_decisions",
            "Connectors asked for by agents, by result (allowed, denied) and the rule that decided (access, namespace, rbac, no-pod, not-found)",
            credential_decisions.clone(),
        );
        let token_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_reviews",
            "Agent tokens checked, by result (cached, authenticated, rejected, error)",
            token_reviews.clone(),
        );
        let access_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "access_reviews",
            "SubjectAccessReviews for (ServiceAccount, Connector), by result (cached, allowed, denied, error)",
            access_reviews.clone(),
        );
        let intermediates = Counter::default();
        registry.register(
            "intermediates_issued",
            "Intermediate CA certificates signed for agents",
            intermediates.clone(),
        );
        let admissions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_admissions",
            "Pods seen by the CA trust webhook, by result (mutated, unchanged, error)",
            admissions.clone(),
        );
        let ca_rotations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ca_rotations",
            "Root CA rotations written by this replica, by reason (requested, expiring)",
            ca_rotations.clone(),
        );
        let bundle_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "bundle_writes",
            "Writes of trust bundles (the connectors-ca-bundle ConfigMaps and the webhook's caBundle), by result (created, updated, error)",
            bundle_writes.clone(),
        );
        Self {
            agent_requests,
            credential_decisions,
            token_reviews,
            access_reviews,
            intermediates,
            admissions,
            ca_rotations,
            bundle_writes,
            registry,
            reconciles,
            reconcile_seconds,
            probes,
            probe_seconds,
            events,
            leader,
            tracked,
        }
    }

    pub fn reconciled(&self, kind: &str, ok: bool, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        self.reconcile_seconds
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// `result`: `success` (the tool answered as hoped), `failure` (it answered otherwise) or
    /// `error` (no answer: connection, TLS, timeout).
    pub fn probed(&self, probe: &str, result: &str, took: Duration) {
        self.probes
            .get_or_create(&ProbeLabels {
                probe: probe.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.probe_seconds
            .get_or_create(&ProbeKindLabels {
                probe: probe.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn event_published(&self) {
        self.events.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_tracked(&self, n: usize) {
        self.tracked.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn agent_request(&self, endpoint: &str, code: u16) {
        self.agent_requests
            .get_or_create(&AgentRequestLabels {
                endpoint: endpoint.to_owned(),
                code,
            })
            .inc();
    }

    /// `rule`: what decided (`access` when allowed).
    pub fn credential_decision(&self, allowed: bool, rule: &str) {
        self.credential_decisions
            .get_or_create(&DecisionLabels {
                result: if allowed { "allowed" } else { "denied" }.to_owned(),
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub fn token_review(&self, result: &str) {
        Self::count(&self.token_reviews, result);
    }

    pub fn access_review(&self, result: &str) {
        Self::count(&self.access_reviews, result);
    }

    pub fn intermediate_issued(&self) {
        self.intermediates.inc();
    }

    pub fn admission(&self, result: &str) {
        Self::count(&self.admissions, result);
    }

    pub fn ca_rotated(&self, reason: &str) {
        Self::count(&self.ca_rotations, reason);
    }

    pub fn bundle_write(&self, result: &str) {
        Self::count(&self.bundle_writes, result);
    }

    fn count(family: &Family<ResultLabels, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
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
