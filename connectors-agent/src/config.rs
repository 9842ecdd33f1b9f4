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
    #[arg(
        long,
        env = "CONNECTORS_CONFIG_DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub config_dir: Option<PathBuf>,

    /// Kubernetes mode: classes and Connectors from the API server, credentials from the
    /// controller, and the labelled pods of this node (`--node-name`) redirected.
    #[arg(long, env = "CONNECTORS_KUBERNETES")]
    pub kubernetes: bool,

    /// Kubernetes mode: this node's name (from the downward API, `spec.nodeName`).
    #[arg(long, env = "NODE_NAME", required_if_eq("kubernetes", "true"))]
    pub node_name: Option<String>,

    /// Kubernetes mode: the namespace of the controller's Service (the agent's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "connectors-system")]
    pub controller_namespace: String,

    /// Kubernetes mode: the controller's Service, whose endpoints serve the agent API.
    #[arg(
        long,
        env = "CONNECTORS_CONTROLLER_SERVICE",
        default_value = "connectors-controller"
    )]
    pub controller_service: String,

    /// Kubernetes mode: the controller's URL, instead of its Service's endpoints.
    #[arg(long, env = "CONNECTORS_CONTROLLER_URL")]
    pub controller_url: Option<http::Uri>,

    /// Kubernetes mode: the cluster CA (PEM) the controller's certificate is checked against.
    #[arg(
        long,
        env = "CONNECTORS_CONTROLLER_CA",
        default_value = "/etc/connectors/ca/ca.crt"
    )]
    pub controller_ca: PathBuf,

    /// Kubernetes mode: the agent's ServiceAccount token, projected with the agent audience.
    #[arg(
        long,
        env = "CONNECTORS_TOKEN_FILE",
        default_value = "/var/run/secrets/connectors.io/agent/token"
    )]
    pub token_file: PathBuf,

    /// Kubernetes mode: where cgroup v2 is mounted, or a folder holding it as `unified/` (hybrid
    /// hosts). Default: from /proc/self/mountinfo.
    #[arg(long, env = "CONNECTORS_CGROUP_MOUNT")]
    pub cgroup_mount: Option<PathBuf>,

    /// Kubernetes mode: the cgroup v2 folder holding the pods (default: `kubepods` or
    /// `kubepods.slice` under the cgroup v2 mount).
    #[arg(long, env = "CONNECTORS_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// A folder on a bpf file system (e.g. /sys/fs/bpf/connectors) through which a stopping
    /// agent hands its redirect over to the next one (a rolling restart without a connection
    /// going direct or refused). Without it, a stopping agent detaches its redirect.
    #[arg(long, env = "CONNECTORS_HANDOFF_DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// Kubernetes mode: this agent's pod (from the downward API), to tell a restart (its
    /// DaemonSet stays: hand over) from an uninstall (it goes: detach).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Kubernetes mode: seconds an RBAC answer (SubjectAccessReview) is reused.
    #[arg(long, env = "CONNECTORS_AUTHZ_TTL", default_value = "10", value_parser = seconds)]
    pub authz_ttl: Duration,

    /// Kubernetes mode: seconds between fetches of credentials from the controller.
    #[arg(long, env = "CONNECTORS_CREDENTIALS_REFRESH", default_value = "10", value_parser = seconds)]
    pub credentials_refresh: Duration,

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

    /// The unified REST API (`/connectors/v1alpha1/...`, the page `/connectors/ui/`), served
    /// locally over the configuration folder (standalone mode; loopback only). Off unless set.
    #[arg(
        long,
        env = "CONNECTORS_API_LISTEN",
        requires = "api_token_file",
        conflicts_with = "kubernetes"
    )]
    pub api_listen: Option<SocketAddr>,

    /// The unified API's token: callers send the file's content as `Authorization: Bearer`.
    /// Read at each request, so it can be replaced without a restart.
    #[arg(long, env = "CONNECTORS_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// The unified API relays POST, PUT, PATCH and DELETE to tools (off: 405).
    #[arg(long, env = "CONNECTORS_API_ALLOW_WRITES")]
    pub api_allow_writes: bool,

    /// Seconds one exchange of the unified API with a tool may take (then 504).
    #[arg(long, env = "CONNECTORS_API_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub api_timeout: Duration,

    /// Seconds the unified API reuses a tool's answer (0: never).
    #[arg(long, env = "CONNECTORS_API_CACHE_TTL", default_value = "5", value_parser = seconds)]
    pub api_cache_ttl: Duration,

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

    /// Seconds a workload connection may take from its first byte (or from accept) to a complete
    /// request head, TLS handshake included. Long enough for a client starved of CPU (a node
    /// starting a hundred pods); the per-peer cap, not this, bounds what a stalling client holds.
    #[arg(long, env = "CONNECTORS_HEADER_TIMEOUT", default_value = "30", value_parser = seconds)]
    pub header_timeout: Duration,

    /// Seconds a keep-alive workload connection may sit idle between requests.
    #[arg(long, env = "CONNECTORS_IDLE_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub idle_timeout: Duration,

    /// Open workload connections, all clients together. Default: from the open-files limit
    /// (raised to its hard limit at start), leaving room for upstream connections.
    #[arg(long, env = "CONNECTORS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Open workload connections from one client address (a pod, or a host address).
    #[arg(
        long,
        env = "CONNECTORS_MAX_CONNECTIONS_PER_PEER",
        default_value = "512",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections_per_peer: u32,

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
    /// The unified API's options, when `--api-listen` is given.
    pub fn api_options(&self) -> Option<crate::api::ApiOptions> {
        self.api_listen.map(|listen| crate::api::ApiOptions {
            listen,
            token_file: self.api_token_file.clone(),
            allow_writes: self.api_allow_writes,
            timeout: self.api_timeout,
            cache_ttl: self.api_cache_ttl,
        })
    }

    /// The number of worker threads.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The CA files: given, or `ca.crt`/`ca.key` in the config folder; `None` in Kubernetes
    /// mode without them (the controller issues an intermediate).
    pub fn ca_paths(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.ca_cert, &self.ca_key, &self.config_dir) {
            (Some(c), Some(k), _) => Some((c.clone(), k.clone())),
            (_, _, Some(dir)) => Some((dir.join("ca.crt"), dir.join("ca.key"))),
            _ => None,
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
        // The command line's defaults are the proxy's own (tests and embedders use those).
        let d = crate::proxy::ProxySettings::default();
        assert_eq!(a.header_timeout, d.timeouts.header);
        assert_eq!(a.idle_timeout, d.timeouts.idle);
        assert_eq!(a.connect_timeout, d.connect_timeout);
        assert_eq!(
            a.ca_paths().map(|p| p.0),
            Some(PathBuf::from("/tmp/x/ca.crt"))
        );
        // One source: a folder or the cluster.
        assert!(Args::try_parse_from(["x"]).is_err());
        assert!(Args::try_parse_from(["x", "--config-dir", "/t", "--kubernetes"]).is_err());
        assert!(
            Args::try_parse_from(["x", "--kubernetes"]).is_err(),
            "needs --node-name"
        );
        let k = Args::try_parse_from(["x", "--kubernetes", "--node-name", "n1"]).unwrap();
        assert!(k.ca_paths().is_none());
        assert!(
            Args::try_parse_from(["x", "--config-dir", "/t", "--connect-timeout", "-1"]).is_err()
        );
        assert!(Args::try_parse_from(["x", "--config-dir", "/t", "--ca-cert", "/c"]).is_err());
        assert!(
            Args::try_parse_from(["x", "--config-dir", "/t", "--api-listen", "127.0.0.1:1"])
                .is_err(),
            "the API needs its token file"
        );
        let a = Args::try_parse_from([
            "x",
            "--config-dir",
            "/t",
            "--api-listen",
            "127.0.0.1:1",
            "--api-token-file",
            "/t/token",
        ])
        .unwrap();
        assert_eq!(a.api_options().map(|o| o.listen.port()), Some(1));
    }
}
