//! Connections to tools: pooled HTTP/1.1 and HTTP/2 clients, TLS verified against the system
//! roots plus a Connector's CA, TCP_NODELAY on every socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

use crate::resolve::Resolver;
use crate::tls::{self, TlsError};

pub type UpstreamConnector = HttpsConnector<HttpConnector<Resolver>>;
/// A pooled client; cheap to clone.
pub type UpstreamClient = Client<UpstreamConnector, Incoming>;

/// The clients for one trust configuration. HTTP/1.1 requests go out over HTTP/1.1 (the same
/// framing both sides, the least work per request); HTTP/2 requests over HTTP/2 when the tool
/// offers it (ALPN), keeping their multiplexing.
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

/// One pooled client per distinct set of extra CA certificates, reused across config reloads so
/// that idle connections survive them.
pub struct Upstreams {
    provider: Arc<CryptoProvider>,
    resolver: Resolver,
    settings: UpstreamSettings,
    clients: Mutex<HashMap<Vec<u8>, UpstreamClients>>,
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
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The clients that trust the system roots and `extra_roots`.
    pub fn client(
        &self,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<UpstreamClients, TlsError> {
        let key = roots_key(extra_roots);
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| TlsError::Config("upstream client table poisoned".into()))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let built = UpstreamClients {
            http1: self.build(extra_roots, false)?,
            http2: self.build(extra_roots, true)?,
        };
        clients.insert(key, built.clone());
        Ok(built)
    }

    /// Drops clients no longer used by any Connector (their idle connections close).
    pub fn retain(&self, in_use: &[Vec<CertificateDer<'static>>]) {
        let keys: Vec<Vec<u8>> = in_use.iter().map(|r| roots_key(r)).collect();
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|k, _| k.is_empty() || keys.contains(k));
        }
    }

    fn build(
        &self,
        extra_roots: &[CertificateDer<'static>],
        offer_h2: bool,
    ) -> Result<UpstreamClient, TlsError> {
        let tls = tls::client_config(self.provider.clone(), extra_roots)?;
        let mut http = HttpConnector::new_with_resolver(self.resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let https = if offer_h2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.wrap_connector(http)
        };
        Ok(Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.settings.pool_idle_timeout)
            .pool_max_idle_per_host(self.settings.pool_max_idle_per_host)
            .http2_adaptive_window(true)
            .build(https))
    }
}

/// The table key of a set of CA certificates: each one, length-prefixed.
fn roots_key(roots: &[CertificateDer<'static>]) -> Vec<u8> {
    roots
        .iter()
        .flat_map(|c| {
            let len = u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes();
            len.into_iter().chain(c.iter().copied())
        })
        .collect()
}
