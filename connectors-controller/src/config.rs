//! Command line and environment (`CONNECTORS_*`), parsed once.

use std::net::SocketAddr;
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

    /// Namespace of the leader-election Lease (in a cluster: the controller's own namespace).
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

impl Args {
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
}
