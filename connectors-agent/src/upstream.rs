//! Connections to tools: pooled HTTP/1.1 and HTTP/2 clients, TLS verified against the system
//! roots plus a Connector's CA, TCP_NODELAY on every socket.
//!
//! Each worker thread keeps its own pools ([`Upstreams::clients`]), so that a request and the
//! upstream connection serving it live on one thread: no cross-thread wakeup per request. Pools
//! are per trust set (the extra CA certificates of a Connector), interned once as a [`TrustId`]
//! and reused across config reloads, so that idle connections survive a Secret edit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

use crate::resolve::Resolver;
use crate::tls::{self, TlsError};

pub type UpstreamConnector = HttpsConnector<HttpConnector<Resolver>>;
/// A pooled client; cheap to clone.
pub type UpstreamClient = Client<UpstreamConnector, crate::body::Body>;

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

/// A trust set: the system roots plus these CA certificates. Interned: equal sets share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrustId(usize);

/// The factory of upstream clients, shared by every worker.
pub struct Upstreams {
    provider: Arc<CryptoProvider>,
    resolver: Resolver,
    settings: UpstreamSettings,
    /// TLS configurations by trust id; the index is the id.
    trusts: Mutex<Vec<Arc<ClientConfig>>>,
    /// Trust ids by the length-prefixed concatenation of the certificates.
    ids: Mutex<HashMap<Vec<u8>, TrustId>>,
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
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The id of the trust set "system roots plus `extra_roots`", building its TLS
    /// configuration the first time (which checks the certificates).
    pub fn trust(&self, extra_roots: &[CertificateDer<'static>]) -> Result<TrustId, TlsError> {
        let key = roots_key(extra_roots);
        let poisoned = || TlsError::Config("upstream trust table poisoned".into());
        let mut ids = self.ids.lock().map_err(|_| poisoned())?;
        if let Some(id) = ids.get(&key) {
            return Ok(*id);
        }
        let config = Arc::new(tls::client_config(self.provider.clone(), extra_roots)?);
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
