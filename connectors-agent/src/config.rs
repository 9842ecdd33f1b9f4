//! Command line and environment (`CONNECTORS_*`), parsed once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The Connectors node agent: the credential-injecting proxy.
#[derive(Clone, Debug, Parser)]
#[command(name = "connectors-agent", version, about, long_about = None)]
pub struct Args {
    /// Standalone mode: read ConnectorClass, Connector and Secret YAML from this folder, and
    /// apply every change to it without a restart.
    #[arg(long, env = "CONNECTORS_CONFIG_DIR")]
    pub config_dir: PathBuf,

    /// Explicit forward proxy (HTTP_PROXY / HTTPS_PROXY) listen address.
    #[arg(
        long,
        env = "CONNECTORS_PROXY_LISTEN",
        default_value = "127.0.0.1:3128"
    )]
    pub proxy_listen: SocketAddr,

    /// Transparent listener for redirected connections (must be reachable from workloads, so not
    /// loopback when they live in other network namespaces). Off unless set.
    #[arg(long, env = "CONNECTORS_TRANSPARENT_LISTEN")]
    pub transparent_listen: Option<SocketAddr>,

    /// Where a transparent connection's original destination comes from.
    #[arg(
        long,
        env = "CONNECTORS_ORIGINAL_DST",
        value_enum,
        default_value = "auto"
    )]
    pub original_dst: OriginalDstSource,

    /// eBPF redirect: connections that processes of this cgroup v2 directory make to a tool
    /// endpoint go to the transparent listener. Repeatable (or comma-separated in the env).
    #[arg(
        long = "redirect-cgroup",
        env = "CONNECTORS_REDIRECT_CGROUP",
        value_delimiter = ','
    )]
    pub redirect_cgroups: Vec<PathBuf>,

    /// The address (one per family) the eBPF redirect sends connections to. Default: the
    /// transparent listener's address; needed when that is unspecified (0.0.0.0 or [::]).
    #[arg(
        long = "redirect-to",
        env = "CONNECTORS_REDIRECT_TO",
        value_delimiter = ','
    )]
    pub redirect_to: Vec<SocketAddr>,

    /// Seconds between re-resolutions of the tool names the eBPF redirect matches.
    #[arg(
        long,
        env = "CONNECTORS_REDIRECT_REFRESH",
        default_value = "30",
        value_parser = seconds
    )]
    pub redirect_refresh: Duration,

    /// Status API: /connectors, /problems, /ca.crt.
    #[arg(
        long,
        env = "CONNECTORS_ADMIN_LISTEN",
        default_value = "127.0.0.1:15000"
    )]
    pub admin_listen: SocketAddr,

    /// Prometheus metrics: /metrics.
    #[arg(
        long,
        env = "CONNECTORS_METRICS_LISTEN",
        default_value = "127.0.0.1:15020"
    )]
    pub metrics_listen: SocketAddr,

    /// Health: /healthz (alive) and /readyz (configuration loaded, listeners up).
    #[arg(
        long,
        env = "CONNECTORS_HEALTH_LISTEN",
        default_value = "127.0.0.1:15021"
    )]
    pub health_listen: SocketAddr,

    /// CA certificate (PEM) that signs the certificates presented to workloads. Default:
    /// `ca.crt` in the config folder, created with `ca.key` at first start.
    #[arg(long, env = "CONNECTORS_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// The CA's private key (PEM).
    #[arg(long, env = "CONNECTORS_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Extra name-to-address entries (hosts-file format) used before DNS for tool hosts.
    #[arg(long, env = "CONNECTORS_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,

    /// Seconds a tool may take to connect.
    #[arg(long, env = "CONNECTORS_CONNECT_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub connect_timeout: Duration,

    /// Seconds a tool may take to send its response headers.
    #[arg(long, env = "CONNECTORS_RESPONSE_TIMEOUT", default_value = "300", value_parser = seconds)]
    pub response_timeout: Duration,

    /// Seconds to let open connections finish at shutdown.
    #[arg(long, env = "CONNECTORS_DRAIN_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub drain_timeout: Duration,

    /// Data-path worker threads, each with its own listeners and upstream pools. Default: one
    /// per CPU.
    #[arg(long, env = "CONNECTORS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,

    /// Log format.
    #[arg(
        long,
        env = "CONNECTORS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OriginalDstSource {
    /// The eBPF redirect's record when `--redirect-cgroup` is given, then netfilter's.
    Auto,
    /// netfilter's SO_ORIGINAL_DST (iptables/nftables REDIRECT or DNAT).
    Netfilter,
    /// The eBPF redirect's record only (needs `--redirect-cgroup`).
    Ebpf,
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
    /// The number of worker threads.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The CA files: given, or `ca.crt`/`ca.key` in the config folder.
    pub fn ca_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.ca_cert, &self.ca_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (
                self.config_dir.join("ca.crt"),
                self.config_dir.join("ca.key"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_seconds() {
        let a = Args::try_parse_from([
            "connectors-agent",
            "--config-dir",
            "/tmp/x",
            "--response-timeout",
            "1.5",
        ])
        .unwrap();
        assert_eq!(a.response_timeout, Duration::from_millis(1500));
        assert_eq!(a.ca_paths().0, PathBuf::from("/tmp/x/ca.crt"));
        assert!(
            Args::try_parse_from(["x", "--config-dir", "/t", "--connect-timeout", "-1"]).is_err()
        );
        assert!(Args::try_parse_from(["x", "--config-dir", "/t", "--ca-cert", "/c"]).is_err());
    }
}
