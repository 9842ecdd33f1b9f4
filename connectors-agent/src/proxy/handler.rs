//! One request: pick the Connector, add its credentials, forward, stream the answer back.

use std::error::Error as _;
use std::time::Instant;

use std::time::Duration;

use bytes::Bytes;
use connectors_crd::address::Scheme;
use connectors_crd::inject::{Attempt, Exchange, InjectError, Injector, Next};
use connectors_crd::path::RequestPath;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::Instrument as _;

use connectors_crd::ConnectorId;

use super::audit::{self, Audited};
use super::choose::{self, Choice};
use super::realm::RealmClient;
use super::{ConnTarget, ProxyBody, Refusal, Shared};
use crate::body;
use crate::catalog::normalize_host;
use crate::upstream::{RequestBody, UpstreamClient};

/// Handles one request; never fails (a refusal becomes its response).
pub async fn handle(
    shared: &Shared,
    target: &ConnTarget,
    req: Request<Incoming>,
) -> Response<Audited<ProxyBody>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let who = target.pod.as_ref().map(|p| p.identity.to_string());
    match forward(shared, target, req).await {
        Ok(Forwarded { response, injected }) => {
            let status = response.status().as_u16();
            let record = match injected {
                Some(i) => {
                    shared
                        .metrics
                        .request(&i.connector, status, started.elapsed());
                    Some(audit::Record {
                        pod: target
                            .pod
                            .as_ref()
                            .map(|p| format!("{}/{}", p.identity.namespace, p.identity.pod)),
                        service_account: target
                            .pod
                            .as_ref()
                            .map(|p| p.identity.service_account.clone()),
                        peer: target.peer.to_string(),
                        connector: i.connector,
                        method: method.to_string(),
                        host: i.host,
                        path,
                        status,
                        started,
                    })
                }
                None => {
                    tracing::debug!(%method, %path, status, "passed on without credentials");
                    shared.metrics.passed_through();
                    None
                }
            };
            response.map(|b| Audited::new(b, record))
        }
        Err(refusal) => {
            tracing::info!(
                %method,
                %path,
                peer = %target.peer,
                pod = who.as_deref().unwrap_or("-"),
                code = refusal.code(),
                "refused: {refusal}"
            );
            shared.metrics.refusal(refusal.code());
            refusal.into_response_to(&method).map(Audited::plain)
        }
    }
}

/// A forwarded request's response, and the Connector whose credentials it carried.
struct Forwarded {
    response: Response<ProxyBody>,
    injected: Option<Injected>,
}

struct Injected {
    connector: String,
    host: String,
}

