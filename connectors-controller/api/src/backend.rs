//! What the API needs from where it runs, as two small traits:
//! - [`Store`]: find a Connector, its class, and (only when a tool is called) its Secrets;
//! - [`Gate`]: who is calling, and whether they may `get` a Connector.
//!
//! The controller implements them with its caches, TokenReview and SubjectAccessReview; the
//! standalone agent with its configuration folder and a token file.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use http::HeaderMap;
use k8s_openapi::api::core::v1::Secret;

use crate::error::ApiError;

/// A boxed future, so that the traits are object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A Connector and its class, as the store holds them now.
#[derive(Clone, Debug)]
pub struct Entry {
    pub connector: Arc<Connector>,
    /// `None` when the class does not exist.
    pub class: Option<Arc<ConnectorClass>>,
    /// Changes whenever the Connector or its class changes (resource versions, a configuration
    /// generation): part of every cache key, so that an edit is seen at once.
    pub version: String,
}

/// Where Connectors come from.
pub trait Store: Send + Sync + 'static {
    /// The Connector `id`, if it exists.
    fn connector(&self, id: &ConnectorId) -> Result<Option<Entry>, ApiError>;
    /// Every Connector of `namespace`.
    fn connectors(&self, namespace: &str) -> Result<Vec<Entry>, ApiError>;
    /// The Secrets the Connector names (`spec.auth.secretRef`, `spec.caCertSecretRef`), of its
    /// own namespace, by name. Read only when a tool is about to be called.
    fn secrets<'a>(
        &'a self,
        connector: &'a Connector,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Secret>, ApiError>>;
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The user name, for logs and messages (never a token).
    pub name: String,
    /// The groups, as the authenticator gave them.
    pub groups: Vec<String>,
    /// The uid, when known.
    pub uid: Option<String>,
    /// Extra attributes (TokenReview `extra`).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Who calls, and what they may do.
pub trait Gate: Send + Sync + 'static {
    /// The caller of a request ([`ApiError::Unauthorized`] without an acceptable token).
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Caller, ApiError>>;
    /// Whether `caller` may `get` Connector `id` ([`ApiError::Forbidden`] when not).
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        id: &'a ConnectorId,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
}
