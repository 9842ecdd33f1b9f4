//! Sends probes to tools: one fresh connection per probe (a pooled one would prove nothing about
//! reachability), TLS verified against the system roots plus the Connector's CA, and one deadline
//! for connection, handshake and response headers together (token round trips included).
//!
//! An auth probe puts the credentials on as the proxy does, through the shared injector
//! (`connectors_crd::inject`): a client certificate is presented in the handshake, and a
//! registry's `Bearer` challenge is answered with a token fetched from its realm, so `AuthReady`
//! tells the truth for token registries. Probes keep no tokens: each one makes the exchange.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connectors_crd::credentials::ClientIdentity;
use connectors_crd::inject::{self, Attempt, Exchange, InjectError, Injector, Next, TokenCache};
use connectors_crd::path::RequestPath;
use connectors_crd::probe::ProbeRequest;
use connectors_crd::tls;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

/// The tool's answer to a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// The `WWW-Authenticate` challenge, shortened: it tells people what the tool wants.
    pub challenge: Option<String>,
}

/// Why a probe got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("the exchange failed: {0}")]
    Http(String),
    #[error("cannot build the request: {0}")]
    Setup(String),
    /// The registry token exchange failed (the realm refused the credentials, is not one of
    /// the Connector's addresses, did not answer...).
    #[error("{0}")]
    Token(TokenFailure),
}

/// Why the registry token exchange of a probe failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFailure {
    /// The token service refused the credentials, or did not grant what was asked.
    pub refused: bool,
    /// The realm is not under an address of the Connector.
    pub realm_not_allowed: bool,
    pub message: String,
}

impl std::fmt::Display for TokenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a probe presents the Connector's credentials beyond what its request carries.
#[derive(Clone, Copy, Default)]
pub struct With<'a> {
    /// A client certificate for the handshake.
    pub identity: Option<&'a ClientIdentity>,
    /// An injector whose exchange the probe makes (the registry token flow).
    pub injector: Option<&'a Injector>,
}

pub struct Prober {
    provider: Arc<CryptoProvider>,
    timeout: Duration,
}

const USER_AGENT: &str = concat!("connectors-controller/", env!("CARGO_PKG_VERSION"));
const MAX_CHALLENGE: usize = 200;