async fn forward(
    shared: &Shared,
    target: &ConnTarget,
    mut req: Request<Incoming>,
) -> Result<Forwarded, Refusal> {
    let host = request_host(target, &req)?;
    let port = target.port;
    let path =
        RequestPath::parse(req.uri().path()).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let (route, injector, trust, to) = match choose::choose(shared, target, &host, &path).await? {
        Choice::Inject { route, injector } => {
            let trust = route.trust;
            (Some(route), injector, Some(trust), None)
        }
        Choice::Plain { trust, to } => (None, None, trust, to),
    };
    let connector = route.as_ref().map(|r| r.id.to_string());
    let id = route.as_ref().map(|r| r.id.clone());
    let authority = match to {
        // No Connector serves the host: on to where the workload was going, Host as it sent it.
        Some(addr) => authority_with_port(&addr.ip().to_string(), addr.port()),
        None => authority(&host, port, target.scheme),
    };
    let span = tracing::debug_span!("request", connector = connector.as_deref().unwrap_or("-"), %authority);
    let trust = match trust {
        Some(t) => t,
        None => shared
            .upstreams
            .trust(&[])
            .map_err(|e| Refusal::BadRequest(format!("upstream TLS: {e}")))?,
    };
    let client = shared
        .upstreams
        .client(trust, req.version())
        .map_err(|e| match &id {
            Some(id) => Refusal::NotReady {
                id: id.clone(),
                why: format!("upstream TLS: {e}"),
            },
            None => Refusal::BadRequest(format!("upstream TLS: {e}")),
        })?;
    let upgrade = Upgrade::of(&mut req);
    let keep_host = to.is_some().then(|| host.clone());
    let timeout = shared.settings.response_timeout;
    let mut outgoing = Outgoing::new(req, keep_host.as_deref(), upgrade.as_ref(), timeout).await?;

    let who = || id.clone().unwrap_or_else(|| ConnectorId::new("-", "-"));
    let tool = authority_with_port(&host, port);
    let realm = RealmClient {
        shared,
        trust,
        timeout,
    };
    let exchange = Exchange {
        transport: &realm,
        tokens: shared.upstreams.tokens(),
    };
    let mut attempt = Attempt::new(outgoing.replayable());
    let mut resp = loop {
        let upstream_req = outgoing
            .request(
                target.scheme,
                &authority,
                Target {
                    host: &host,
                    port,
                    path: &path,
                },
                injector.as_ref(),
                &mut attempt,
                &exchange,
            )
            .instrument(span.clone())
            .await
            .map_err(|e| registry_told(injector.as_ref(), injection_refusal(e, who(), &tool)))?;
        let resp = send(&client, upstream_req, timeout)
            .instrument(span.clone())
            .await
            .map_err(|e| match e {
                SendError::Timeout => Refusal::Timeout {
                    id: who(),
                    authority: tool.clone(),
                    after: timeout,
                },
                SendError::Failed(e) if is_timeout(&e) => Refusal::Timeout {
                    id: who(),
                    authority: tool.clone(),
                    after: timeout,
                },
                SendError::Failed(e) => {
                    let cause = describe_upstream_error(&e);
                    match &injector {
                        Some(i) if i.client_identity().is_some() && cause.contains("received fatal alert") => {
                            Refusal::ClientCertificateRefused {
                                id: who(),
                                authority: tool.clone(),
                                cause: format!("{cause} (check the certificate and key in the Connector's Secret, and that the tool trusts their issuer)"),
                            }
                        }
                        _ => Refusal::Unreachable {
                            id: who(),
                            authority: tool.clone(),
                            cause,
                        },
                    }
                }
            })?;
        let Some(inj) = &injector else { break resp };
        match inj
            .on_response(&mut attempt, resp.status(), resp.headers(), &exchange)
            .instrument(span.clone())
            .await
        {
            Ok(Next::Done) => break resp,
            Ok(Next::Retry) => {
                tracing::debug!(parent: &span, status = resp.status().as_u16(), "challenged; sending again with what the tool asked for");
            }
            Err(e) => {
                return Err(registry_told(
                    injector.as_ref(),
                    injection_refusal(e, who(), &tool),
                ));
            }
        }
    };
    if let Some(inj) = &injector {
        let scrubbed = inj.scrub_response(&attempt, resp.headers_mut());
        if scrubbed > 0 {
            tracing::warn!(
                connector = connector.as_deref().unwrap_or("-"),
                headers = scrubbed,
                "the tool's response carried the injected credential in its headers; removed"
            );
        }
    }
    let injected = connector
        .filter(|_| attempt.carried_credentials())
        .map(|connector| Injected {
            connector,
            host: host.clone(),
        });
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgrade) = upgrade else {
            return Err(Refusal::Unreachable {
                id: who(),
                authority: tool,
                cause: "the tool switched protocols without being asked to".into(),
            });
        };
        let response =
            upgrade
                .splice(shared, target, resp)
                .map_err(|cause| Refusal::Unreachable {
                    id: who(),
                    authority: tool.clone(),
                    cause,
                })?;
        return Ok(Forwarded { response, injected });
    }
    strip_hop_by_hop(resp.headers_mut());
    *resp.version_mut() = Version::default();
    let (parts, body) = resp.into_parts();
    let body = body::coalesce(&parts.headers, body)
        .await
        .map_err(|e| Refusal::Unreachable {
            id: who(),
            authority: tool,
            cause: format!("the response body broke off: {e}"),
        })?;
    Ok(Forwarded {
        response: Response::from_parts(parts, body),
        injected,
    })
}

/// A refusal of a registry Connector's request, in the registry's own error form (see
/// [`Refusal::Registry`]); any other refusal as it is.
fn registry_told(injector: Option<&Injector>, refusal: Refusal) -> Refusal {
    match injector {
        Some(Injector::RegistryToken(_)) => Refusal::Registry(Box::new(refusal)),
        _ => refusal,
    }
}

/// The refusal for what the injector could not do.
fn injection_refusal(e: InjectError, id: ConnectorId, authority: &str) -> Refusal {
    match e {
        InjectError::CredentialsRefused { status } => Refusal::CredentialsRefused {
            id,
            authority: authority.to_owned(),
            status: status.as_u16(),
        },
        InjectError::ClientCertificateRefused { status } => Refusal::ClientCertificateRefused {
            id,
            authority: authority.to_owned(),
            cause: format!(
                "{}; check the certificate and key in the Connector's Secret, and that the tool trusts their issuer",
                connectors_crd::probe::status_line(status)
            ),
        },
        cause @ (InjectError::RealmRefused { .. } | InjectError::TokenRefused { .. }) => {
            Refusal::TokenRefused { id, cause }
        }
        cause @ InjectError::ScopeNotGranted { .. } => Refusal::ScopeNotGranted { id, cause },
        cause @ InjectError::RealmNotAllowed { .. } => Refusal::RealmNotAllowed { id, cause },
        cause => Refusal::TokenUnavailable { id, cause },
    }
}

