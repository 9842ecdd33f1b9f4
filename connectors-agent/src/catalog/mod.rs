//! The proxy's view of the configuration: which Connector serves which endpoint, with what
//! credentials. Built whole from a set of objects and swapped atomically, so a request sees
//! one consistent generation.

mod build;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use connectors_crd::address::{Scheme, ToolAddress};
use connectors_crd::condition::Condition;
use connectors_crd::inject::Injector;
use connectors_crd::path::{Coverage, RequestPath};
use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::upstream::TrustId;

pub use build::build;

/// Where an object came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Source {
    /// A file of the standalone config folder (and the document's index in it).
    File { path: PathBuf, document: usize },
    /// The Kubernetes API.
    Api,
    /// A class built into the agent (`deploy/classes/<name>.yaml`).
    BuiltIn(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File { path, document: 0 } => write!(f, "{}", path.display()),
            Source::File { path, document } => {
                write!(f, "{} (document {})", path.display(), document + 1)
            }
            Source::Api => f.write_str("the Kubernetes API"),
            Source::BuiltIn(name) => write!(f, "built-in class {name}"),
        }
    }
}

/// The objects a catalog is built from.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub classes: BTreeMap<String, (ConnectorClass, Source)>,
    pub connectors: BTreeMap<ConnectorId, (Connector, Source)>,
    /// By `(namespace, name)`.
    pub secrets: BTreeMap<(String, String), (Secret, Source)>,
    /// Connectors whose Secrets the source does not hold (Kubernetes mode: no pod of this node
    /// may use them, or they are being fetched), and why.
    pub withheld: BTreeMap<ConnectorId, String>,
}

/// A problem with one object or file; the rest of the configuration keeps working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub source: Source,
    /// `Kind namespace/name`, when the object could be identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {o}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Whether a route can serve requests.
#[derive(Clone, Debug)]
pub enum RouteState {
    /// Serve, putting on this injector's credentials (none for anonymous auth types).
    Ready(Option<Injector>),
    /// Refuse with this reason (e.g. its Secret is missing).
    NotReady(String),
    /// Its credentials are not held by this agent (Kubernetes mode), for this reason.
    Withheld(String),
}

/// One Connector, ready to serve requests.
#[derive(Debug)]
pub struct Route {
    pub id: ConnectorId,
    /// The Connector as written (its namespace rule needs its annotations).
    pub connector: Arc<Connector>,
    pub state: RouteState,
    /// The trust set the tool's certificate is checked against (and the client certificate
    /// presented, if the Connector has one).
    pub trust: TrustId,
}

/// The status of a Connector as the agent sees it (no secrets).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorReport {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub address: String,
    pub source: Source,
    pub endpoints: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointKey {
    scheme: Scheme,
    host: String,
    port: u16,
}

/// The outcome of matching a request to a Connector.
#[derive(Debug)]
pub enum Selection<'a> {
    Route(&'a Arc<Route>),
    /// No Connector serves this scheme, host and port.
    NoConnector,
    /// Connectors serve the host, but none the path.
    OutsidePrefix(Vec<ConnectorId>),
    /// A Connector's prefix covers one reading of the path and not another (an encoded `/` or
    /// `\`, `;params`, doubled slashes next to a dot segment): the path is refused.
    Ambiguous(ConnectorId),
}

/// One generation of the configuration.
#[derive(Debug, Default)]
pub struct Catalog {
    pub generation: u64,
    routes: Vec<Arc<Route>>,
    /// Candidates per endpoint, longest path prefix first.
    index: HashMap<EndpointKey, Vec<(ToolAddress, Arc<Route>)>>,
    pub reports: Vec<ConnectorReport>,
    pub problems: Vec<Problem>,
}

impl Catalog {
    /// Picks the Connector for a request: same scheme, host and port, longest path prefix that
    /// covers the path as the tool will resolve it, among those `allowed` (the workload's
    /// permitted Connectors).
    pub fn select(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
        path: &RequestPath,
        allowed: impl Fn(&Route) -> bool,
    ) -> Selection<'_> {
        let key = EndpointKey {
            scheme,
            host: normalize_host(host),
            port,
        };
        let Some(candidates) = self.index.get(&key) else {
            return Selection::NoConnector;
        };
        let mut visible = candidates.iter().filter(|(_, r)| allowed(r)).peekable();
        if visible.peek().is_none() {
            return Selection::NoConnector;
        }
        let mut outside = Vec::new();
        for (address, route) in visible {
            match address.coverage(path) {
                Coverage::Inside => return Selection::Route(route),
                Coverage::Ambiguous => return Selection::Ambiguous(route.id.clone()),
                Coverage::Outside => outside.push(route.id.clone()),
            }
        }
        Selection::OutsidePrefix(outside)
    }

    /// Some Connector serving this scheme, host and port, whatever the path and namespace (for
    /// its trust set: the tool's own CA).
    pub fn any_route(&self, scheme: Scheme, host: &str, port: u16) -> Option<&Arc<Route>> {
        let key = EndpointKey {
            scheme,
            host: normalize_host(host),
            port,
        };
        self.index.get(&key)?.first().map(|(_, r)| r)
    }

    /// The route of a Connector.
    pub fn route(&self, id: &ConnectorId) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &r.id == id)
    }

    /// Whether any Connector serves `host:port`, whatever the scheme and path.
    pub fn covers_endpoint(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        [Scheme::Http, Scheme::Https].into_iter().any(|scheme| {
            self.index.contains_key(&EndpointKey {
                scheme,
                host: host.clone(),
                port,
            })
        })
    }

    /// Every `(host, port)` some Connector serves.
    pub fn endpoints(&self) -> Vec<(String, u16)> {
        let mut v: Vec<_> = self
            .index
            .keys()
            .map(|k| (k.host.clone(), k.port))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// Lowercase, no trailing dot, no IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}