impl Prober {
    pub fn new(provider: Arc<CryptoProvider>, timeout: Duration) -> Self {
        Self { provider, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `req`; `roots` are CA certificates trusted beside the system's.
    pub async fn send(
        &self,
        req: &ProbeRequest,
        roots: &[CertificateDer<'static>],
        with: With<'_>,
    ) -> (Result<Answer, ProbeFailure>, Duration) {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.probe(req, roots, with)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeFailure::Timeout(self.timeout)),
        };
        (result, started.elapsed())
    }

    async fn probe(
        &self,
        req: &ProbeRequest,
        roots: &[CertificateDer<'static>],
        with: With<'_>,
    ) -> Result<Answer, ProbeFailure> {
        let Some(injector @ Injector::RegistryToken(_)) = with.injector else {
            let (status, headers) = self
                .exchange(&req.method, req.uri(), &req.headers, roots, with.identity)
                .await?;
            return Ok(answer(status, &headers));
        };
        let uri = req.uri();
        let (scheme, host, port) = connectors_crd::address::origin_of(uri)
            .ok_or_else(|| ProbeFailure::Setup(format!("invalid URL {}", req.display)))?;
        let path = RequestPath::parse(uri.path())
            .map_err(|e| ProbeFailure::Setup(format!("{}: {e}", req.display)))?;
        let transport = ProbeTransport {
            prober: self,
            roots,
            identity: with.identity,
        };
        let tokens = TokenCache::new();
        let ex = Exchange {
            transport: &transport,
            tokens: &tokens,
        };
        let mut attempt = Attempt::new(true);
        loop {
            let mut headers = req.headers.clone();
            let path_and_query = injector
                .prepare(
                    inject::Outgoing {
                        method: &req.method,
                        scheme,
                        host: &host,
                        port,
                        path: &path,
                        query: uri.query(),
                        headers: &mut headers,
                    },
                    &mut attempt,
                    &ex,
                )
                .await
                .map_err(token_failure)?;
            let uri = Uri::try_from(format!("{scheme}://{}{path_and_query}", authority(uri)))
                .map_err(|_| ProbeFailure::Setup(format!("invalid URL {}", req.display)))?;
            let (status, resp_headers) = self
                .exchange(&req.method, &uri, &headers, roots, with.identity)
                .await?;
            match injector
                .on_response(&mut attempt, status, &resp_headers, &ex)
                .await
            {
                Ok(Next::Done) => return Ok(answer(status, &resp_headers)),
                Ok(Next::Retry) => continue,
                // The registry turned the login down itself: its answer is the verdict.
                Err(InjectError::CredentialsRefused { status }) => {
                    return Ok(answer(status, &resp_headers));
                }
                Err(e) => return Err(token_failure(e)),
            }
        }
    }

    /// One request on a fresh connection: the status and headers of the answer.
    async fn exchange(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        roots: &[CertificateDer<'static>],
        identity: Option<&ClientIdentity>,
    ) -> Result<(StatusCode, HeaderMap), ProbeFailure> {
        let (status, headers, _) = self
            .round_trip(method, uri, headers, roots, identity, false)
            .await?;
        Ok((status, headers))
    }

    /// One request on a fresh connection; the body is read (up to `inject::MAX_ANSWER` bytes)
    /// when `with_body`.
    async fn round_trip(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        roots: &[CertificateDer<'static>],
        identity: Option<&ClientIdentity>,
        with_body: bool,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), ProbeFailure> {
        let tls = tls::client_config_with_identity(self.provider.clone(), roots, identity)
            .map_err(|e| ProbeFailure::Setup(e.to_string()))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(0)
            .build(https);

        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .body(Empty::<Bytes>::new())
            .map_err(|_| ProbeFailure::Setup("invalid request".into()))?;
        let h = request.headers_mut();
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        let response = client.request(request).await.map_err(classify)?;
        let (parts, body) = response.into_parts();
        let body = if with_body {
            Limited::new(body, inject::MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ProbeFailure::Http(format!("the answer could not be read: {e}")))?
                .to_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        Ok((parts.status, parts.headers, body))
    }
}

/// The probe's round trips to a registry's token service (and to the registry, asked what it
/// wants): fresh connections, the Connector's trust.
struct ProbeTransport<'a> {
    prober: &'a Prober,
    roots: &'a [CertificateDer<'static>],
    identity: Option<&'a ClientIdentity>,
}

impl inject::Transport for ProbeTransport<'_> {
    fn get(
        &self,
        uri: &Uri,
        authorization: Option<&HeaderValue>,
    ) -> impl Future<Output = Result<inject::Answer, String>> + Send {
        let mut headers = HeaderMap::new();
        if let Some(a) = authorization {
            headers.insert(header::AUTHORIZATION, a.clone());
        }
        let uri = uri.clone();
        async move {
            let (status, headers, body) = self
                .prober
                .round_trip(
                    &Method::GET,
                    &uri,
                    &headers,
                    self.roots,
                    self.identity,
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(inject::Answer {
                status,
                headers,
                body,
            })
        }
    }
}

fn answer(status: StatusCode, headers: &HeaderMap) -> Answer {
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(shorten);
    Answer { status, challenge }
}

fn token_failure(e: InjectError) -> ProbeFailure {
    ProbeFailure::Token(TokenFailure {
        refused: matches!(
            e,
            InjectError::RealmRefused { .. }
                | InjectError::ScopeNotGranted { .. }
                | InjectError::TokenRefused { .. }
        ),
        realm_not_allowed: matches!(e, InjectError::RealmNotAllowed { .. }),
        message: e.to_string(),
    })
}

fn authority(uri: &Uri) -> String {
    uri.authority().map(ToString::to_string).unwrap_or_default()
}

fn shorten(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.len() <= MAX_CHALLENGE {
        return clean;
    }
    let mut end = MAX_CHALLENGE;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &clean[..end])
}

/// What rustls's errors say, for causes that arrive as text only.
const TLS_WORDS: &[&str] = &[
    "certificate",
    "received fatal alert",
    "handshake",
    "peer is incompatible",
];

/// A rustls error, possibly inside I/O errors.
fn is_tls(e: &(dyn StdError + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// Sorts a client error into connect, TLS or HTTP trouble, with the causes a person can act on.
fn classify(e: hyper_util::client::legacy::Error) -> ProbeFailure {
    let mut causes: Vec<String> = Vec::new();
    let mut tls = false;
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        tls |= is_tls(s) || TLS_WORDS.iter().any(|w| text.contains(w));
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let detail = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    if tls {
        ProbeFailure::Tls(detail)
    } else if e.is_connect() {
        ProbeFailure::Connect(detail)
    } else {
        ProbeFailure::Http(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_shortened_and_cleaned() {
        assert_eq!(shorten("Basic realm=\"git\""), "Basic realm=\"git\"");
        let long = "x".repeat(500);
        assert_eq!(shorten(&long).len(), MAX_CHALLENGE + 3);
        assert_eq!(shorten("a\r\nb"), "ab");
    }
}
