//! The one step that puts a Connector's credentials on a request to its tool, and keeps them
//! out of the answer: the crd crate's [`Injector`], the one the proxy and the controller's
//! probes use (a static header or query parameter, a client certificate, or the OCI registry
//! token flow: a token fetched from the registry's realm, cached, fetched again on a `401`).
//! Every request the API sends (list pages, Git refs, the relay) goes through [`exchange`]:
//! prepare, send, read the answer (send again when the registry asks for a token), scrub.

use bytes::Bytes;
use connectors_crd::inject::{
    self as shared, Attempt, Exchange, InjectError, MAX_ANSWER, Next, Transport,
};
use connectors_crd::path::RequestPath;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use rustls_pki_types::CertificateDer;

use crate::error::ApiError;
use crate::tool::{Target, Tool};
use crate::upstream::{Answer, Outgoing, SendError, Upstream};

const USER_AGENT: &str = concat!("connectors-api/", env!("CARGO_PKG_VERSION"));

/// Why an exchange gave no answer to pass on.
#[derive(Debug)]
pub enum Failure {
    /// The request could not be sent, or no answer came.
    Send(SendError),
    /// The request cannot be formed.
    Request(String),
    /// The injector refused to go on (a realm outside the Connector, a token refused...).
    Inject(InjectError),
}

/// Sends `method target` with the Connector's credentials and reads the whole answer. `headers`
/// are the only headers that go (the caller's own `Authorization` and cookies are never among
/// them). The tool's refusal of the credentials (`401`) is returned as an answer: the caller
/// says what it means.
pub async fn exchange(
    upstream: &Upstream,
    tool: &Tool,
    method: Method,
    target: &Target,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Answer, Failure> {
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let Some(injector) = &tool.injector else {
        let out = outgoing(method, target, &target.path_and_query, headers, body)?;
        let mut answer = upstream
            .send(&tool.roots, out)
            .await
            .map_err(Failure::Send)?;
        scrub_cookies(&mut answer.headers);
        return Ok(answer);
    };
    let (scheme, host, port) = Uri::try_from(target.base.as_str())
        .ok()
        .as_ref()
        .and_then(connectors_crd::address::origin_of)
        .ok_or_else(|| Failure::Request(format!("'{}' is not a tool URL", target.shown())))?;
    let (path, query) = target
        .path_and_query
        .split_once('?')
        .map_or((target.path_and_query.as_str(), None), |(p, q)| {
            (p, Some(q))
        });
    let path = RequestPath::parse(path).map_err(|e| Failure::Request(e.to_string()))?;
    let transport = ToolTransport {
        upstream,
        roots: &tool.roots,
    };
    let ex = Exchange {
        transport: &transport,
        tokens: upstream.tokens(),
    };
    let mut attempt = Attempt::new(true);
    loop {
        let mut sent = headers.clone();
        let path_and_query = injector
            .prepare(
                shared::Outgoing {
                    method: &method,
                    scheme,
                    host: &host,
                    port,
                    path: &path,
                    query,
                    headers: &mut sent,
                },
                &mut attempt,
                &ex,
            )
            .await
            .map_err(Failure::Inject)?;
        if let Some(connectors_crd::credentials::Credential::Header { name, .. }) =
            injector.static_credential()
            && let Some(v) = sent.get_mut(name)
        {
            v.set_sensitive(true);
        }
        let out = outgoing(method.clone(), target, &path_and_query, sent, body.clone())?;
        let mut answer = upstream
            .send(&tool.roots, out)
            .await
            .map_err(Failure::Send)?;
        let next = injector
            .on_response(&mut attempt, answer.status, &answer.headers, &ex)
            .await;
        match next {
            Ok(Next::Retry) => continue,
            Ok(Next::Done) | Err(InjectError::CredentialsRefused { .. }) => {
                scrub_cookies(&mut answer.headers);
                let removed = injector.scrub_response(&attempt, &mut answer.headers);
                if removed > 0 {
                    tracing::warn!(
                        connector = %tool.id,
                        headers = removed,
                        "the tool's answer carried the injected credential in its headers; removed"
                    );
                }
                return Ok(answer);
            }
            Err(e) => return Err(Failure::Inject(e)),
        }
    }
}

fn outgoing(
    method: Method,
    target: &Target,
    path_and_query: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Outgoing, Failure> {
    let uri = Uri::try_from(format!("{}{path_and_query}", target.base)).map_err(|_| {
        Failure::Request(format!(
            "the request to {} cannot be formed (characters that need escaping in the path or query?)",
            target.shown()
        ))
    })?;
    Ok(Outgoing {
        method,
        uri,
        headers,
        body,
    })
}

/// A session the credentials opened is not the caller's.
fn scrub_cookies(headers: &mut HeaderMap) {
    headers.remove(header::SET_COOKIE);
    headers.remove(HeaderName::from_static("set-cookie2"));
}

/// The injector's own round trips (to a registry's token service, or to ask the registry what
/// it wants): the API's client, the Connector's trust, the same timeout.
struct ToolTransport<'a> {
    upstream: &'a Upstream,
    roots: &'a [CertificateDer<'static>],
}

impl Transport for ToolTransport<'_> {
    fn get(
        &self,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> impl Future<Output = Result<shared::Answer, String>> + Send {
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(a) = authorization {
            let mut a = a.clone();
            a.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, a);
        }
        let out = Outgoing {
            method: Method::GET,
            uri: uri.clone(),
            headers,
            body: Bytes::new(),
        };
        async move {
            let answer = self
                .upstream
                .send(self.roots, out)
                .await
                .map_err(|e| e.to_string())?;
            let mut body = answer.body.to_vec();
            body.truncate(MAX_ANSWER);
            Ok(shared::Answer {
                status: answer.status,
                headers: answer.headers,
                body,
            })
        }
    }
}

impl Failure {
    /// The API's error for it, naming the Connector (`timeout`: the one that ran out).
    pub fn into_api(self, tool: &Tool, what: &str, timeout: std::time::Duration) -> ApiError {
        let connector = tool.id.clone();
        match self {
            Failure::Request(m) => ApiError::BadRequest(m),
            Failure::Inject(e) => ApiError::BadGateway {
                connector,
                what: format!("{what}: {e}"),
            },
            Failure::Send(SendError::Timeout) => ApiError::Timeout {
                connector,
                what: format!("the tool ({what})"),
                after: timeout,
            },
            Failure::Send(SendError::Connect(cause)) => ApiError::BadGateway {
                connector,
                what: format!("cannot reach the tool ({what}): {cause}"),
            },
            Failure::Send(SendError::TooLarge(limit)) => ApiError::BadGateway {
                connector,
                what: format!(
                    "the tool's answer to {what} is larger than {limit} bytes, the most the API reads from a tool"
                ),
            },
            Failure::Send(SendError::Http(cause)) => ApiError::BadGateway {
                connector,
                what: format!("the exchange with the tool failed ({what}): {cause}"),
            },
            Failure::Send(SendError::Tls(cause)) => ApiError::NotReady {
                connector,
                why: format!("no TLS configuration for its CA: {cause}"),
            },
        }
    }
}
