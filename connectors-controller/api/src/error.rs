//! Every error the API answers, and the one place that turns it into a response: a Kubernetes
//! `Status` object (`application/json`) with the right code and a message a person can act on
//! (model: axum's error-handling example). Messages never hold a credential: tool URLs are shown
//! without their query, and nothing a tool sent in a body is quoted.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use connectors_crd::ConnectorId;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The methods a Connector's API paths answer when writes are off.
pub const READ_METHODS: &str = "GET, HEAD, OPTIONS";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is wrong (a parameter, a path, a URL outside the Connector).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one the cluster does not accept.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller may not get the Connector.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such Connector (told only to callers allowed to get it), resource or object.
    #[error("{0}")]
    NotFound(String),
    /// 405, with the methods allowed.
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allow: &'static str,
    },
    /// 413: a request body over the limit (writes).
    #[error("{0}")]
    TooLarge(String),
    /// 503: the Connector cannot serve (its Secret is missing or wrong, its class is gone...).
    #[error("Connector {connector} cannot serve: {why}")]
    NotReady { connector: ConnectorId, why: String },
    /// 502: the tool refused the Connector's credentials, could not be reached, or answered
    /// something that is not what the resource expects.
    #[error("Connector {connector}: {what}")]
    BadGateway {
        connector: ConnectorId,
        what: String,
    },
    /// 504: the tool did not answer in time.
    #[error("Connector {connector}: {what} did not answer within {}", seconds(*after))]
    Timeout {
        connector: ConnectorId,
        what: String,
        after: Duration,
    },
    /// 503: what the API depends on (the Kubernetes API server, its caches) cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a ConnectorClass's API declaration cannot be used, or a bug.
    #[error("{0}")]
    Internal(String),
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotReady { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason` of the Status (Kubernetes' `metav1.StatusReason` words).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::NotReady { .. } | ApiError::Unavailable(_) | ApiError::BadGateway { .. } => {
                "ServiceUnavailable"
            }
            ApiError::Timeout { .. } => "Timeout",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The Status body of this error.
    pub fn to_status(&self) -> Status {
        Status::failure(self.status(), self.reason(), self.to_string())
    }
}

/// A Kubernetes `Status` (`metav1.Status`), as the existing Connectors API answers errors.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: String,
    pub api_version: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: String,
    pub message: String,
    pub reason: String,
    pub code: u16,
    pub details: Option<serde_json::Value>,
}

impl Status {
    pub fn failure(code: StatusCode, reason: &str, message: String) -> Self {
        Self {
            kind: "Status".to_owned(),
            api_version: "v1".to_owned(),
            metadata: serde_json::Map::new(),
            status: "Failure".to_owned(),
            message,
            reason: reason.to_owned(),
            code: code.as_u16(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let ApiError::MethodNotAllowed { allow, .. } = &self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"connectors\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_code_reason_and_message() {
        let e = ApiError::Timeout {
            connector: ConnectorId::new("a", "git"),
            what: "GET https://git.test/x".into(),
            after: Duration::from_secs(2),
        };
        let s = e.to_status();
        assert_eq!(s.code, 504);
        assert_eq!(s.reason, "Timeout");
        assert_eq!(
            s.message,
            "Connector a/git: GET https://git.test/x did not answer within 2 s"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["status"], "Failure");
        assert!(json["details"].is_null());
        let r = ApiError::MethodNotAllowed {
            message: "no".into(),
            allow: READ_METHODS,
        }
        .into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], READ_METHODS);
    }
}
