//! The Kubernetes source: ConnectorClasses and Connectors from the API server (watched), and the
//! credentials of the Connectors this node's labelled pods may use, from the controller.
//!
//! The agent never reads Secrets itself (its ServiceAccount may not): it asks the controller
//! ([`ControllerClient`]) for the Secrets of the Connectors that pass the namespace rule for some
//! labelled pod of its node, and the controller answers only for those a pod there may use
//! (namespace rule and RBAC). Credentials are asked for again every `--credentials-refresh`, when
//! the set of wanted Connectors changes, and at once when the proxy meets a pod whose Connector's
//! credentials are not held yet. Connectors whose credentials are not held are in the catalog
//! (their hosts are served and their refusals explained) but not ready, with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use connectors_crd::access;
use connectors_crd::node_api::{self, ConnectorRef, CredentialsRequest, CredentialsResponse};
use connectors_crd::{Connector, ConnectorClass, ConnectorId};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Snapshot, SourceHealth};
use crate::catalog::{Objects, Source};
use crate::controller_api::{ControllerClient, ControllerError};
use crate::workload::pods::Tracking;

/// Changes closer together than this are applied together.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Asks the source to fetch credentials now (the proxy met a pod waiting for them).
#[derive(Clone)]
pub struct Refresh(mpsc::Sender<()>);

impl Refresh {
    pub fn now(&self) {
        let _ = self.0.try_send(());
    }
}

/// The running source's outputs.
pub struct KubeSource {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub refresh: Refresh,
    /// The cluster CA's generation as the controller last reported it.
    pub ca_generation: watch::Receiver<String>,
}

/// Starts watching; the first snapshot is sent once the classes, the Connectors and the pods
/// are listed and credentials were asked for once (whatever the answer).
pub fn start(
    client: Client,
    controller: ControllerClient,
    pods: Tracking,
    refresh_every: Duration,
    health: Arc<SourceHealth>,
    shutdown: CancellationToken,
) -> KubeSource {
    let changed = Arc::new(Notify::new());
    let classes = reflect::<ConnectorClass>(client.clone(), changed.clone(), shutdown.clone());
    let connectors = reflect::<Connector>(client, changed.clone(), shutdown.clone());
    let (tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (refresh_tx, mut refresh_rx) = mpsc::channel(1);
    let (generation_tx, ca_generation) = watch::channel(String::new());
    tokio::spawn(async move {
        let _ = classes.wait_until_ready().await;
        let _ = connectors.wait_until_ready().await;
        let mut synced = pods.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
        let mut held = Held::default();
        let mut index_changes = pods.cgroups.clone();
        let mut wanted_before = BTreeSet::new();
        let mut fetched_once = false;
        let mut last_print = None;
        loop {
            let index = pods.index.load_full();
            let namespaces = index.namespaces();
            let all = connectors.state();
            let wanted: BTreeSet<ConnectorId> = all
                .iter()
                .filter(|c| {
                    namespaces
                        .iter()
                        .any(|ns| access::namespace_rule(c, ns).is_ok())
                })
                .map(|c| c.id())
                .collect();
            if !fetched_once || wanted != wanted_before || held.stale(refresh_every) {
                match held.fetch(&controller, &wanted).await {
                    Ok(generation) => {
                        health.ok();
                        if let Some(g) = generation {
                            generation_tx.send_if_modified(|cur| {
                                let changed = *cur != g;
                                *cur = g;
                                changed
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get credentials from the controller; retrying");
                        health.failed(format!("credentials from the controller: {e}"));
                    }
                }
                fetched_once = true;
                wanted_before = wanted.clone();
            }
            let class_list = classes.state();
            // A new snapshot only when something in it changed (a refresh usually changes
            // nothing, and each snapshot is a new catalog generation).
            let print = fingerprint(&class_list, &all, &held);
            if print != last_print {
                let snapshot = held.snapshot(&class_list, &all, &wanted);
                if tx.send(Arc::new(snapshot)).is_err() {
                    break;
                }
                last_print = print;
            }
            tokio::select! {
                () = changed.notified() => {}
                r = index_changes.changed() => if r.is_err() { break },
                Some(()) = refresh_rx.recv() => held.expire(),
                () = tokio::time::sleep(refresh_every) => {}
                () = shutdown.cancelled() => break,
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
    });
    KubeSource {
        snapshots,
        refresh: Refresh(refresh_tx),
        ca_generation,
    }
}

/// What a snapshot is made of, by resource versions: equal fingerprints, equal snapshots.
fn fingerprint(
    classes: &[Arc<ConnectorClass>],
    connectors: &[Arc<Connector>],
    held: &Held,
) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut versions: Vec<(String, String)> = classes
        .iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
        .chain(
            connectors
                .iter()
                .map(|c| (c.id().to_string(), c.resource_version().unwrap_or_default())),
        )
        .collect();
    versions.sort();
    versions.hash(&mut h);
    for (id, secrets) in &held.secrets {
        id.to_string().hash(&mut h);
        for s in secrets {
            (&s.name, &s.resource_version).hash(&mut h);
        }
    }
    for (id, why) in &held.refused {
        (id.to_string(), why).hash(&mut h);
    }
    held.unreachable.hash(&mut h);
    Some(h.finish())
}

/// A reflector of every object of kind `K`, notifying `changed` on each event.
fn reflect<K>(client: Client, changed: Arc<Notify>, shutdown: CancellationToken) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => tracing::warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying"),
                    None => break,
                },
                () = shutdown.cancelled() => break,
            }
        }
    });
    reader
}

