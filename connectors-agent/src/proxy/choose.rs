//! Which Connector's credentials a request gets, if any: the Connector serving its scheme, host,
//! port and path (longest prefix), among those the workload may use.
//!
//! - Standalone, every workload may use every Connector.
//! - Kubernetes mode, the request must come from a labelled pod of this node, and the Connector
//!   must pass the namespace rule and RBAC for the pod (`connectors_crd::access`, checked by
//!   [`crate::authz`]). A Connector that serves the request but that the pod may not use is a
//!   403 saying which rule refused and what to change.
//! - On the transparent listener, a request no Connector serves (another name on the tool's
//!   address, another path of the tool's host) goes on to its destination without credentials:
//!   the workload thinks it talks to the tool directly, and nothing of it may break. The explicit
//!   proxy refuses such a request (it is never an open proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connectors_crd::access;
use connectors_crd::address::Scheme;
use connectors_crd::inject::Injector;
use connectors_crd::path::RequestPath;

use super::handler::authority_with_port;
use super::{ConnTarget, Listener, Refusal, Shared};
use crate::authz::AccessError;
use crate::catalog::{Catalog, Route, RouteState, Selection};
use crate::upstream::TrustId;

/// How long a request waits for credentials being fetched for its pod.
const CREDENTIALS_WAIT: Duration = Duration::from_secs(10);

/// What a request gets.
pub enum Choice {
    /// The Connector's credentials.
    Inject {
        route: Arc<Route>,
        injector: Option<Injector>,
    },
    /// No credentials: on to the destination as the workload sent it. `trust` checks the
    /// tool's certificate (a Connector's, when one serves the host); `to` is where to connect
    /// when no Connector serves the host at all (the original destination).
    Plain {
        trust: Option<TrustId>,
        to: Option<SocketAddr>,
    },
}

/// Chooses for one request.
pub async fn choose(
    shared: &Shared,
    target: &ConnTarget,
    host: &str,
    path: &RequestPath,
) -> Result<Choice, Refusal> {
    let catalog = shared.catalog.load_full();
    let scheme = target.scheme;
    let port = target.port;
    let transparent = target.listener == Listener::Transparent;
    let Some(kube) = &shared.kube else {
        let selection = catalog.select(scheme, host, port, path, |_| true);
        return match selection {
            Selection::Route(r) => {
                let route = r.clone();
                drop(catalog);
                credential_of(shared, route).await
            }
            other => not_served(
                &catalog,
                other,
                scheme,
                host,
                port,
                path,
                target,
                transparent,
            ),
        };
    };
    let Some(pod) = &target.pod else {
        // Not a labelled pod of this node: never credentials; a redirected connection goes on.
        if transparent {
            shared.metrics.decision("unidentified");
            return Ok(plain(&catalog, scheme, host, port, target));
        }
        shared.metrics.decision("unidentified");
        return Err(Refusal::Unidentified { peer: target.peer });
    };
    let who = &pod.identity;
    let selection = catalog.select(scheme, host, port, path, |r| {
        access::namespace_rule(&r.connector, &who.namespace).is_ok()
    });
    let route = match selection {
        Selection::Route(r) => r.clone(),
        Selection::Ambiguous(id) => return Err(Refusal::AmbiguousPath { id }),
        other => {
            // Served, but by a Connector of another namespace: say how to share it.
            if let Selection::Route(r) = catalog.select(scheme, host, port, path, |_| true)
                && let Err(denied) = access::namespace_rule(&r.connector, &who.namespace)
            {
                shared.metrics.decision(denied.rule());
                return Err(Refusal::NotAllowed {
                    who: who.to_string(),
                    denied: Box::new(denied),
                });
            }
            return not_served(
                &catalog,
                other,
                scheme,
                host,
                port,
                path,
                target,
                transparent,
            );
        }
    };
    drop(catalog);
    match kube.access.rbac(who, &route.id).await {
        Ok(()) => shared.metrics.decision("allowed"),
        Err(AccessError::Denied(denied)) => {
            shared.metrics.decision(denied.rule());
            return Err(Refusal::NotAllowed {
                who: who.to_string(),
                denied: Box::new(denied),
            });
        }
        Err(e @ AccessError::Unavailable { .. }) => {
            shared.metrics.decision("unavailable");
            return Err(Refusal::AccessUnavailable(e.to_string()));
        }
    }
    credential_of(shared, route).await
}

/// A request no Connector (the workload may use) serves: refused on the explicit proxy, passed
/// on without credentials from a redirected connection.
#[allow(clippy::too_many_arguments)]
fn not_served(
    catalog: &Catalog,
    selection: Selection<'_>,
    scheme: Scheme,
    host: &str,
    port: u16,
    path: &RequestPath,
    target: &ConnTarget,
    transparent: bool,
) -> Result<Choice, Refusal> {
    match selection {
        Selection::Ambiguous(id) => Err(Refusal::AmbiguousPath { id }),
        _ if transparent => Ok(plain(catalog, scheme, host, port, target)),
        Selection::OutsidePrefix(connectors) => Err(Refusal::OutsidePrefix {
            authority: authority_with_port(host, port),
            path: path.to_string(),
            connectors,
        }),
        _ => Err(Refusal::NoConnector {
            target: format!("{scheme}://{}", authority_with_port(host, port)),
        }),
    }
}

/// On without credentials: checked against a Connector's trust when one serves the host (the
/// tool's own CA), else to the original destination.
fn plain(catalog: &Catalog, scheme: Scheme, host: &str, port: u16, target: &ConnTarget) -> Choice {
    match catalog.any_route(scheme, host, port) {
        Some(r) => Choice::Plain {
            trust: Some(r.trust),
            to: None,
        },
        None => Choice::Plain {
            trust: None,
            to: target.original,
        },
    }
}

/// The route's credential, waiting a little when it is being fetched for this node.
async fn credential_of(shared: &Shared, route: Arc<Route>) -> Result<Choice, Refusal> {
    let mut last_why = match settled(&route) {
        Err(why) => why,
        Ok(done) => return done,
    };
    if let Some(k) = &shared.kube {
        k.refresh.now();
    }
    let mut generations = shared.generation.subscribe();
    let deadline = tokio::time::Instant::now() + CREDENTIALS_WAIT;
    loop {
        if tokio::time::timeout_at(deadline, generations.changed())
            .await
            .is_err()
        {
            break;
        }
        let catalog = shared.catalog.load();
        let Some(now) = catalog.route(&route.id) else {
            break;
        };
        match settled(now) {
            Ok(done) => return done,
            Err(why) => last_why = why,
        }
    }
    Err(Refusal::NotReady {
        id: route.id.clone(),
        why: format!("this agent does not hold its credentials: {last_why}"),
    })
}

/// What a route's state decides now, or why its credential is withheld (still to be had).
fn settled(route: &Arc<Route>) -> Result<Result<Choice, Refusal>, String> {
    match &route.state {
        RouteState::Ready(c) => Ok(Ok(Choice::Inject {
            injector: c.clone(),
            route: route.clone(),
        })),
        RouteState::NotReady(why) => Ok(Err(Refusal::NotReady {
            id: route.id.clone(),
            why: why.clone(),
        })),
        RouteState::Withheld(why) => Err(why.clone()),
    }
}
