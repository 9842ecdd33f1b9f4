//! Where the unified REST API finds Connectors on a cluster: the Connector cache every replica
//! keeps for the agent API, a ConnectorClass cache of its own, and the Secrets a Connector
//! names, read from the API server when a tool is called (Secret data is never cached, as for
//! the checks and the agent API).

use std::collections::BTreeMap;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use connectors_api::{ApiError, BoxFuture, Entry, Store};
use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::caches::WorkloadCaches;

pub struct KubeStore {
    client: Client,
    connectors: WorkloadCaches,
    classes: reflector::Store<ConnectorClass>,
    classes_synced: Arc<AtomicBool>,
}

impl KubeStore {
    /// The store, and the task that fills its class cache until `stop`.
    pub fn start(
        client: Client,
        connectors: WorkloadCaches,
        stop: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (classes, writer) = reflector::store::<ConnectorClass>();
        let synced = Arc::new(AtomicBool::new(false));
        let flag = synced.clone();
        let stream = watcher(
            Api::<ConnectorClass>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|c: &mut ConnectorClass| {
            c.metadata.managed_fields = None;
            c.status = None;
        })
        .reflect(writer)
        .inspect(move |e| match e {
            Ok(watcher::Event::InitDone) if !flag.swap(true, Ordering::AcqRel) => {
                tracing::info!("ConnectorClass cache synced (unified API)");
            }
            Err(err) => tracing::warn!(error = %err, "watching ConnectorClasses"),
            _ => {}
        })
        .for_each(|_| ready(()));
        let run = async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = stream => {}
            }
        };
        (
            Self {
                client,
                connectors,
                classes,
                classes_synced: synced,
            },
            run,
        )
    }

    fn synced(&self) -> Result<(), ApiError> {
        if self.connectors.synced() && self.classes_synced.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "the controller is still reading Connectors and ConnectorClasses from the API server; retry in a moment".into(),
            ))
        }
    }

    fn entry(&self, connector: Arc<Connector>) -> Entry {
        let class = self
            .classes
            .get(&ObjectRef::new(&connector.spec.connector_class_name));
        let version = format!(
            "{}/{}",
            connector.resource_version().unwrap_or_default(),
            class
                .as_ref()
                .and_then(|c| c.resource_version())
                .unwrap_or_default()
        );
        Entry {
            connector,
            class,
            version,
        }
    }
}

impl Store for KubeStore {
    fn connector(&self, id: &ConnectorId) -> Result<Option<Entry>, ApiError> {
        self.synced()?;
        Ok(self.connectors.connector(id).map(|c| self.entry(c)))
    }

    fn connectors(&self, namespace: &str) -> Result<Vec<Entry>, ApiError> {
        self.synced()?;
        Ok(self
            .connectors
            .connectors_in(namespace)
            .into_iter()
            .map(|c| self.entry(c))
            .collect())
    }

    fn secrets<'a>(
        &'a self,
        connector: &'a Connector,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Secret>, ApiError>> {
        Box::pin(async move {
            let namespace = connector.namespace().unwrap_or_default();
            let mut names = Vec::new();
            if let Some(r) = connector
                .spec
                .auth
                .as_ref()
                .and_then(|a| a.secret_ref.as_ref())
                && r.namespace.as_deref().is_none_or(|ns| ns == namespace)
            {
                names.push(r.name.clone());
            }
            if let Some(r) = &connector.spec.ca_cert_secret_ref {
                names.push(r.name.clone());
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
            let mut found = BTreeMap::new();
            for name in names {
                if name.is_empty() || found.contains_key(&name) {
                    continue;
                }
                let secret = api.get_opt(&name).await.map_err(|e| {
                    ApiError::Unavailable(format!(
                        "cannot read Secret {namespace}/{name} now (API server: {e}); retry"
                    ))
                })?;
                if let Some(s) = secret {
                    found.insert(name, s);
                }
            }
            Ok(found)
        })
    }
}
