//! The explicit forward proxy: `HTTPS_PROXY=http://agent:3128` for git, curl, skopeo. Plain
//! requests in absolute form are handled directly; `CONNECT` opens a tunnel that is intercepted
//! only when a Connector serves its host, and refused with 403 otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use connectors_crd::address::Scheme;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use super::accept::{WhenFull, accept_loop};
use super::audit::Audited;
use super::handler::{self, authority_with_port};
use super::idle::{Activity, Guarded, Watched};
use super::{ConnTarget, Listener, ProxyBody, Refusal, Shared, intercept};
use crate::catalog::normalize_host;

/// Accepts forward-proxy connections until shutdown.
pub async fn serve_forward(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(
        &shared,
        listener,
        "forward",
        WhenFull::Answer503,
        |stream, peer, activity| {
            let span = tracing::debug_span!("conn", listener = "forward", %peer);
            Some((
                serve_connection(shared.clone(), stream, peer, activity),
                span,
            ))
        },
    )
    .await;
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    activity: Arc<Activity>,
) {
    let svc_shared = shared.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let activity = svc_activity.clone();
        async move {
            let busy = activity.begin();
            let resp = proxy_request(shared, peer, activity, req).await;
            Ok::<_, Infallible>(resp.map(|b| Guarded::new(b, busy)))
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(Watched::new(stream, activity)), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "proxy connection ended with an error");
    }
}

async fn proxy_request(
    shared: Arc<Shared>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Response<Audited<ProxyBody>> {
    if req.method() == Method::CONNECT {
        return connect(shared, peer, activity, req).map(Audited::plain);
    }
    let uri = req.uri();
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => {
            return Refusal::BadRequest(format!("scheme '{other}' is not proxied"))
                .into_response()
                .map(Audited::plain);
        }
        None => {
            return Refusal::BadRequest(
                "this is a forward proxy: send absolute URLs (http://host/path) or CONNECT".into(),
            )
            .into_response()
            .map(Audited::plain);
        }
    };
    let Some(host) = uri.host().map(normalize_host) else {
        return Refusal::BadRequest("the URL has no host".into())
            .into_response()
            .map(Audited::plain);
    };
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let target = ConnTarget {
        peer,
        scheme,
        host: Some(host),
        port,
        workload: None,
        listener: Listener::Forward,
        original: None,
        pod: shared.pod_by_ip(peer.ip()),
        activity,
    };
    handler::handle(&shared, &target, req).await
}

/// Answers a `CONNECT`: 200 and interception when a Connector serves the host, else 403 without
/// any connection to it.
fn connect(
    shared: Arc<Shared>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority() else {
        return Refusal::BadRequest("CONNECT needs host:port".into()).into_response();
    };
    let host = normalize_host(authority.host());
    let port = authority.port_u16().unwrap_or(443);
    if !shared.catalog.load().covers_endpoint(&host, port) {
        let refusal = Refusal::NoConnector {
            target: authority_with_port(&host, port),
        };
        tracing::info!(code = refusal.code(), "refused CONNECT: {refusal}");
        shared.metrics.refusal(refusal.code());
        return refusal.into_response();
    }
    tracing::debug!(%host, port, "tunnel opened");
    let task_shared = shared.clone();
    shared.tasks.spawn(
        async move {
            let tunnel = async {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        let target = ConnTarget {
                            peer,
                            scheme: Scheme::Https,
                            host: Some(host.clone()),
                            port,
                            workload: None,
                            listener: Listener::Forward,
                            original: None,
                            pod: task_shared.pod_by_ip(peer.ip()),
                            activity: activity.clone(),
                        };
                        intercept::serve_tunnel(task_shared, TokioIo::new(upgraded), target, host)
                            .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            };
            // The tunnel is held to the same timeouts as the connection it runs in.
            tokio::select! {
                () = tunnel => {}
                () = activity.expired() => tracing::debug!("closing a silent or idle tunnel"),
            }
        }
        .in_current_span(),
    );
    let mut resp = Response::new(Either::Right(Full::default()));
    *resp.status_mut() = StatusCode::OK;
    resp
}
