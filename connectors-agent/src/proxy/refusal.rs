//! Every way the proxy declines or fails a request, and the response each one gets: an HTTP
//! status and a plain-text body that names the reason (git shows such bodies as `remote:` lines).

use std::time::Duration;

use bytes::Bytes;
use connectors_crd::ConnectorId;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::ProxyBody;

/// Header naming the refusal, for programs.
pub const REFUSAL_HEADER: &str = "x-connectors-refusal";

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no Connector serves {target}; the request was refused and nothing was sent there")]
    NoConnector { target: String },
    #[error("{path} on {authority} is outside the address of Connector {}; the request was refused", list(.connectors))]
    OutsidePrefix {
        authority: String,
        path: String,
        connectors: Vec<ConnectorId>,
    },
    #[error(
        "the request path is ambiguous under the address of Connector {id}: an encoded '/' or '\\', a ';' parameter or a doubled '/' next to a '..' segment could resolve outside it; send the path without them"
    )]
    AmbiguousPath { id: ConnectorId },
    #[error(
        "this connection is for '{connection}', not '{request}'; open a connection to '{request}'"
    )]
    Misdirected { connection: String, request: String },
    #[error("Connector {id} is not ready: {why}")]
    NotReady { id: ConnectorId, why: String },
    #[error("Connector {id}: cannot reach {authority}: {cause}")]
    Unreachable {
        id: ConnectorId,
        authority: String,
        cause: String,
    },
    #[error("Connector {id}: {authority} did not answer within {}s", .after.as_secs())]
    Timeout {
        id: ConnectorId,
        authority: String,
        after: Duration,
    },
    #[error(
        "Connector {id}: the tool at {authority} refused the credentials (HTTP {status}); check the Connector's Secret"
    )]
    CredentialsRefused {
        id: ConnectorId,
        authority: String,
        status: u16,
    },
    #[error("Connector {id}: {cause}")]
    TokenRefused {
        id: ConnectorId,
        cause: connectors_crd::inject::InjectError,
    },
    #[error("Connector {id}: {cause}")]
    ScopeNotGranted {
        id: ConnectorId,
        cause: connectors_crd::inject::InjectError,
    },
    #[error("Connector {id}: {cause}")]
    RealmNotAllowed {
        id: ConnectorId,
        cause: connectors_crd::inject::InjectError,
    },
    #[error("Connector {id}: {cause}")]
    TokenUnavailable {
        id: ConnectorId,
        cause: connectors_crd::inject::InjectError,
    },
    #[error("Connector {id}: the tool at {authority} refused the client certificate: {cause}")]
    ClientCertificateRefused {
        id: ConnectorId,
        authority: String,
        cause: String,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A registry API request the injector could not serve, told the way registries tell
    /// errors (a `401`, or `403` for a scope not granted, with distribution's JSON error body
    /// and no challenge), so image clients show the message instead of a bare status.
    #[error("{0}")]
    Registry(Box<Refusal>),
    #[error("{who} may not use this Connector: {denied}")]
    NotAllowed {
        who: String,
        denied: Box<connectors_crd::access::Denied>,
    },
    #[error("{0}; retry shortly")]
    AccessUnavailable(String),
    #[error(
        "the agent cannot tell which pod this connection comes from (source {peer}); only pods of this node labelled connectors.io/inject=\"true\" get credentials"
    )]
    Unidentified { peer: std::net::SocketAddr },
}

