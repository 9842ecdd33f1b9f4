//! The injecting proxy: an explicit forward proxy (plain HTTP and `CONNECT`) and a transparent
//! listener, both ending in the same interception (TLS termination with a minted certificate,
//! HTTP/1.1 or HTTP/2) and the same request handler (pick the Connector, add its credentials,
//! forward, stream the answer back).

mod accept;
mod forward;
mod handler;
mod intercept;
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

use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::tls::LeafCertificates;
use crate::upstream::Upstreams;

pub use forward::serve_forward;
pub use refusal::{REFUSAL_HEADER, Refusal};
pub use transparent::{
    Destination, FirstFound, LookupError, OriginalDst, SoOriginalDst, serve_transparent,
};

/// A response body: the tool's, or one the proxy wrote.
pub type ProxyBody = crate::body::Body;

/// Settings of the data path.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// How long a tool may take to send response headers.
    pub response_timeout: Duration,
    /// How long a workload may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What every connection of the proxy shares.
pub struct Shared {
    pub catalog: ArcSwap<Catalog>,
    pub leaves: LeafCertificates,
    /// Upstream clients (per worker thread).
    pub upstreams: Arc<Upstreams>,
    pub settings: ProxySettings,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the agent stops: listeners stop accepting, connections finish and close.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// The workload a redirected connection came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub cgroup_id: u64,
    pub netns_cookie: u64,
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
}
