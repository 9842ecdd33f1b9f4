//! Requests to tools: pooled HTTP/1.1 and HTTP/2 clients per trust set (the system roots plus a
//! Connector's CA), one deadline for the whole exchange (connection, headers and body), and a
//! cap on the bytes read from a tool, so that no answer can take unbounded memory.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

use crate::backend::BoxFuture;

/// Name resolution for tool hosts (the agent puts its hosts file first).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (the port is set afterwards).
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            if let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
            {
                return Ok(vec![SocketAddr::new(ip, 0)]);
            }
            Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect())
        })
    }
}

/// A [`Resolve`] as hyper's connector wants it.
#[derive(Clone)]
struct DynResolver(Arc<dyn Resolve>);

impl tower::Service<Name> for DynResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let f = self.0.lookup(name.as_str());
        Box::pin(async move {
            let addrs = f.await?;
            if addrs.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
            }
            Ok(addrs.into_iter())
        })
    }
}

type ToolClient = Client<HttpsConnector<HttpConnector<DynResolver>>, Full<Bytes>>;

/// A request to a tool.
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    /// Holds the credential when it is a query parameter: never shown.
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A tool's whole answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a tool gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the exchange failed: {0}")]
    Http(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// How requests to tools go.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Connection, headers and the whole body.
    pub timeout: Duration,
    /// Bytes read from one answer at most.
    pub max_response_bytes: usize,
}

/// The clients, per trust set.
pub struct Upstream {
    provider: Arc<CryptoProvider>,
    resolver: DynResolver,
    settings: UpstreamSettings,
    clients: Mutex<HashMap<Vec<u8>, ToolClient>>,
    /// Registry tokens (and what each registry asked for), kept across requests.
    tokens: connectors_crd::inject::TokenCache,
}

/// Trust sets kept at most (one per distinct Connector CA); the table is cleared past it.
const MAX_TRUST_SETS: usize = 1024;

impl Upstream {
    pub fn new(
        provider: Arc<CryptoProvider>,
        resolver: Arc<dyn Resolve>,
        settings: UpstreamSettings,
    ) -> Self {
        Self {
            provider,
            resolver: DynResolver(resolver),
            settings,
            clients: Mutex::new(HashMap::new()),
            tokens: connectors_crd::inject::TokenCache::new(),
        }
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The registry tokens of every Connector the API calls.
    pub fn tokens(&self) -> &connectors_crd::inject::TokenCache {
        &self.tokens
    }

    fn client(&self, roots: &[CertificateDer<'static>]) -> Result<ToolClient, SendError> {
        let key = roots_key(roots);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = connectors_crd::tls::client_config(self.provider.clone(), roots)
            .map_err(|e| SendError::Tls(e.to_string()))?;
        let mut http = HttpConnector::new_with_resolver(self.resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client: ToolClient = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build(https);
        if clients.len() >= MAX_TRUST_SETS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Sends a request and reads the whole answer, within the timeout and the byte cap.
    pub async fn send(
        &self,
        roots: &[CertificateDer<'static>],
        out: Outgoing,
    ) -> Result<Answer, SendError> {
        let client = self.client(roots)?;
        let mut request = Request::builder()
            .method(out.method)
            .uri(out.uri)
            .body(Full::new(out.body))
            .map_err(|e| SendError::Http(e.to_string()))?;
        *request.headers_mut() = out.headers;
        let max = self.settings.max_response_bytes;
        let exchange = async move {
            let response = client.request(request).await.map_err(classify)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        SendError::TooLarge(max)
                    } else {
                        SendError::Http(format!("the answer broke off: {e}"))
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout),
        }
    }
}

/// The intern key of a set of CA certificates: each one, length-prefixed.
fn roots_key(roots: &[CertificateDer<'static>]) -> Vec<u8> {
    let mut key = Vec::new();
    for c in roots {
        key.extend_from_slice(&u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes());
        key.extend_from_slice(c);
    }
    key
}

/// A client error, with its causes (the client's own wrapper left out).
fn classify(e: hyper_util::client::legacy::Error) -> SendError {
    use std::error::Error as _;
    let mut parts: Vec<String> = Vec::new();
    let mut timed_out = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
    if cur.is_none() {
        parts.push(e.to_string());
    }
    while let Some(err) = cur {
        if err
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            timed_out = true;
        }
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
    if e.is_connect() {
        if timed_out {
            SendError::Timeout
        } else {
            SendError::Connect(text)
        }
    } else {
        SendError::Http(text)
    }
}

/// `scheme://authority/path` of a URI: what may be shown of it (the query may hold a
/// credential).
pub fn display(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        uri.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_uris_have_no_query() {
        let u: Uri = "https://git.test:8443/a/b?private_token=s3cret"
            .parse()
            .unwrap();
        assert_eq!(display(&u), "https://git.test:8443/a/b");
    }

    #[tokio::test]
    async fn unreachable_and_hanging_tools_fail_in_time() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let up = Upstream::new(
            provider,
            Arc::new(SystemResolver),
            UpstreamSettings {
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_millis(300),
                max_response_bytes: 1024,
            },
        );
        // A listener that accepts and never answers.
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hang.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                held.push(s);
            }
        });
        let out = Outgoing {
            method: Method::GET,
            uri: format!("http://{addr}/").parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let started = std::time::Instant::now();
        assert!(matches!(up.send(&[], out).await, Err(SendError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let out = Outgoing {
            method: Method::GET,
            uri: format!("http://127.0.0.1:{port}/").parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        assert!(matches!(
            up.send(&[], out).await,
            Err(SendError::Connect(_))
        ));
    }
}
