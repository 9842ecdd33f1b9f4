//! Command line and environment (`CONNECTORS_*`), parsed once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The Connectors controller: checks every Connector against its class, its Secret and its tool,
/// and reports what it finds in the Connector's status.
///
/// It talks to the API server named by `KUBECONFIG` (or the in-cluster ServiceAccount).
#[derive(Clone, Debug, Parser)]
#[command(name = "connectors-controller", version, about, long_about = None)]
pub struct Args {
    /// Health: /healthz (alive) and /readyz (API server reachable; caches synced when leading).
    #[arg(
        long,
        env = "CONNECTORS_HEALTH_LISTEN",
        default_value = "127.0.0.1:15021"
    )]
    pub health_listen: SocketAddr,

    /// Prometheus metrics: /metrics.
    #[arg(
        long,
        env = "CONNECTORS_METRICS_LISTEN",
        default_value = "127.0.0.1:15020"
    )]
    pub metrics_listen: SocketAddr,

    /// HTTPS: the agent API (`/agent/v1/...`) and the pod webhook (`/webhook/v1/pods`), on every
    /// replica, with a certificate from the cluster CA for the Service's names.
    #[arg(long, env = "CONNECTORS_HTTPS_LISTEN", default_value = "0.0.0.0:8443")]
    pub https_listen: SocketAddr,

    /// The controller's Service: the HTTPS certificate names `<service>`, `<service>.<ns>`,
    /// `<service>.<ns>.svc` and `<service>.<ns>.svc.<cluster domain>`.
    #[arg(
        long,
        env = "CONNECTORS_SERVICE_NAME",
        default_value = "connectors-controller"
    )]
    pub service_name: String,

    /// The cluster's DNS domain (the last name of the HTTPS certificate).
    #[arg(
        long,
        env = "CONNECTORS_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// Further names (DNS names or IP addresses) of the HTTPS certificate, comma-separated; for
    /// callers that do not go through the Service (e.g. a webhook registered by URL).
    #[arg(long, env = "CONNECTORS_TLS_SANS", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Validity of the HTTPS certificate (re-issued when a third is left, and when the signing
    /// root changes). Durations: `90s`, `30m`, `24h`, `365d`, or plain seconds.
    #[arg(long, env = "CONNECTORS_SERVING_CERT_VALIDITY", default_value = "7d", value_parser = duration)]
    pub serving_cert_validity: Duration,

    /// The Secret (in the controller's namespace) holding the cluster CA.
    #[arg(long, env = "CONNECTORS_CA_SECRET", default_value = "connectors-ca")]
    pub ca_secret: String,

    /// Validity of a root CA; the leader rotates it when a third of it is left.
    #[arg(long, env = "CONNECTORS_CA_VALIDITY", default_value = "365d", value_parser = duration)]
    pub ca_validity: Duration,

    /// After a rotation, how long intermediates are still signed by the previous root, so that
    /// the new root reaches every trust bundle first (kubelet refreshes mounted ConfigMaps in
    /// running pods within about a minute).
    #[arg(long, env = "CONNECTORS_CA_PROPAGATION_DELAY", default_value = "120s", value_parser = duration)]
    pub ca_propagation_delay: Duration,

    /// Clock skew allowed between the controller and the workloads: the previous root leaves the
    /// bundle this long after the last intermediate it signed has expired.
    #[arg(long, env = "CONNECTORS_CA_RETIRE_MARGIN", default_value = "300s", value_parser = duration)]
    pub ca_retire_margin: Duration,

    /// Validity of the intermediate CA certificates agents get.
    #[arg(long, env = "CONNECTORS_INTERMEDIATE_VALIDITY", default_value = "24h", value_parser = duration)]
    pub intermediate_validity: Duration,

    /// The agents' ServiceAccount, `namespace:name`; only its pod-bound tokens may call the
    /// agent API.
    #[arg(
        long,
        env = "CONNECTORS_AGENT_SERVICE_ACCOUNT",
        default_value = "connectors-system:connectors-agent",
        value_parser = service_account
    )]
    pub agent_service_account: ServiceAccountName,

    /// The audience an agent's token must be issued for (checked with a TokenReview).
    #[arg(long, env = "CONNECTORS_AGENT_AUDIENCE", default_value = connectors_crd::node_api::AGENT_AUDIENCE)]
    pub agent_audience: String,

    /// The system roots put before the cluster roots in the `ca-bundle.crt` that labelled pods
    /// trust (the controller image's bundle).
    #[arg(
        long,
        env = "CONNECTORS_SYSTEM_ROOTS",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub system_roots: PathBuf,

    /// The leader creates the built-in ConnectorClasses (git, oci, k8s) that are missing; it
    /// never changes one that exists.
    #[arg(long, env = "CONNECTORS_INSTALL_CLASSES", default_value = "true", action = clap::ArgAction::Set)]
    pub install_classes: bool,

    /// Seconds a probe may take, connection and response headers included.
    #[arg(long, env = "CONNECTORS_PROBE_TIMEOUT", default_value = "5", value_parser = seconds)]
    pub probe_timeout: Duration,

    /// Seconds between checks of a Connector that is Ready.
    #[arg(long, env = "CONNECTORS_RECHECK_INTERVAL", default_value = "300", value_parser = seconds)]
    pub recheck_interval: Duration,

    /// Seconds between checks of a Connector that is not Ready.
    #[arg(long, env = "CONNECTORS_RETRY_INTERVAL", default_value = "30", value_parser = seconds)]
    pub retry_interval: Duration,

    /// Connectors checked at the same time (a slow tool holds one slot, never the others).
    #[arg(long, env = "CONNECTORS_CONCURRENCY", default_value = "64")]
    pub concurrency: u16,

    /// Take part in leader election, so that only one replica reconciles. `false` for a single
    /// replica that must reconcile at once (development).
    #[arg(long, env = "CONNECTORS_LEADER_ELECT", default_value = "true", action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// The controller's own namespace: the leader-election Lease and the CA Secret live there,
    /// and it is left out of the pod webhook.
    #[arg(long, env = "POD_NAMESPACE", default_value = "connectors-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "CONNECTORS_LEASE_NAME",
        default_value = "connectors-controller"
    )]
    pub lease_name: String,

    /// Seconds a leader holds the Lease without renewing it before another replica may take it.
    #[arg(long, env = "CONNECTORS_LEASE_DURATION", default_value = "15", value_parser = seconds)]
    pub lease_duration: Duration,

    /// Seconds between attempts to acquire or renew the Lease.
    #[arg(long, env = "CONNECTORS_LEASE_RETRY", default_value = "2", value_parser = seconds)]
    pub lease_retry: Duration,

    /// This replica's name in the Lease. Default: the pod name, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds to let running checks finish at shutdown.
    #[arg(long, env = "CONNECTORS_DRAIN_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub drain_timeout: Duration,

    /// Serve the unified REST API (`/connectors/v1alpha1/...`, and the UI developers' page
    /// `/connectors/ui/`) on the HTTPS port, on every replica. Each Connector's
    /// `status.api.path` is written only when it is on.
    #[arg(long, env = "CONNECTORS_API", default_value = "true", action = clap::ArgAction::Set)]
    pub api: bool,

    /// Unified API: relay POST, PUT, PATCH and DELETE to tools (off: they are answered 405).
    #[arg(long, env = "CONNECTORS_API_ALLOW_WRITES", default_value = "false", action = clap::ArgAction::Set)]
    pub api_allow_writes: bool,

    /// Unified API: the time one exchange with a tool may take (connection, headers and body);
    /// a tool slower than that is answered 504 naming the Connector.
    #[arg(long, env = "CONNECTORS_API_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub api_timeout: Duration,

    /// Unified API: how long a tool's answer is reused for the same Connector, resource and
    /// query (0: never). Callers are checked first, every time.
    #[arg(long, env = "CONNECTORS_API_CACHE_TTL", default_value = "5s", value_parser = duration)]
    pub api_cache_ttl: Duration,

    /// Unified API: bytes read from one tool answer at most (a longer one is answered 502).
    #[arg(
        long,
        env = "CONNECTORS_API_MAX_RESPONSE_BYTES",
        default_value = "16777216",
        value_parser = clap::value_parser!(u64).range(1024..=1_073_741_824)
    )]
    pub api_max_response_bytes: u64,

    /// Log format.
    #[arg(
        long,
        env = "CONNECTORS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A duration: `500ms`, `90s`, `30m`, `24h`, `365d`, or a plain number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let v: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 90s, 30m, 24h, 365d)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h, d)")),
    };
    let secs = v * scale;
    if !(0.0..=100.0 * 365.0 * 86_400.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A ServiceAccount, `namespace:name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountName {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountName {
    /// `system:serviceaccount:<namespace>:<name>`, the user its tokens authenticate as.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn service_account(s: &str) -> Result<ServiceAccountName, String> {
    match s.split_once(':') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => {
            Ok(ServiceAccountName {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("'{s}' is not namespace:name")),
    }
}

impl Args {
    /// The controller's own namespace (`POD_NAMESPACE`).
    pub fn namespace(&self) -> &str {
        &self.lease_namespace
    }

    /// This replica's identity in the Lease.
    pub fn identity(&self) -> String {
        if let Some(id) = self.identity.as_ref().filter(|s| !s.is_empty()) {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "controller".to_owned());
        format!("{host}-{}", std::process::id())
    }

    /// Checks that go together.
    pub fn check(&self) -> Result<(), String> {
        if self.leader_elect && self.lease_retry >= self.lease_duration {
            return Err(format!(
                "--lease-retry ({:?}) must be shorter than --lease-duration ({:?})",
                self.lease_retry, self.lease_duration
            ));
        }
        if self.probe_timeout.is_zero() {
            return Err("--probe-timeout must be more than 0".into());
        }
        if self.api_timeout.is_zero() {
            return Err("--api-timeout must be more than 0".into());
        }
        for (flag, d) in [
            ("--ca-validity", self.ca_validity),
            ("--intermediate-validity", self.intermediate_validity),
            ("--serving-cert-validity", self.serving_cert_validity),
        ] {
            if d < Duration::from_secs(3) {
                return Err(format!("{flag} must be at least 3 s"));
            }
        }
        if self.intermediate_validity >= self.ca_validity / 3 {
            return Err(format!(
                "--intermediate-validity ({:?}) must be shorter than a third of --ca-validity ({:?}): a root is rotated when a third of it is left, and every intermediate it signed must expire before it does",
                self.intermediate_validity, self.ca_validity
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_checks() {
        let a = Args::try_parse_from(["connectors-controller", "--probe-timeout", "0.5"]).unwrap();
        assert_eq!(a.probe_timeout, Duration::from_millis(500));
        assert!(a.leader_elect);
        a.check().unwrap();
        let a = Args::try_parse_from([
            "x",
            "--leader-elect",
            "true",
            "--lease-duration",
            "2",
            "--lease-retry",
            "3",
        ])
        .unwrap();
        assert!(a.check().is_err());
        let a = Args::try_parse_from(["x", "--leader-elect", "false"]).unwrap();
        assert!(!a.leader_elect);
        assert!(Args::try_parse_from(["x", "--probe-timeout", "-1"]).is_err());
    }

    #[test]
    fn new_flags_and_their_defaults() {
        let a = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(a.https_listen.port(), 8443);
        assert_eq!(a.ca_validity, Duration::from_secs(365 * 86_400));
        assert_eq!(a.ca_propagation_delay, Duration::from_secs(120));
        assert_eq!(a.intermediate_validity, Duration::from_secs(86_400));
        assert_eq!(
            a.agent_service_account.user(),
            "system:serviceaccount:connectors-system:connectors-agent"
        );
        assert_eq!(a.agent_audience, "connectors.io/agent");
        assert_eq!(a.namespace(), "connectors-system");
        assert!(a.api && !a.api_allow_writes);
        assert_eq!(a.api_timeout, Duration::from_secs(10));
        a.check().unwrap();
        let a = Args::try_parse_from(["x", "--api", "false", "--api-timeout", "2s"]).unwrap();
        assert!(!a.api);
        assert_eq!(a.api_timeout, Duration::from_secs(2));
        let a = Args::try_parse_from(["x", "--tls-san", "127.0.0.1,localhost"]).unwrap();
        assert_eq!(a.tls_san, ["127.0.0.1", "localhost"]);
        assert!(Args::try_parse_from(["x", "--agent-service-account", "nocolon"]).is_err());
        let a = Args::try_parse_from([
            "x",
            "--ca-validity",
            "30s",
            "--intermediate-validity",
            "20s",
        ])
        .unwrap();
        assert!(
            a.check().is_err(),
            "intermediates would outlive the rotation"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(duration("365d").unwrap(), Duration::from_secs(365 * 86_400));
        assert!(duration("3w").is_err());
        assert!(duration("").is_err());
        assert!(duration("-1s").is_err());
    }
}