/// The credentials the agent holds, and why it holds none for the others.
#[derive(Default)]
struct Held {
    secrets: BTreeMap<ConnectorId, Vec<node_api::SecretData>>,
    refused: BTreeMap<ConnectorId, String>,
    fetched_at: Option<tokio::time::Instant>,
    /// The last failure to reach the controller, for the Connectors it left unknown.
    unreachable: Option<String>,
}

impl Held {
    fn stale(&self, every: Duration) -> bool {
        self.fetched_at.is_none_or(|t| t.elapsed() >= every)
    }

    fn expire(&mut self) {
        self.fetched_at = None;
    }

    async fn fetch(
        &mut self,
        controller: &ControllerClient,
        wanted: &BTreeSet<ConnectorId>,
    ) -> Result<Option<String>, ControllerError> {
        self.fetched_at = Some(tokio::time::Instant::now());
        // Credentials no pod of this node may use any more are dropped at once.
        self.secrets.retain(|id, _| wanted.contains(id));
        self.refused.retain(|id, _| wanted.contains(id));
        if wanted.is_empty() {
            self.unreachable = None;
            return Ok(None);
        }
        let request = CredentialsRequest {
            connectors: wanted
                .iter()
                .map(|id| ConnectorRef {
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                })
                .collect(),
        };
        let answer: CredentialsResponse =
            match controller.post(node_api::CREDENTIALS_PATH, &request).await {
                Ok(a) => a,
                Err(e) => {
                    // Credentials already held keep serving; revocation is the controller's answer,
                    // not its silence.
                    self.unreachable = Some(e.to_string());
                    return Err(e);
                }
            };
        self.unreachable = None;
        for item in answer.items {
            let id = ConnectorId::new(&item.namespace, &item.name);
            if item.allowed {
                self.refused.remove(&id);
                self.secrets.insert(id, item.secrets);
            } else {
                self.secrets.remove(&id);
                self.refused.insert(
                    id,
                    item.reason
                        .unwrap_or_else(|| "the controller refused its credentials".into()),
                );
            }
        }
        Ok(Some(answer.ca_generation).filter(|g| !g.is_empty()))
    }

    /// The objects: every class and Connector, the Secrets held, and for the other Connectors
    /// why their credentials are withheld.
    fn snapshot(
        &self,
        classes: &[Arc<ConnectorClass>],
        connectors: &[Arc<Connector>],
        wanted: &BTreeSet<ConnectorId>,
    ) -> Snapshot {
        let mut objects = Objects::default();
        for c in classes {
            objects
                .classes
                .insert(c.name_any(), ((**c).clone(), Source::Api));
        }
        for c in connectors {
            let id = c.id();
            if !self.secrets.contains_key(&id) {
                let why = if let Some(r) = self.refused.get(&id) {
                    r.clone()
                } else if !wanted.contains(&id) {
                    "no labelled pod on this node is in a namespace that may use it".to_owned()
                } else if let Some(e) = &self.unreachable {
                    format!("its credentials could not be fetched from the controller: {e}")
                } else {
                    "its credentials are being fetched from the controller".to_owned()
                };
                objects.withheld.insert(id.clone(), why);
            }
            objects.connectors.insert(id, ((**c).clone(), Source::Api));
        }
        for (id, secrets) in &self.secrets {
            for s in secrets {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(s.name.clone()),
                        namespace: Some(id.namespace.clone()),
                        resource_version: Some(s.resource_version.clone()),
                        ..Default::default()
                    },
                    type_: Some(s.type_.clone()),
                    data: Some(s.data.clone()),
                    ..Default::default()
                };
                objects.secrets.insert(
                    (id.namespace.clone(), s.name.clone()),
                    (secret, Source::Api),
                );
            }
        }
        Snapshot {
            objects,
            problems: Vec::new(),
        }
    }
}
