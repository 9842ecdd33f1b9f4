//! The injector's round trips from the proxy (a registry's token service, or the registry
//! asked what it wants): over the Connector's pooled upstream clients (its trust set, the
//! agent's resolver), bounded in time and size.

use std::time::Duration;

use bytes::Bytes;
use connectors_crd::inject::{Answer, MAX_ANSWER, Transport};
use http::header::{AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Request, Uri, Version};
use http_body_util::{BodyExt as _, Either, Full, Limited};

use super::Shared;
use super::handler::describe_upstream_error;
use crate::upstream::{RequestBody, TrustId};

const AGENT: &str = concat!("connectors-agent/", env!("CARGO_PKG_VERSION"));

/// Round trips of one request's injector.
pub struct RealmClient<'a> {
    pub shared: &'a Shared,
    /// The Connector's trust set (its realm is under one of its addresses).
    pub trust: TrustId,
    /// For the answer's head, and again for its body.
    pub timeout: Duration,
}

impl Transport for RealmClient<'_> {
    fn get(
        &self,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> impl Future<Output = Result<Answer, String>> + Send {
        let client = self
            .shared
            .upstreams
            .client(self.trust, Version::HTTP_11)
            .map_err(|e| format!("upstream TLS: {e}"));
        let (body, _sent) = RequestBody::new(Either::Right(Full::new(Bytes::new())));
        let mut req = Request::new(body);
        *req.uri_mut() = uri.clone();
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static(AGENT));
        if let Some(a) = authorization {
            let mut a = a.clone();
            a.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, a);
        }
        let timeout = self.timeout;
        let within = format!("no answer within {}s", timeout.as_secs());
        async move {
            let client = client?;
            let resp = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| within.clone())?
                .map_err(|e| describe_upstream_error(&e))?;
            let (parts, body) = resp.into_parts();
            let body = tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER).collect())
                .await
                .map_err(|_| within)?
                .map_err(|e| {
                    format!("its answer could not be read (over {MAX_ANSWER} bytes?): {e}")
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.to_vec(),
            })
        }
    }
}
