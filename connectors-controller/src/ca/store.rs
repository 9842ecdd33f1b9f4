//! Every replica's view of the CA Secret: created when absent (create-if-absent, so replicas
//! racing at first start agree: the loser reads the winner's), then watched; the leader writes
//! rotations through it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::root::RootError;
use super::rotation::{self, Policy};
use super::secret::{self, SecretError};
use super::{ClusterCa, Root, now};

/// The CA as last read, with its Secret's metadata (never its data).
#[derive(Debug)]
pub struct CaState {
    pub ca: ClusterCa,
    pub meta: ObjectMeta,
}

/// The latest CA (none until it is first read).
pub type CaReceiver = watch::Receiver<Option<Arc<CaState>>>;

#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "the CA Secret {0} cannot be used ({1}); it is left as it is: fix it, or delete it to have a new CA created"
    )]
    Invalid(String, SecretError),
    #[error("cannot make a root: {0}")]
    Root(#[from] RootError),
}

pub struct CaStore {
    api: Api<Secret>,
    name: String,
    namespace: String,
    validity: Duration,
    tx: watch::Sender<Option<Arc<CaState>>>,
}

impl CaStore {
    /// The store for Secret `namespace/name`; new roots are valid `validity`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, validity: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            validity,
            tx: watch::Sender::new(None),
        }
    }

    pub fn subscribe(&self) -> CaReceiver {
        self.tx.subscribe()
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads the CA, creating it when absent: from the last state this replica knew (a deleted
    /// Secret comes back with the same roots, so nothing breaks), else with a new root.
    pub async fn ensure(&self) -> Result<Arc<CaState>, CaStoreError> {
        if let Some(s) = self.api.get_opt(&self.name).await? {
            return self.publish(&s);
        }
        let last = self.tx.borrow().clone();
        let ca = match &last {
            Some(state) => {
                tracing::warn!(secret = %self.id(), "the CA Secret is gone; writing it back from the last state read (to rotate the CA, change its connectors.io/rotate annotation instead)");
                ClusterCa {
                    current: state.ca.current.duplicate()?,
                    previous: match &state.ca.previous {
                        Some(p) => Some(super::Previous {
                            root: p.root.duplicate()?,
                            sign_until: p.sign_until,
                            valid_until: p.valid_until,
                        }),
                        None => None,
                    },
                    rotate_handled: state.ca.rotate_handled.clone(),
                    rotate_requested: None,
                    resource_version: None,
                }
            }
            None => ClusterCa::new(Root::generate(self.validity, now())?),
        };
        let object = secret::encode(&ca, None, &self.name, &self.namespace);
        match self.api.create(&PostParams::default(), &object).await {
            Ok(created) => {
                if last.is_none() {
                    tracing::info!(secret = %self.id(), root = %ca.current.name, fingerprint = %ca.current.fingerprint, "created the cluster CA");
                }
                self.publish(&created)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(secret = %self.id(), "the CA Secret exists already (another replica was first); using it");
                let s = self.api.get(&self.name).await?;
                self.publish(&s)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes a Secret as read (or written) as the current CA, unless it is the one held.
    fn publish(&self, s: &Secret) -> Result<Arc<CaState>, CaStoreError> {
        if let Some(held) = self.tx.borrow().as_ref()
            && held.meta.resource_version.is_some()
            && held.meta.resource_version == s.metadata.resource_version
        {
            return Ok(held.clone());
        }
        let ca = secret::decode(s).map_err(|e| CaStoreError::Invalid(self.id(), e))?;
        let previous = self.tx.borrow().clone();
        let changed = previous.as_ref().is_none_or(|p| {
            p.ca.current.fingerprint != ca.current.fingerprint
                || p.ca.previous.as_ref().map(|r| &r.root.fingerprint)
                    != ca.previous.as_ref().map(|r| &r.root.fingerprint)
        });
        if changed {
            tracing::info!(
                current = %ca.current.fingerprint,
                previous = ?ca.previous.as_ref().map(|p| p.root.fingerprint.as_str()),
                generation = %ca.generation(now()),
                "cluster CA loaded"
            );
        }
        let mut meta = s.metadata.clone();
        meta.managed_fields = None;
        let state = Arc::new(CaState { ca, meta });
        self.tx.send_replace(Some(state.clone()));
        Ok(state)
    }

    /// Follows the Secret until `stop`: changes are taken at once, a deleted Secret is written
    /// back. A Secret that cannot be used is reported and the last good CA kept.
    pub async fn follow(&self, stop: CancellationToken) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let events = watcher(self.api.clone(), config).default_backoff();
        tokio::pin!(events);
        let mut seen = false;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                e = events.next() => e,
            };
            match event {
                None => return,
                Some(Ok(watcher::Event::Init)) => seen = false,
                Some(Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s))) => {
                    seen = true;
                    if let Err(e) = self.publish(&s) {
                        tracing::error!("{e}");
                    }
                }
                Some(Ok(watcher::Event::InitDone)) if seen => {}
                Some(Ok(watcher::Event::InitDone | watcher::Event::Delete(_))) => {
                    self.ensure_until_done(&stop).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(secret = %self.id(), error = %e, "cannot watch the CA Secret")
                }
            }
        }
    }

    async fn ensure_until_done(&self, stop: &CancellationToken) {
        loop {
            match self.ensure().await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(secret = %self.id(), error = %e, "cannot read or create the CA Secret; retrying")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Writes a rotation to a new root (conditional on the state read).
    pub async fn rotate(
        &self,
        state: &CaState,
        policy: &Policy,
        now: i64,
    ) -> Result<Arc<CaState>, CaStoreError> {
        let new = Root::generate(policy.validity, now)?;
        let ca = rotation::rotated(&state.ca, new, policy, now)?;
        self.write(&ca, &state.meta).await
    }

    /// Writes the CA without its previous root (conditional on the state read).
    pub async fn retire(&self, state: &CaState) -> Result<Arc<CaState>, CaStoreError> {
        let ca = rotation::retired(&state.ca)?;
        self.write(&ca, &state.meta).await
    }

    async fn write(&self, ca: &ClusterCa, base: &ObjectMeta) -> Result<Arc<CaState>, CaStoreError> {
        let object = secret::encode(ca, Some(base), &self.name, &self.namespace);
        let written = self
            .api
            .replace(&self.name, &PostParams::default(), &object)
            .await?;
        self.publish(&written)
    }
}
