//! The endpoint map: every address and port a Connector serves, resolved with the agent's
//! resolver (hosts-file overrides, then DNS), kept in step with the catalog and re-resolved
//! periodically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use connectors_common::{Endpoint, EndpointKey};
use futures_util::future::join_all;

use super::maps::{Maps, endpoint_key};
use crate::catalog::Catalog;
use crate::resolve::Resolver;

/// How long one name may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub endpoints: usize,
    pub addresses: usize,
    pub added: usize,
    pub removed: usize,
}

/// Keeps the endpoint map equal to the catalog's endpoints, resolved.
pub struct EndpointSync {
    resolver: Resolver,
    /// The proxy's own addresses: never redirected (that would loop).
    own: Vec<SocketAddr>,
    /// Last good resolution per endpoint, kept when a later lookup fails.
    last: HashMap<(String, u16), Vec<SocketAddr>>,
    installed: HashMap<EndpointKey, Endpoint>,
    /// Whether an IPv6 endpoint without an IPv6 proxy address was reported.
    warned_no_v6: bool,
}

impl EndpointSync {
    pub fn new(resolver: Resolver, own: Vec<SocketAddr>) -> Self {
        Self {
            resolver,
            own,
            last: HashMap::new(),
            installed: HashMap::new(),
            warned_no_v6: false,
        }
    }

    /// Resolves every endpoint of `catalog` and updates the map: new entries first, then stale
    /// ones removed, so an endpoint that keeps an address is never missing in between.
    pub async fn sync(&mut self, catalog: &Catalog, maps: &Maps) -> SyncReport {
        let endpoints = catalog.endpoints();
        let lookups = endpoints.iter().map(|(host, port)| {
            let resolver = self.resolver.clone();
            async move {
                match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup(host, *port)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "name lookup timed out",
                    )),
                }
            }
        });
        let results = join_all(lookups).await;
        let mut desired = HashMap::new();
        let mut last = HashMap::new();
        for (i, ((host, port), result)) in endpoints.iter().zip(results).enumerate() {
            let key = (host.clone(), *port);
            let addrs = match result {
                Ok(a) => a,
                Err(e) => {
                    let kept = self.last.get(&key).cloned().unwrap_or_default();
                    tracing::warn!(%host, port, error = %e, kept = kept.len(), "cannot resolve a tool endpoint for the redirect; keeping its last addresses");
                    kept
                }
            };
            let id = u32::try_from(i).unwrap_or(u32::MAX);
            for addr in &addrs {
                if self.own.contains(addr) || addr.ip().is_unspecified() {
                    tracing::warn!(%host, %addr, "a tool endpoint is the proxy's own address; not redirected");
                    continue;
                }
                desired.insert(endpoint_key(*addr), Endpoint { id, _pad: 0 });
            }
            last.insert(key, addrs);
        }
        self.last = last;
        if !self.warned_no_v6 && !self.own.iter().any(SocketAddr::is_ipv6) {
            let v6 = self
                .last
                .values()
                .flatten()
                .find(|a| a.is_ipv6() && a.ip().to_canonical().is_ipv6());
            if let Some(a) = v6 {
                tracing::warn!(addr = %a, "a tool has an IPv6 address but the redirect has no IPv6 proxy address (--redirect-to); IPv6 connections to it go direct");
                self.warned_no_v6 = true;
            }
        }
        let mut report = SyncReport {
            endpoints: endpoints.len(),
            addresses: desired.len(),
            ..Default::default()
        };
        let Ok(mut map) = maps.endpoints.lock() else {
            tracing::error!("endpoint map lock poisoned");
            return report;
        };
        for (key, value) in &desired {
            if self.installed.get(key) == Some(value) {
                continue;
            }
            match map.insert(key, value, 0) {
                Ok(()) => {
                    self.installed.insert(*key, *value);
                    report.added += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot add a tool endpoint to the redirect map")
                }
            }
        }
        let stale: Vec<EndpointKey> = self
            .installed
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            match map.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    self.installed.remove(&key);
                    report.removed += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot remove a tool endpoint from the redirect map")
                }
            }
        }
        report
    }
}