fn list(ids: &[ConnectorId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoConnector { .. }
            | Refusal::OutsidePrefix { .. }
            | Refusal::NotAllowed { .. }
            | Refusal::Unidentified { .. } => StatusCode::FORBIDDEN,
            Refusal::AccessUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unreachable { .. }
            | Refusal::CredentialsRefused { .. }
            | Refusal::TokenRefused { .. }
            | Refusal::RealmNotAllowed { .. }
            | Refusal::TokenUnavailable { .. }
            | Refusal::ClientCertificateRefused { .. } => StatusCode::BAD_GATEWAY,
            Refusal::ScopeNotGranted { .. } => StatusCode::FORBIDDEN,
            Refusal::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BadRequest(_) | Refusal::AmbiguousPath { .. } => StatusCode::BAD_REQUEST,
            Refusal::Registry(inner) => match **inner {
                Refusal::ScopeNotGranted { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            },
        }
    }

    /// A short code for metrics and the refusal header.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoConnector { .. } => "no-connector",
            Refusal::OutsidePrefix { .. } => "outside-prefix",
            Refusal::Misdirected { .. } => "misdirected",
            Refusal::NotReady { .. } => "not-ready",
            Refusal::Unreachable { .. } => "unreachable",
            Refusal::Timeout { .. } => "timeout",
            Refusal::CredentialsRefused { .. } | Refusal::TokenRefused { .. } => {
                "credentials-refused"
            }
            Refusal::ScopeNotGranted { .. } => "scope-not-granted",
            Refusal::RealmNotAllowed { .. } => "realm-not-allowed",
            Refusal::TokenUnavailable { .. } => "token-unavailable",
            Refusal::ClientCertificateRefused { .. } => "client-certificate-refused",
            Refusal::BadRequest(_) => "bad-request",
            Refusal::AmbiguousPath { .. } => "ambiguous-path",
            Refusal::NotAllowed { denied, .. } => match denied.rule() {
                "namespace" => "not-shared",
                _ => "not-allowed",
            },
            Refusal::AccessUnavailable(_) => "authorization-unavailable",
            Refusal::Unidentified { .. } => "unidentified",
            Refusal::Registry(inner) => inner.code(),
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let (body, content_type) = match &self {
            Refusal::Registry(_) => (
                serde_json::json!({"errors": [{
                    "code": if self.status() == StatusCode::FORBIDDEN { "DENIED" } else { "UNAUTHORIZED" },
                    "message": format!("connectors: {self}"),
                    "detail": {"refusal": self.code()},
                }]})
                .to_string(),
                "application/json",
            ),
            _ => (format!("connectors: {self}\n"), "text/plain; charset=utf-8"),
        };
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(REFUSAL_HEADER, HeaderValue::from_static(self.code()));
        resp
    }

    /// [`Refusal::into_response`] for a request of `method`. A registry refusal of a `HEAD`
    /// (image clients ask whether a blob or manifest exists that way) has no body to tell its
    /// reason, so it is told in the one place image clients read then: a bearer challenge's
    /// `error_description` (RFC 6750 section 3), with no realm, since there is nothing the
    /// client could log in to. Never on a `GET`: a client's first `GET /v2/` keeps the
    /// challenge it gets for every later request.
    pub fn into_response_to(self, method: &Method) -> Response<ProxyBody> {
        let challenge = match (&self, method == Method::HEAD) {
            (Refusal::Registry(_), true) => {
                let error = if self.status() == StatusCode::FORBIDDEN {
                    "insufficient_scope"
                } else {
                    "invalid_token"
                };
                let description: String = format!("connectors: {self}")
                    .chars()
                    .filter(|c| !c.is_control())
                    .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
                    .collect();
                HeaderValue::try_from(format!(
                    "Bearer error=\"{error}\", error_description=\"{description}\""
                ))
                .ok()
            }
            _ => None,
        };
        let mut resp = self.into_response();
        if let Some(c) = challenge {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_refusal_of_a_head_tells_its_reason_in_a_challenge() {
        let refusal = || {
            Refusal::Registry(Box::new(Refusal::CredentialsRefused {
                id: ConnectorId::new("default", "reg"),
                authority: "registry.test:443".into(),
                status: 401,
            }))
        };
        let head = refusal().into_response_to(&Method::HEAD);
        assert_eq!(head.status(), StatusCode::UNAUTHORIZED);
        let challenge = head.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("Connector default/reg") && !challenge.contains("realm"),
            "{challenge}"
        );
        // A GET keeps its JSON body and gets no challenge; other refusals never get one.
        let get = refusal().into_response_to(&Method::GET);
        assert!(!get.headers().contains_key(header::WWW_AUTHENTICATE));
        let plain = Refusal::NoConnector {
            target: "x.test:443".into(),
        }
        .into_response_to(&Method::HEAD);
        assert!(!plain.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn bodies_name_the_reason() {
        let r = Refusal::NoConnector {
            target: "https://evil.test:443".into(),
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.to_string().contains("evil.test:443"));
        let r = Refusal::CredentialsRefused {
            id: ConnectorId::new("ns", "git"),
            authority: "git.test:443".into(),
            status: 401,
        };
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(r.to_string().contains("ns/git"));
        assert!(r.to_string().contains("refused the credentials"));
        let r = Refusal::Registry(Box::new(r));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.code(), "credentials-refused");
    }
}
