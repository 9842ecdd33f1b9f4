//! One call to a Connector's tool: the request with its credentials ([`crate::inject`]), sent
//! within the timeout and byte cap ([`crate::upstream`]), the answer's headers scrubbed, and
//! every failure as an [`ApiError`] naming the Connector.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::error::ApiError;
use crate::inject;
use crate::tool::{Target, Tool};
use crate::upstream::{Answer, Upstream};

/// Sends one request to the tool and reads its whole answer.
pub async fn call(
    upstream: &Upstream,
    tool: &Tool,
    method: Method,
    target: &Target,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Answer, ApiError> {
    let what = format!("{method} {}", target.shown());
    match inject::exchange(upstream, tool, method, target, headers, body).await {
        Ok(answer) => {
            tracing::debug!(connector = %tool.id, request = %what, status = answer.status.as_u16(), bytes = answer.body.len(), "tool answered");
            Ok(answer)
        }
        Err(e) => Err(e.into_api(tool, &what, upstream.settings().timeout)),
    }
}

/// The answer of a tool to a request a list resource made, when it is a success; otherwise
/// what went wrong: its refusal of the credentials (502), nothing there (404), or another
/// status (502). The tool's body is never quoted (it could echo a credential).
pub fn success(tool: &Tool, target: &Target, answer: Answer) -> Result<Answer, ApiError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let line = connectors_crd::probe::status_line(status);
    let url = target.shown();
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::BadGateway {
            connector: tool.id.clone(),
            what: format!(
                "the tool refused the Connector's credentials ({line} for GET {url}); check its Secret"
            ),
        },
        StatusCode::NOT_FOUND => ApiError::NotFound(format!(
            "Connector {}: the tool has nothing at GET {url} ({line})",
            tool.id
        )),
        _ => ApiError::BadGateway {
            connector: tool.id.clone(),
            what: format!("the tool answered {line} to GET {url}"),
        },
    })
}
