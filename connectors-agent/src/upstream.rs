//! Connections to tools: pooled HTTP/1.1 and HTTP/2 clients, TLS verified against the system
//! roots plus a Connector's CA, TCP_NODELAY on every socket.
//!
//! Each worker thread keeps its own pools ([`Upstreams::client`]), so that a request and the
//! upstream connection serving it live on one thread: no cross-thread wakeup per request. Pools
//! are per trust set and client identity (the extra CA certificates of a Connector, and the
//! client certificate it presents, if any), interned once as a [`TrustId`] and reused across
//! config reloads, so that idle connections survive a Secret edit, and a connection that
//! presented one Connector's certificate never serves another's request.
//!
//! What else is kept per tool across requests lives here too: registry tokens
//! ([`Upstreams::tokens`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use connectors_crd::credentials::ClientIdentity;
use connectors_crd::inject::TokenCache;
use http_body::{Body as _, Frame, SizeHint};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

use crate::resolve::Resolver;
use crate::tls::TlsError;
use secrecy::ExposeSecret as _;

pub type UpstreamConnector = HttpsConnector<HttpConnector<Resolver>>;
/// A pooled client; cheap to clone.
pub type UpstreamClient = Client<UpstreamConnector, RequestBody>;

/// A request body on its way to a tool, which tells when it has been sent whole: the
/// response timeout runs from then, so a long upload is never cut by it.
pub struct RequestBody {
    inner: crate::body::Body,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Resolves once the body of its [`RequestBody`] has been sent whole (or dropped).
pub type BodySent = tokio::sync::oneshot::Receiver<()>;

impl RequestBody {
    pub fn new(inner: crate::body::Body) -> (Self, BodySent) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Self {
            inner,
            sent: Some(tx),
        };
        if body.inner.is_end_stream() {
            body.finished();
        }
        (body, rx)
    }

