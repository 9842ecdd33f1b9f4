//! What every replica keeps in memory to answer agents: the Connectors, and the labelled pods
//! of every node (one cluster-wide watch with a label selector: a field selector per node is
//! not possible for all nodes at once). Only what the decisions need is kept.

use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use connectors_crd::access::{INJECT_LABEL, INJECT_VALUE, WorkloadIdentity};
use connectors_crd::{Connector, ConnectorId};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct WorkloadCaches {
    connectors: Store<Connector>,
    pods: Store<Pod>,
    connectors_synced: Arc<AtomicBool>,
    pods_synced: Arc<AtomicBool>,
}

impl WorkloadCaches {
    /// The caches, and the task that fills them until `stop`.
    pub fn start(
        client: Client,
        stop: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (connectors, connector_writer) = reflector::store::<Connector>();
        let (pods, pod_writer) = reflector::store::<Pod>();
        let caches = Self {
            connectors,
            pods,
            connectors_synced: Arc::new(AtomicBool::new(false)),
            pods_synced: Arc::new(AtomicBool::new(false)),
        };
        let connector_stream = watcher(
            Api::<Connector>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|c: &mut Connector| {
            c.metadata.managed_fields = None;
            c.status = None;
        })
        .reflect(connector_writer)
        .inspect(on_synced(caches.connectors_synced.clone(), "Connector"))
        .for_each(|_| ready(()));
        let pod_stream = watcher(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(&format!("{INJECT_LABEL}={INJECT_VALUE}")),
        )
        .default_backoff()
        .modify(slim_pod)
        .reflect(pod_writer)
        .inspect(on_synced(caches.pods_synced.clone(), "labelled pod"))
        .for_each(|_| ready(()));
        let run = async move {
            tokio::select! {
                () = stop.cancelled() => {}
                _ = futures_util::future::join(connector_stream, pod_stream) => {}
            }
        };
        (caches, run)
    }

    pub fn synced(&self) -> bool {
        self.connectors_synced.load(Ordering::Acquire) && self.pods_synced.load(Ordering::Acquire)
    }

    pub fn connector(&self, id: &ConnectorId) -> Option<Arc<Connector>> {
        self.connectors
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
    }

    /// The Connectors of `namespace` (for the unified API's listing).
    pub fn connectors_in(&self, namespace: &str) -> Vec<Arc<Connector>> {
        self.connectors
            .state()
            .into_iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// The workloads on `node`: pods labelled for injection that have not finished.
    pub fn workloads_on(&self, node: &str) -> Vec<WorkloadIdentity> {
        let mut out: Vec<WorkloadIdentity> = self
            .pods
            .state()
            .iter()
            .filter(|p| is_workload_on(p, node))
            .map(|p| identity(p))
            .collect();
        out.sort();
        out
    }
}

/// Marks `flag` at the first full list; logs watch errors.
fn on_synced<K>(
    flag: Arc<AtomicBool>,
    what: &'static str,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |e| match e {
        Ok(watcher::Event::InitDone) if !flag.swap(true, Ordering::AcqRel) => {
            tracing::info!("{what} cache synced (agent API)");
        }
        Err(err) => tracing::warn!(error = %err, "watching {what}"),
        _ => {}
    }
}

/// Keeps what the decisions read: name, namespace, labels, node, ServiceAccount, phase.
fn slim_pod(p: &mut Pod) {
    let spec = p.spec.take().unwrap_or_default();
    p.spec = Some(PodSpec {
        node_name: spec.node_name,
        service_account_name: spec.service_account_name,
        containers: Vec::new(),
        ..Default::default()
    });
    let phase = p.status.take().and_then(|s| s.phase);
    p.status = Some(PodStatus {
        phase,
        ..Default::default()
    });
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
}

pub fn is_workload_on(p: &Pod, node: &str) -> bool {
    let labelled = p
        .labels()
        .get(INJECT_LABEL)
        .is_some_and(|v| v == INJECT_VALUE);
    let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| matches!(ph, "Succeeded" | "Failed"));
    labelled && on_node && !finished && p.metadata.deletion_timestamp.is_none()
}

pub fn identity(p: &Pod) -> WorkloadIdentity {
    WorkloadIdentity {
        namespace: p.namespace().unwrap_or_default(),
        pod: p.name_any(),
        service_account: p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, labelled: bool, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("a".into());
        if labelled {
            p.metadata.labels = Some([(INJECT_LABEL.to_owned(), "true".to_owned())].into());
        }
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn workloads_are_labelled_unfinished_pods_of_the_node() {
        assert!(is_workload_on(&pod("n1", true, "Running"), "n1"));
        assert!(is_workload_on(&pod("n1", true, "Pending"), "n1"));
        assert!(!is_workload_on(&pod("n2", true, "Running"), "n1"));
        assert!(!is_workload_on(&pod("n1", false, "Running"), "n1"));
        assert!(!is_workload_on(&pod("n1", true, "Succeeded"), "n1"));
        assert!(!is_workload_on(&pod("n1", true, "Failed"), "n1"));
        let mut p = pod("n1", true, "Running");
        slim_pod(&mut p);
        assert!(is_workload_on(&p, "n1"));
        assert_eq!(identity(&p).service_account, "default");
    }
}
