//! The unified REST API on the standalone agent (`--api-listen`), so that a UI developer can
//! try it with no cluster: the same routes as the controller's ([`connectors_api`]), over the
//! configuration folder (its classes, Connectors and Secrets, as the agent reads them), with
//! the token of `--api-token-file` as the only credential accepted. Plain HTTP, on loopback
//! only. The agent's hosts file resolves tool names, as for the proxy.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use connectors_api::{ApiError, BoxFuture, Caller, Entry, Gate, Resolve, Store};
use connectors_crd::{Connector, ConnectorId};
use k8s_openapi::api::core::v1::Secret;
use tokio::sync::watch;

use crate::resolve::Resolver;
use crate::source::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error(
        "--api-listen {0} is not a loopback address: the standalone API speaks plain HTTP with a bearer token, so it only listens on 127.0.0.1 or [::1]"
    )]
    NotLoopback(SocketAddr),
    #[error("--api-listen needs --api-token-file (the token callers must send)")]
    NoTokenFile,
    #[error("--api-token-file {path}: {why}")]
    TokenFile { path: String, why: String },
}

/// What the API needs from the command line.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub allow_writes: bool,
    pub timeout: Duration,
    pub cache_ttl: Duration,
}

/// The API's routes, over the configuration the agent serves.
pub fn router(
    options: &ApiOptions,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    resolver: Resolver,
) -> Result<Router, ApiStartError> {
    if !options.listen.ip().is_loopback() {
        return Err(ApiStartError::NotLoopback(options.listen));
    }
    let path = options
        .token_file
        .clone()
        .ok_or(ApiStartError::NoTokenFile)?;
    read_token(&path).map_err(|why| ApiStartError::TokenFile {
        path: path.display().to_string(),
        why,
    })?;
    let settings = connectors_api::Settings {
        allow_writes: options.allow_writes,
        timeout: options.timeout,
        cache_ttl: options.cache_ttl,
        ..Default::default()
    };
    let api = connectors_api::Api::new(
        Arc::new(SnapshotStore { snapshots }),
        Arc::new(TokenFileGate { path }),
        Arc::new(HostsResolver(resolver)),
        Arc::new(rustls::crypto::ring::default_provider()),
        settings,
    );
    Ok(connectors_api::router(api))
}

/// The token callers must send: the file's content, trimmed.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err("the file is empty".into());
    }
    if token.chars().any(char::is_control) {
        return Err("the token holds control characters".into());
    }
    Ok(token)
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Callers holding the token of the file may get every Connector (it is read at each request,
/// so a new token applies at once).
struct TokenFileGate {
    path: PathBuf,
}

impl Gate for TokenFileGate {
    fn authenticate<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
    ) -> BoxFuture<'a, Result<Caller, ApiError>> {
        Box::pin(async move {
            let sent = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "no bearer token: send the token of the agent's --api-token-file as `Authorization: Bearer <token>`".into(),
                    )
                })?;
            let path = self.path.clone();
            let expected = tokio::task::spawn_blocking(move || read_token(&path))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|why| {
                    ApiError::Unavailable(format!(
                        "the agent cannot read its --api-token-file now ({why})"
                    ))
                })?;
            if !same(sent.as_bytes(), expected.as_bytes()) {
                return Err(ApiError::Unauthorized(
                    "the token is not the one of the agent's --api-token-file".into(),
                ));
            }
            Ok(Caller {
                name: "api-token-file".to_owned(),
                groups: Vec::new(),
                uid: None,
                extra: BTreeMap::new(),
            })
        })
    }

    fn authorize<'a>(
        &'a self,
        _caller: &'a Caller,
        _id: &'a ConnectorId,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The configuration the agent serves now.
struct SnapshotStore {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotStore {
    fn entry(snapshot: &Snapshot, connector: &Connector) -> Entry {
        let class = snapshot
            .objects
            .classes
            .get(&connector.spec.connector_class_name)
            .map(|(c, _)| Arc::new(c.clone()));
        // The version: what the Connector and its class say, hashed.
        let mut h = DefaultHasher::new();
        serde_json::to_string(&connector.spec)
            .unwrap_or_default()
            .hash(&mut h);
        serde_json::to_string(&connector.metadata.annotations)
            .unwrap_or_default()
            .hash(&mut h);
        if let Some(c) = &class {
            serde_json::to_string(&c.spec)
                .unwrap_or_default()
                .hash(&mut h);
        }
        Entry {
            connector: Arc::new(connector.clone()),
            class,
            version: format!("{:016x}", h.finish()),
        }
    }
}

impl Store for SnapshotStore {
    fn connector(&self, id: &ConnectorId) -> Result<Option<Entry>, ApiError> {
        let snapshot = self.snapshots.borrow().clone();
        Ok(snapshot
            .objects
            .connectors
            .get(id)
            .map(|(c, _)| Self::entry(&snapshot, c)))
    }

    fn connectors(&self, namespace: &str) -> Result<Vec<Entry>, ApiError> {
        let snapshot = self.snapshots.borrow().clone();
        Ok(snapshot
            .objects
            .connectors
            .iter()
            .filter(|(id, _)| id.namespace == namespace)
            .map(|(_, (c, _))| Self::entry(&snapshot, c))
            .collect())
    }

    fn secrets<'a>(
        &'a self,
        connector: &'a Connector,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Secret>, ApiError>> {
        let snapshot = self.snapshots.borrow().clone();
        Box::pin(async move {
            let ns = connector.metadata.namespace.clone().unwrap_or_default();
            let mut names: Vec<&str> = Vec::new();
            if let Some(r) = connector
                .spec
                .auth
                .as_ref()
                .and_then(|a| a.secret_ref.as_ref())
            {
                names.push(&r.name);
            }
            if let Some(r) = &connector.spec.ca_cert_secret_ref {
                names.push(&r.name);
            }
            Ok(names
                .into_iter()
                .filter_map(|n| {
                    snapshot
                        .objects
                        .secrets
                        .get(&(ns.clone(), n.to_owned()))
                        .map(|(s, _)| (n.to_owned(), s.clone()))
                })
                .collect())
        })
    }
}

/// The agent's resolver (hosts file first) for the API's tool requests.
struct HostsResolver(Resolver);

impl Resolve for HostsResolver {
    fn lookup(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let r = self.0.clone();
        let host = host.to_owned();
        Box::pin(async move { r.lookup(&host, 0).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  s3cret-token\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret-token");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token(&p).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn only_loopback() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let options = ApiOptions {
            listen: "0.0.0.0:15030".parse().unwrap(),
            token_file: None,
            allow_writes: false,
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::ZERO,
        };
        assert!(matches!(
            router(&options, rx, Resolver::default()),
            Err(ApiStartError::NotLoopback(_))
        ));
    }
}