enum SendError {
    Timeout,
    Failed(hyper_util::client::legacy::Error),
}

/// Sends a request; the response timeout runs from when its body has been sent whole, so an
/// upload (or any streamed body) is never cut by it, and covers the response head only.
async fn send(
    client: &UpstreamClient,
    req: Request<body::Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    let (parts, body) = req.into_parts();
    let (body, sent) = RequestBody::new(body);
    let response = client.request(Request::from_parts(parts, body));
    let deadline = async {
        // Sent whole, or dropped (the tool answered before reading it all).
        let _ = sent.await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        r = response => r.map_err(SendError::Failed),
        () = deadline => Err(SendError::Timeout),
    }
}

/// Where a request goes, as the injector matches it.
struct Target<'a> {
    host: &'a str,
    port: u16,
    path: &'a RequestPath,
}

/// A request on its way to the tool: its head as it goes (hop-by-hop headers and the client's
/// Host removed), and its body: held whole when small (so it can be sent again after a
/// challenge), else streamed once.
struct Outgoing<'a> {
    method: http::Method,
    query: Option<String>,
    headers: HeaderMap,
    upgrade: Option<&'a Upgrade>,
    body: Held,
}

enum Held {
    /// Small, or empty: can be sent again.
    Whole(Full<Bytes>),
    /// Streamed; taken by the first send.
    Stream(Option<Incoming>),
}