    fn finished(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finished(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finished(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The clients for one trust set. HTTP/1.1 requests go out over HTTP/1.1 (the same framing both
/// sides, the least work per request); HTTP/2 requests over HTTP/2 when the tool offers it
/// (ALPN), keeping their multiplexing.
#[derive(Clone, Debug)]
pub struct UpstreamClients {
    pub http1: UpstreamClient,
    pub http2: UpstreamClient,
}

impl UpstreamClients {
    /// The client for a request of this version.
    pub fn for_version(&self, v: http::Version) -> &UpstreamClient {
        if v == http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}

/// Timeouts and pool sizes for upstream connections.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// A trust set (the system roots plus a Connector's CA certificates) and the client identity
/// presented, if any. Interned: equal pairs share an id, and so a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrustId(usize);

/// The factory of upstream clients, shared by every worker.
pub struct Upstreams {
    provider: Arc<CryptoProvider>,
    resolver: Resolver,
    settings: UpstreamSettings,
    /// TLS configurations by trust id; the index is the id.
    trusts: Mutex<Vec<Arc<ClientConfig>>>,
    /// Trust ids by the length-prefixed concatenation of the certificates, and the digest of
    /// the client identity.
    ids: Mutex<HashMap<Vec<u8>, TrustId>>,
    tokens: TokenCache,
}

thread_local! {
    /// This thread's clients, by trust id.
    static CLIENTS: RefCell<Vec<Option<UpstreamClients>>> = const { RefCell::new(Vec::new()) };
}

impl Upstreams {
    pub fn new(
        provider: Arc<CryptoProvider>,
        resolver: Resolver,
        settings: UpstreamSettings,
    ) -> Self {
        Self {
            provider,
            resolver,
            settings,
            trusts: Mutex::new(Vec::new()),
            ids: Mutex::new(HashMap::new()),
            tokens: TokenCache::new(),
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Registry tokens and challenges, shared by every worker.
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The id of the trust set "system roots plus `extra_roots`", building its TLS
    /// configuration the first time (which checks the certificates).
    pub fn trust(&self, extra_roots: &[CertificateDer<'static>]) -> Result<TrustId, TlsError> {
        self.trust_for(extra_roots, None)
    }

    /// As [`Upstreams::trust`], presenting `identity` to tools that ask for a client
    /// certificate (its chain and key are checked here).
    pub fn trust_for(
        &self,
        extra_roots: &[CertificateDer<'static>],
        identity: Option<&ClientIdentity>,
    ) -> Result<TrustId, TlsError> {
        let mut key = roots_key(extra_roots);
        if let Some(i) = identity {
            // A digest, so the key material is not kept a second time.
            let mut d = ring::digest::Context::new(&ring::digest::SHA256);
            d.update(i.certificate_pem.as_bytes());
            d.update(i.key_pem.expose_secret().as_bytes());
            key.extend_from_slice(b"identity:");
            key.extend_from_slice(d.finish().as_ref());
        }
        let poisoned = || TlsError::Config("upstream trust table poisoned".into());
        let mut ids = self.ids.lock().map_err(|_| poisoned())?;
        if let Some(id) = ids.get(&key) {
            return Ok(*id);
        }
        let config = Arc::new(
            connectors_crd::tls::client_config_with_identity(
                self.provider.clone(),
                extra_roots,
                identity,
            )
            .map_err(TlsError::from)?,
        );
        let mut trusts = self.trusts.lock().map_err(|_| poisoned())?;
        let id = TrustId(trusts.len());
        trusts.push(config);
        ids.insert(key, id);
        Ok(id)
    }

    /// This thread's client for a trust set and a request version, made on first use.
    pub fn client(
        &self,
        trust: TrustId,
        version: http::Version,
    ) -> Result<UpstreamClient, TlsError> {
        let cached = CLIENTS.with_borrow(|c| {
            c.get(trust.0)
                .and_then(Option::as_ref)
                .map(|clients| clients.for_version(version).clone())
        });
        if let Some(c) = cached {
            return Ok(c);
        }
        let config = self
            .trusts
            .lock()
            .map_err(|_| TlsError::Config("upstream trust table poisoned".into()))?
            .get(trust.0)
            .cloned()
            .ok_or_else(|| TlsError::Config(format!("unknown trust set {}", trust.0)))?;
        let made = UpstreamClients {
            http1: self.build(&config, false),
            http2: self.build(&config, true),
        };
        CLIENTS.with_borrow_mut(|c| {
            if c.len() <= trust.0 {
                c.resize(trust.0 + 1, None);
            }
            c[trust.0] = Some(made.clone());
        });
        Ok(made.for_version(version).clone())
    }

    fn build(&self, config: &ClientConfig, offer_h2: bool) -> UpstreamClient {
        let mut http = HttpConnector::new_with_resolver(self.resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.clone())
            .https_or_http()
            .enable_http1();
        let https = if offer_h2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.wrap_connector(http)
        };
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.settings.pool_idle_timeout)
            .pool_max_idle_per_host(self.settings.pool_max_idle_per_host)
            .http2_adaptive_window(true)
            .build(https)
    }
}

/// The intern key of a set of CA certificates: each one, length-prefixed.
fn roots_key(roots: &[CertificateDer<'static>]) -> Vec<u8> {
    roots
        .iter()
        .flat_map(|c| {
            let len = u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes();
            len.into_iter().chain(c.iter().copied())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        Upstreams::new(
            Arc::new(rustls::crypto::ring::default_provider()),
            Resolver::default(),
            UpstreamSettings::default(),
        )
    }

    #[test]
    fn equal_trust_sets_share_an_id() {
        let u = upstreams();
        let (ca, _) = crate::tls::CertAuthority::generate("t").unwrap();
        let system = u.trust(&[]).unwrap();
        let with_ca = u.trust(std::slice::from_ref(ca.cert_der())).unwrap();
        assert_ne!(system, with_ca);
        assert_eq!(u.trust(&[]).unwrap(), system);
        assert_eq!(
            u.trust(std::slice::from_ref(ca.cert_der())).unwrap(),
            with_ca
        );
    }

    #[test]
    fn a_bad_certificate_is_refused() {
        let u = upstreams();
        let junk = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(u.trust(&[junk]).is_err());
    }
}
