//! Every way the proxy declines or fails a request, and the response each one gets: an HTTP
//! status and a plain-text body that names the reason (git shows such bodies as `remote:` lines).

use std::time::Duration;

use bytes::Bytes;
use connectors_crd::ConnectorId;
use http::{HeaderValue, Response, StatusCode, header};
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
    #[error("bad request: {0}")]
    BadRequest(String),
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
            Refusal::NoConnector { .. } | Refusal::OutsidePrefix { .. } => StatusCode::FORBIDDEN,
            Refusal::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unreachable { .. } | Refusal::CredentialsRefused { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
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
            Refusal::CredentialsRefused { .. } => "credentials-refused",
            Refusal::BadRequest(_) => "bad-request",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let body = format!("connectors: {self}\n");
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(REFUSAL_HEADER, HeaderValue::from_static(self.code()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