impl<'a> Outgoing<'a> {
    async fn new(
        req: Request<Incoming>,
        keep_host: Option<&str>,
        upgrade: Option<&'a Upgrade>,
        timeout: Duration,
    ) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        if let Some(h) = keep_host
            && let Ok(v) = http::HeaderValue::try_from(h)
        {
            // Sent to an address: the Host the workload named goes with it.
            parts.headers.insert(header::HOST, v);
        }
        // An upgrade request's body is empty, and its connection must stay hyper's to hand over.
        let body = if upgrade.is_some() {
            Held::Stream(Some(body))
        } else {
            let coalesced = tokio::time::timeout(timeout, body::coalesce(&parts.headers, body))
                .await
                .map_err(|_| {
                    Refusal::BadRequest(format!(
                        "the request body did not arrive within {}s",
                        timeout.as_secs()
                    ))
                })?
                .map_err(|e| {
                    Refusal::BadRequest(format!("the request body could not be read: {e}"))
                })?;
            match coalesced {
                Either::Right(full) => Held::Whole(full),
                Either::Left(stream) if stream.is_end_stream() => {
                    Held::Whole(Full::new(Bytes::new()))
                }
                Either::Left(stream) => Held::Stream(Some(stream)),
            }
        };
        Ok(Self {
            method: parts.method,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            upgrade,
            body,
        })
    }

    fn replayable(&self) -> bool {
        matches!(self.body, Held::Whole(_))
    }

    /// The request of one try: the matched (normalized) path, the credentials, HTTP/1.1
    /// framing.
    async fn request<T: connectors_crd::inject::Transport>(
        &mut self,
        scheme: Scheme,
        authority: &str,
        to: Target<'_>,
        injector: Option<&Injector>,
        attempt: &mut Attempt,
        exchange: &Exchange<'_, T>,
    ) -> Result<Request<body::Body>, InjectError> {
        let mut headers = self.headers.clone();
        let path_and_query = match injector {
            Some(i) => {
                i.prepare(
                    connectors_crd::inject::Outgoing {
                        method: &self.method,
                        scheme,
                        host: to.host,
                        port: to.port,
                        path: to.path,
                        query: self.query.as_deref(),
                        headers: &mut headers,
                    },
                    attempt,
                    exchange,
                )
                .await?
            }
            None => match &self.query {
                Some(q) => format!("{}?{q}", to.path),
                None => to.path.to_string(),
            },
        };
        if let Some(u) = self.upgrade {
            headers.insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            headers.insert(header::UPGRADE, u.offered.clone());
        }
        let body = match &mut self.body {
            Held::Whole(full) => Either::Right(full.clone()),
            Held::Stream(stream) => match stream.take() {
                Some(s) => Either::Left(s),
                // Only a replayable body is ever asked for twice.
                None => Either::Right(Full::new(Bytes::new())),
            },
        };
        let uri = format!("{scheme}://{authority}{path_and_query}")
            .parse::<Uri>()
            .map_err(|e| InjectError::Discovery {
                cause: format!("cannot form the upstream URL: {e}"),
            })?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Protocols an HTTP/1.1 upgrade may switch to. Anything else (`h2c` in particular, which would
/// let one upgraded connection carry any number of further requests to any path of the tool) is
/// dropped from the request, which then goes as a plain request.
const UPGRADABLE: &[&str] = &["websocket", "spdy/3.1"];

/// An HTTP/1.1 upgrade the workload asked for (WebSocket, kubectl exec and port-forward).
struct Upgrade {
    /// The protocols offered to the tool: the workload's, less those not allowed.
    offered: http::HeaderValue,
    downstream: hyper::upgrade::OnUpgrade,
}

impl Upgrade {
    /// The upgrade `req` asks for, if any is allowed.
    fn of(req: &mut Request<Incoming>) -> Option<Self> {
        if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
            return None;
        }
        let asked = req.headers().get(header::UPGRADE)?.to_str().ok()?;
        let allowed: Vec<&str> = asked
            .split(',')
            .map(str::trim)
            .filter(|p| UPGRADABLE.iter().any(|a| p.eq_ignore_ascii_case(a)))
            .collect();
        if allowed.is_empty() {
            tracing::debug!(
                upgrade = asked,
                "upgrade not allowed; sent as a plain request"
            );
            return None;
        }
        let offered = http::HeaderValue::try_from(allowed.join(", ")).ok()?;
        Some(Self {
            offered,
            downstream: hyper::upgrade::on(req),
        })
    }

    /// Splices the workload's and the tool's connections once the tool answered 101 with one of
    /// the offered protocols. The spliced stream counts as in flight on the workload's
    /// connection (it is never closed as idle).
    fn splice(
        self,
        shared: &Shared,
        target: &ConnTarget,
        mut resp: Response<Incoming>,
    ) -> Result<Response<ProxyBody>, String> {
        let chosen = resp
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .ok_or("the tool answered 101 without an Upgrade header")?;
        let offered = self.offered.to_str().unwrap_or_default();
        let chosen_str = chosen.to_str().unwrap_or_default().trim();
        if !offered
            .split(',')
            .any(|p| p.trim().eq_ignore_ascii_case(chosen_str))
        {
            return Err(format!(
                "the tool switched to '{chosen_str}', which was not asked for (asked: {offered})"
            ));
        }
        let upstream = hyper::upgrade::on(&mut resp);
        let downstream = self.downstream;
        let busy = target.activity.begin();
        shared.tasks.spawn(
            async move {
                let _busy = busy;
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                            Ok((sent, received)) => {
                                tracing::debug!(sent, received, "upgraded connection closed")
                            }
                            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            }
            .in_current_span(),
        );
        strip_hop_by_hop(resp.headers_mut());
        let h = resp.headers_mut();
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        h.insert(header::UPGRADE, chosen);
        Ok(resp.map(Either::Left))
    }
}

/// Whether the `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The host a request is for, checked against the connection's host when it has one.
fn request_host(target: &ConnTarget, req: &Request<Incoming>) -> Result<String, Refusal> {
    let named = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|a| a.host().to_owned())
        });
    match (&target.host, named) {
        (Some(conn), Some(named)) => {
            if normalize_host(conn) != normalize_host(&named) {
                return Err(Refusal::Misdirected {
                    connection: conn.clone(),
                    request: named,
                });
            }
            Ok(normalize_host(conn))
        }
        (Some(conn), None) => Ok(normalize_host(conn)),
        (None, Some(named)) => Ok(normalize_host(&named)),
        (None, None) => Err(Refusal::BadRequest(
            "the request names no host (no Host header)".into(),
        )),
    }
}

/// `host[:port]` for a URL: the port only when not the scheme's default.
fn authority(host: &str, port: u16, scheme: Scheme) -> String {
    let host = bracketed(host);
    if port == scheme.default_port() {
        host
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn authority_with_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Removes the headers that belong to one connection (RFC 9110 7.6.1), and proxy credentials.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The causes of an upstream error, joined (the client's own "client error (Connect)" wrapper
/// left out), with a hint when the tool's certificate is not trusted.
pub(super) fn describe_upstream_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
    if cur.is_none() {
        parts.push(e.to_string());
    }
    while let Some(err) = cur {
        let msg = err.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    let mut text = parts.join(": ");
    if text.contains("invalid peer certificate") {
        text.push_str(" (the tool's TLS certificate is not trusted: give the Connector a caCertSecretRef with the CA that signed it)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn authorities() {
        assert_eq!(authority("git.test", 443, Scheme::Https), "git.test");
        assert_eq!(authority("git.test", 8443, Scheme::Https), "git.test:8443");
        assert_eq!(authority("fd00::2", 80, Scheme::Http), "[fd00::2]");
        assert_eq!(authority_with_port("fd00::2", 80), "[fd00::2]:80");
    }
}
