//! Leaf certificates for the hosts workloads connect to, minted on first use and cached.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration as StdDuration, Instant};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::{CertAuthority, TlsError};

/// How long a minted leaf is valid, and when it is replaced (well before it expires).
const LEAF_VALIDITY: Duration = Duration::days(7);
const LEAF_REFRESH: StdDuration = StdDuration::from_secs(3 * 24 * 3600);
const CACHE_ENTRIES: usize = 4096;

/// ALPN protocols offered to workloads.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Clone)]
struct Entry {
    config: Arc<ServerConfig>,
    minted: Instant,
}

/// Mints and caches a server TLS configuration per host name.
pub struct LeafCertificates {
    ca: ArcSwap<CertAuthority>,
    provider: Arc<CryptoProvider>,
    cache: quick_cache::sync::Cache<String, Entry>,
}

impl LeafCertificates {
    pub fn new(ca: Arc<CertAuthority>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            ca: ArcSwap::new(ca),
            provider,
            cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        }
    }

    pub fn ca(&self) -> Arc<CertAuthority> {
        self.ca.load_full()
    }

    /// Signs with `ca` from now on (a renewed intermediate); leaves minted with the previous one
    /// are minted again on their next use.
    pub fn set_ca(&self, ca: Arc<CertAuthority>) {
        self.ca.store(ca);
        self.cache.clear();
    }

    /// The server configuration presenting a certificate for `host` (a DNS name or IP literal).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let key = host.to_ascii_lowercase();
        if let Some(e) = self.cache.get(&key)
            && e.minted.elapsed() < LEAF_REFRESH
        {
            return Ok(e.config);
        }
        let entry = self.mint(&key)?;
        self.cache.insert(key, entry.clone());
        Ok(entry.config)
    }

    fn mint(&self, host: &str) -> Result<Entry, TlsError> {
        let _span = tracing::debug_span!("mint_leaf", host).entered();
        let mint_err = |e: rcgen::Error| TlsError::Mint {
            host: host.to_owned(),
            reason: e.to_string(),
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(mint_err)?),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let ca = self.ca.load_full();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        // Never outliving the CA that signs it (an intermediate lives a day).
        params.not_after = match ca.not_after {
            Some(end) => (now + LEAF_VALIDITY).min(end),
            None => now + LEAF_VALIDITY,
        };
        let key = KeyPair::generate().map_err(mint_err)?;
        let cert = params.signed_by(&key, &ca.issuer).map_err(mint_err)?;
        let mut chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        chain.extend(ca.chain.iter().cloned());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        tracing::debug!("minted leaf certificate");
        Ok(Entry {
            config: Arc::new(config),
            minted: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves() -> LeafCertificates {
        let (ca, _) = CertAuthority::generate("test").unwrap();
        LeafCertificates::new(
            Arc::new(ca),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    #[test]
    fn mints_once_per_host() {
        let l = leaves();
        let a = l.server_config("Git.Test").unwrap();
        let b = l.server_config("git.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = l.server_config("other.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn mints_for_ip_literals() {
        let l = leaves();
        l.server_config("198.18.0.2").unwrap();
        l.server_config("fd00::2").unwrap();
    }
}
