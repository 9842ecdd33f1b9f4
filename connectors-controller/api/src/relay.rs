//! The relay to a tool's own API (GitLab `/api/v4/...`, Harbor `/api/v2.0/...`, the
//! distribution API `/v2/...`, the Kubernetes API): the caller's path under the Connector's
//! address (its prefix kept, `%2F` kept raw, checked as the proxy checks paths), the query as
//! sent, the Connector's credentials injected. Only a few of the caller's headers go on
//! (never `Authorization` or cookies), and the tool's status, body and paging headers
//! (`Link`, `x-total`, `x-total-pages`...) come back, its cookies and credential echoes
//! removed. The tool's own 401 becomes a 502 naming the Connector: passed on, a UI would take
//! it for its own session having expired.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::call::call;
use crate::error::ApiError;
use crate::tool::Tool;
use crate::upstream::{Answer, Upstream};

/// The caller's headers that go to the tool.
const REQUEST_HEADERS: [HeaderName; 5] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::CONTENT_TYPE,
];

/// The tool's headers that come back (besides `x-*` ones).
const RESPONSE_HEADERS: [HeaderName; 11] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_DISPOSITION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::LINK,
    header::LOCATION,
    header::VARY,
];

/// What to relay.
pub struct Relayed<'a> {
    pub method: Method,
    /// `x-openapi-address` of the matched operation: none for `spec.address`, an address
    /// extension's name, or an absolute URL (which must lie under the Connector's addresses).
    pub address: Option<&'a str>,
    /// The raw API path (`""` or starting with `/`) and query.
    pub api_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Sends the request to the tool and returns its answer, ready to go back.
pub async fn relay(upstream: &Upstream, tool: &Tool, r: Relayed<'_>) -> Result<Answer, ApiError> {
    let rel = match r.query {
        Some(q) => format!("{}?{q}", r.api_path),
        None => r.api_path.to_owned(),
    };
    let target = match r.address {
        Some(a) if a.contains("://") => {
            // An absolute base: the path goes under it, and the whole must be the Connector's.
            let base = a.trim_end_matches('/');
            tool.locate(&format!("{base}{rel}"))?.1
        }
        name => {
            let address = tool.address(name)?.clone();
            tool.under(&address, &rel)?
        }
    };
    let mut headers = HeaderMap::new();
    for name in &REQUEST_HEADERS {
        if *name == header::CONTENT_TYPE && r.body.is_empty() {
            continue;
        }
        for v in r.headers.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    let mut answer = call(upstream, tool, r.method, &target, headers, r.body).await?;
    if answer.status == StatusCode::UNAUTHORIZED {
        return Err(ApiError::BadGateway {
            connector: tool.id.clone(),
            what: format!(
                "the tool refused the Connector's credentials (HTTP 401 for {}); check its Secret",
                target.shown()
            ),
        });
    }
    answer.headers = response_headers(&answer.headers);
    Ok(answer)
}

/// The tool's headers that go back to the caller.
fn response_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in from {
        let keep = RESPONSE_HEADERS.contains(name)
            || (name.as_str().starts_with("x-") && !name.as_str().starts_with("x-forwarded"))
            || name.as_str().starts_with("docker-");
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_headers_come_back() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert("x-total", "3".parse().unwrap());
        h.insert("x-total-pages", "1".parse().unwrap());
        h.insert(header::LINK, "<x>; rel=next".parse().unwrap());
        h.insert("docker-content-digest", "sha256:1".parse().unwrap());
        h.insert(header::SET_COOKIE, "session=1".parse().unwrap());
        h.insert(header::WWW_AUTHENTICATE, "Basic".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert(header::CONNECTION, "close".parse().unwrap());
        let out = response_headers(&h);
        assert_eq!(out.len(), 5);
        assert!(!out.contains_key(header::SET_COOKIE));
        assert!(!out.contains_key(header::WWW_AUTHENTICATE));
    }
}
