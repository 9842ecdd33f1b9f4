//! Sends probes to tools: one fresh connection per probe (a pooled one would prove nothing about
//! reachability), TLS verified against the system roots plus the Connector's CA, and one deadline
//! for connection, handshake and response headers together.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connectors_crd::probe::ProbeRequest;
use connectors_crd::tls;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
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
    ) -> (Result<Answer, ProbeFailure>, Duration) {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.exchange(req, roots)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeFailure::Timeout(self.timeout)),
        };
        (result, started.elapsed())
    }

    async fn exchange(
        &self,
        req: &ProbeRequest,
        roots: &[CertificateDer<'static>],
    ) -> Result<Answer, ProbeFailure> {
        let tls = tls::client_config(self.provider.clone(), roots)
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
            .method(req.method.clone())
            .uri(req.uri().clone())
            .body(Empty::<Bytes>::new())
            .map_err(|_| ProbeFailure::Setup(format!("invalid request to {}", req.display)))?;
        let headers = request.headers_mut();
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in &req.headers {
            headers.insert(name.clone(), value.clone());
        }
        let response = client.request(request).await.map_err(classify)?;
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(shorten);
        Ok(Answer {
            status: response.status(),
            challenge,
        })
    }
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
