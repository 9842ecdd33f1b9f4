//! The injecting proxy: an explicit forward proxy (plain HTTP and `CONNECT`) and a transparent
//! listener, both ending in the same interception (TLS termination with a minted certificate,
//! HTTP/1.1 or HTTP/2) and the same request handler (pick the Connector, add its credentials,
//! forward, stream the answer back).

mod accept;
pub mod admission;
mod audit;
mod choose;
mod forward;
mod handler;
pub mod idle;
mod intercept;
mod passthrough;
mod realm;
mod refusal;
mod rewind;
mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use connectors_crd::address::Scheme;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::Access;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::source::kube::Refresh;
use crate::tls::LeafCertificates;
use crate::upstream::Upstreams;
use crate::workload::{Pod, PodIndex, Workload};
use admission::Admission;
use idle::{Activity, Timeouts};

pub use forward::serve_forward;
pub use refusal::{REFUSAL_HEADER, Refusal};
pub use transparent::{FirstFound, LookupError, OriginalDst, SoOriginalDst, serve_transparent};

/// A response body: the tool's, or one the proxy wrote.
pub type ProxyBody = crate::body::Body;

/// Settings of the data path.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// How long a tool may take to send response headers.
    pub response_timeout: Duration,
    /// How long a workload may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Header and idle timeouts of workload connections.
    pub timeouts: Timeouts,
    /// How long a passed-through connection may take to reach its destination.
    pub connect_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            timeouts: Timeouts::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What every connection of the proxy shares.
pub struct Shared {
    pub catalog: ArcSwap<Catalog>,
    /// The generation of [`Shared::catalog`], sent on every swap (the redirect and requests
    /// waiting for credentials follow it).
    pub generation: tokio::sync::watch::Sender<u64>,
    /// Kubernetes mode: pod identities and access checks. `None` standalone, where every
    /// workload may use every Connector.
    pub kube: Option<KubeMode>,
    pub leaves: Arc<LeafCertificates>,
    /// Upstream clients (per worker thread).
    pub upstreams: Arc<Upstreams>,
    pub settings: ProxySettings,
    pub metrics: Arc<Metrics>,
    /// Caps on open workload connections.
    pub admission: Arc<Admission>,
    /// Cancelled when the agent stops: listeners stop accepting, connections finish and close.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// What the proxy knows of the cluster in Kubernetes mode.
pub struct KubeMode {
    /// The labelled pods of this node.
    pub pods: Arc<ArcSwap<PodIndex>>,
    /// RBAC checks (SubjectAccessReview, cached).
    pub access: Access,
    /// Asks the configuration source to fetch credentials now.
    pub refresh: Refresh,
}

impl Shared {
    /// Kubernetes mode: the labelled pod of this node with this address.
    pub fn pod_by_ip(&self, ip: std::net::IpAddr) -> Option<Arc<Pod>> {
        self.kube.as_ref()?.pods.load().by_ip(ip).cloned()
    }

    /// Kubernetes mode: the labelled pod whose cgroup the redirect matched.
    pub fn pod_by_workload(&self, w: &Workload) -> Option<Arc<Pod>> {
        self.kube
            .as_ref()?
            .pods
            .load()
            .by_cgroup(w.cgroup_id)
            .cloned()
    }
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The explicit forward proxy: the workload asked for the proxy.
    Forward,
    /// Redirected connections: the workload thinks it talks to the tool.
    Transparent,
}

/// What is known of a connection before its first request.
#[derive(Clone, Debug)]
pub struct ConnTarget {
    /// The workload's address.
    pub peer: SocketAddr,
    /// What the workload speaks on this connection.
    pub scheme: Scheme,
    /// The host the connection is for: the `CONNECT` host, or the TLS server name. `None` for a
    /// transparent plain-HTTP connection, whose requests' `Host` decides.
    pub host: Option<String>,
    /// The tool port the workload connected to.
    pub port: u16,
    /// Set for redirected connections.
    pub workload: Option<Workload>,
    pub listener: Listener,
    /// Where a redirected connection was going.
    pub original: Option<SocketAddr>,
    /// Kubernetes mode: the labelled pod the connection comes from, if it could be told.
    pub pod: Option<Arc<Pod>>,
    /// The connection's liveness (requests mark themselves in flight on it).
    pub activity: Arc<Activity>,
}
