//! One request: pick the Connector, add its credentials, forward, stream the answer back.

use std::error::Error as _;
use std::time::Instant;

use connectors_crd::address::Scheme;
use connectors_crd::credentials::Credential;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret as _;
use tracing::Instrument as _;

use super::{ConnTarget, ProxyBody, Refusal, Shared};
use crate::body;
use crate::catalog::{Selection, normalize_host};

/// Handles one request; never fails (a refusal becomes its response).
pub async fn handle(
    shared: &Shared,
    target: &ConnTarget,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    match forward(shared, target, req).await {
        Ok((resp, connector)) => {
            tracing::debug!(
                %method, %path, %connector,
                status = resp.status().as_u16(),
                ms = started.elapsed().as_millis() as u64,
                "forwarded"
            );
            shared
                .metrics
                .request(&connector, resp.status().as_u16(), started.elapsed());
            resp
        }
        Err(refusal) => {
            tracing::info!(%method, %path, code = refusal.code(), "refused: {refusal}");
            shared.metrics.refusal(refusal.code());
            refusal.into_response()
        }
    }
}

async fn forward(
    shared: &Shared,
    target: &ConnTarget,
    mut req: Request<Incoming>,
) -> Result<(Response<ProxyBody>, String), Refusal> {
    let host = request_host(target, &req)?;
    let port = target.port;
    let scheme = target.scheme;
    let authority = authority(&host, port, scheme);
    let route = {
        let catalog = shared.catalog.load();
        match catalog.select(scheme, &host, port, req.uri().path(), |_| true) {
            Selection::Route(r) => r.clone(),
            Selection::NoConnector => {
                return Err(Refusal::NoConnector {
                    target: format!("{scheme}://{}", authority_with_port(&host, port)),
                });
            }
            Selection::OutsidePrefix(connectors) => {
                return Err(Refusal::OutsidePrefix {
                    authority: authority_with_port(&host, port),
                    path: req.uri().path().to_owned(),
                    connectors,
                });
            }
        }
    };
    let credential = match &route.state {
        crate::catalog::RouteState::Ready(c) => c.clone(),
        crate::catalog::RouteState::NotReady(why) => {
            return Err(Refusal::NotReady {
                id: route.id.clone(),
                why: why.clone(),
            });
        }
    };
    let connector = route.id.to_string();
    let span = tracing::debug_span!("request", connector = %connector, %authority);

    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path_and_query = match &credential {
        Some(Credential::Query { name, value }) => {
            with_query_param(path_and_query, name, value.expose_secret())
        }
        _ => path_and_query.to_owned(),
    };
    let uri: Uri = format!("{scheme}://{authority}{path_and_query}")
        .parse()
        .map_err(|e| Refusal::BadRequest(format!("cannot form the upstream URL: {e}")))?;
    let client = shared
        .upstreams
        .client(route.trust, req.version())
        .map_err(|e| Refusal::NotReady {
            id: route.id.clone(),
            why: format!("upstream TLS: {e}"),
        })?;
    // An HTTP/1.1 upgrade (WebSocket, kubectl exec) keeps its Upgrade header, and the two
    // upgraded connections are spliced once the tool answers 101.
    let upgrade =
        req.headers().get(header::UPGRADE).cloned().filter(|_| {
            req.version() == Version::HTTP_11 && connection_has(req.headers(), "upgrade")
        });
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    if let Some(u) = &upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        headers.insert(header::UPGRADE, u.clone());
    }
    if let Some(Credential::Header { name, value }) = &credential {
        headers.insert(name.clone(), value.clone());
    }

    let (parts, body) = req.into_parts();
    // An upgrade request's body is empty, and its connection must stay hyper's to hand over.
    let timeout = shared.settings.response_timeout;
    let body = if upgrade.is_some() {
        Either::Left(body)
    } else {
        tokio::time::timeout(timeout, body::coalesce(&parts.headers, body))
            .await
            .map_err(|_| {
                Refusal::BadRequest(format!(
                    "the request body did not arrive within {}s",
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| Refusal::BadRequest(format!("the request body could not be read: {e}")))?
    };
    let req = Request::from_parts(parts, body);

    let sent = tokio::time::timeout(timeout, client.request(req))
        .instrument(span)
        .await;
    let mut resp = match sent {
        Err(_) => {
            return Err(Refusal::Timeout {
                id: route.id.clone(),
                authority: authority_with_port(&host, port),
                after: timeout,
            });
        }
        Ok(Err(e)) => {
            if is_timeout(&e) {
                return Err(Refusal::Timeout {
                    id: route.id.clone(),
                    authority: authority_with_port(&host, port),
                    after: timeout,
                });
            }
            return Err(Refusal::Unreachable {
                id: route.id.clone(),
                authority: authority_with_port(&host, port),
                cause: describe_upstream_error(&e),
            });
        }
        Ok(Ok(resp)) => resp,
    };
    if resp.status() == StatusCode::UNAUTHORIZED && credential.is_some() {
        return Err(Refusal::CredentialsRefused {
            id: route.id.clone(),
            authority: authority_with_port(&host, port),
            status: resp.status().as_u16(),
        });
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream) = downstream_upgrade
    {
        let upgraded_to = resp.headers().get(header::UPGRADE).cloned();
        let upstream = hyper::upgrade::on(&mut resp);
        shared.tasks.spawn(
            async move {
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
        if let Some(u) = upgraded_to {
            h.insert(header::UPGRADE, u);
        }
        return Ok((resp.map(Either::Left), connector));
    }
    strip_hop_by_hop(resp.headers_mut());
    *resp.version_mut() = Version::default();
    let (parts, body) = resp.into_parts();
    let body = body::coalesce(&parts.headers, body)
        .await
        .map_err(|e| Refusal::Unreachable {
            id: route.id.clone(),
            authority: authority_with_port(&host, port),
            cause: format!("the response body broke off: {e}"),
        })?;
    Ok((Response::from_parts(parts, body), connector))
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

/// Sets `name=value` in the query (replacing any value the client sent). `value` is encoded.
fn with_query_param(path_and_query: &str, name: &str, value: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(name))
        .collect();
    let param = format!("{name}={value}");
    pairs.push(&param);
    format!("{path}?{}", pairs.join("&"))
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
fn describe_upstream_error(e: &hyper_util::client::legacy::Error) -> String {
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
    fn query_param_replaces_client_value() {
        assert_eq!(with_query_param("/a", "t", "x"), "/a?t=x");
        assert_eq!(
            with_query_param("/a?t=mine&b=1", "t", "x%20y"),
            "/a?b=1&t=x%20y"
        );
        assert_eq!(with_query_param("/a?", "t", "x"), "/a?t=x");
    }

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
