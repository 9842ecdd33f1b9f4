//! Keeping the [`PodIndex`] in step with the API server and the cgroup tree.
//!
//! The tracker watches the pods of this node that carry the label (`spec.nodeName` field
//! selector, `connectors.io/inject=true` label selector) and the folders new pod cgroups appear
//! in (inotify). A pod joins the redirect as soon as both are known: its cgroup directory is
//! created (empty) before any of its containers start, so the redirect is active before the
//! pod's first process runs. A pod leaves when it is deleted, loses the label, or finishes.
//!
//! The tracker publishes the index (for the proxy) and the cgroup ids with the moment each
//! cgroup appeared (for the redirect, which measures how long it took to activate).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use connectors_crd::access::{INJECT_LABEL, INJECT_VALUE, WorkloadIdentity};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{CgroupTree, Pod, PodIndex};

/// How long a pending pod (known, cgroup not found yet) waits between searches.
const RETRY: Duration = Duration::from_millis(250);
/// A pod pending this long is also looked for from its processes (one pass over `/proc` for
/// every such pod), in case its directory's name is not one the agent knows.
const BY_PROCESS_AFTER: Duration = Duration::from_secs(2);
/// Directory creations remembered for pods not known yet (the pod's event may come later).
const EARLY_CGROUPS: usize = 4096;

/// The cgroups under the redirect, each with when it appeared (or was first seen).
pub type CgroupSet = BTreeMap<u64, Instant>;

/// What the tracker publishes.
#[derive(Clone)]
pub struct Tracking {
    pub index: Arc<ArcSwap<PodIndex>>,
    pub cgroups: watch::Receiver<CgroupSet>,
    /// True once the first complete list of pods has been applied.
    pub synced: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("cannot watch the pod cgroup folders: {0}")]
    Inotify(#[from] notify::Error),
}

/// Starts tracking the labelled pods of `node`.
pub fn track(
    client: Client,
    node: &str,
    tree: CgroupTree,
    shutdown: CancellationToken,
) -> Result<Tracking, TrackError> {
    let index = Arc::new(ArcSwap::from_pointee(PodIndex::default()));
    let (cgroups_tx, cgroups) = watch::channel(CgroupSet::new());
    let (synced_tx, synced) = watch::channel(false);
    let (fs_tx, fs_rx) = mpsc::unbounded_channel();
    let fs_watcher = watch_parents(&tree, fs_tx)?;
    let pods: Api<KubePod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&format!("{INJECT_LABEL}={INJECT_VALUE}"));
    let stream = watcher(pods, config).default_backoff();
    let mut state = State {
        tree,
        pods: HashMap::new(),
        early: HashMap::new(),
        index: index.clone(),
        cgroups: cgroups_tx,
    };
    tokio::spawn(async move {
        let _fs_watcher = fs_watcher;
        let mut stream = std::pin::pin!(stream);
        let mut fs_rx = fs_rx;
        let mut listing: Option<HashMap<String, KubePod>> = None;
        loop {
            let retry = async {
                if state.pending() {
                    tokio::time::sleep(RETRY).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashMap::new()),
                    Some(Ok(watcher::Event::InitApply(p))) => {
                        if let (Some(l), Some(uid)) = (listing.as_mut(), p.metadata.uid.clone()) {
                            l.insert(uid, p);
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        let listed = listing.take().unwrap_or_default();
                        state.replace(listed);
                        let _ = synced_tx.send(true);
                    }
                    Some(Ok(watcher::Event::Apply(p))) => state.apply(p),
                    Some(Ok(watcher::Event::Delete(p))) => state.delete(&p),
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    None => break,
                },
                Some(dir) = fs_rx.recv() => {
                    state.cgroup_created(dir);
                    // A burst of pods: take every creation already queued before publishing.
                    while let Ok(dir) = fs_rx.try_recv() {
                        state.cgroup_created(dir);
                    }
                }
                () = retry => state.find_pending().await,
                () = shutdown.cancelled() => break,
            }
            state.publish();
        }
    });
    Ok(Tracking {
        index,
        cgroups,
        synced,
    })
}

struct Entry {
    pod: Pod,
    /// When its cgroup appeared (the directory's creation event), if seen.
    appeared: Option<Instant>,
}

struct State {
    tree: CgroupTree,
    pods: HashMap<String, Entry>,
    /// Pod directories created before their pod's event arrived: uid → when.
    early: HashMap<String, Instant>,
    index: Arc<ArcSwap<PodIndex>>,
    cgroups: watch::Sender<CgroupSet>,
}

impl State {
    fn pending(&self) -> bool {
        self.pods.values().any(|e| e.pod.cgroup.is_none())
    }

    /// The complete list after a (re)start of the watch: pods not in it are gone.
    fn replace(&mut self, listed: HashMap<String, KubePod>) {
        self.pods.retain(|uid, _| listed.contains_key(uid));
        for p in listed.into_values() {
            self.apply(p);
        }
    }

    fn apply(&mut self, p: KubePod) {
        let Some(pod) = summarize(&p) else { return };
        if finished(&p) {
            if self.pods.remove(&pod.uid).is_some() {
                tracing::info!(pod = %pod.identity, "pod finished; out of the redirect");
            }
            return;
        }
        match self.pods.get_mut(&pod.uid) {
            Some(e) => {
                // Addresses arrive after scheduling; the cgroup stays as found.
                e.pod.ips = pod.ips;
                e.pod.identity = pod.identity;
            }
            None => {
                let appeared = self.early.remove(&pod.uid);
                let mut entry = Entry { pod, appeared };
                // Its directory may exist already (the agent restarted, or the event was late).
                entry.pod.cgroup = self.tree.find_by_name(&entry.pod.uid);
                if entry.pod.cgroup.is_some() && entry.appeared.is_none() {
                    entry.appeared = Some(Instant::now());
                }
                tracing::info!(pod = %entry.pod.identity, uid = %entry.pod.uid, cgroup = ?entry.pod.cgroup.as_ref().map(|c| &c.path), "labelled pod on this node");
                self.pods.insert(entry.pod.uid.clone(), entry);
            }
        }
    }

    fn delete(&mut self, p: &KubePod) {
        if let Some(uid) = &p.metadata.uid
            && let Some(e) = self.pods.remove(uid)
        {
            tracing::info!(pod = %e.pod.identity, "pod deleted; out of the redirect");
        }
    }

    fn cgroup_created(&mut self, dir: PathBuf) {
        let now = Instant::now();
        let Some(uid) = self.tree.uid_of(&dir) else {
            return;
        };
        match self.pods.get_mut(&uid) {
            Some(e) if e.pod.cgroup.is_none() => {
                e.appeared = Some(now);
                e.pod.cgroup = self.tree.at(&dir);
            }
            Some(_) => {}
            None => {
                if self.early.len() >= EARLY_CGROUPS {
                    self.early
                        .retain(|_, at| at.elapsed() < Duration::from_secs(60));
                }
                if self.early.len() < EARLY_CGROUPS {
                    self.early.insert(uid, now);
                }
            }
        }
    }

    /// Looks again for the pods whose cgroup is not found yet: by name, and for those pending a
    /// while, from their processes (off the runtime's thread: it reads every `/proc/*/cgroup`).
    async fn find_pending(&mut self) {
        let mut slow = Vec::new();
        for e in self.pods.values_mut() {
            if e.pod.cgroup.is_some() {
                continue;
            }
            e.pod.cgroup = self.tree.find_by_name(&e.pod.uid);
            match &e.pod.cgroup {
                Some(c) => {
                    e.appeared.get_or_insert_with(Instant::now);
                    tracing::debug!(pod = %e.pod.identity, cgroup = %c.path.display(), "pod cgroup found");
                }
                None if e.pod.seen.elapsed() >= BY_PROCESS_AFTER => slow.push(e.pod.uid.clone()),
                None => {}
            }
        }
        if slow.is_empty() {
            return;
        }
        let tree = self.tree.clone();
        let found = tokio::task::spawn_blocking(move || {
            let uids: Vec<&str> = slow.iter().map(String::as_str).collect();
            tree.find_by_processes(&uids)
        })
        .await
        .unwrap_or_default();
        for (uid, c) in found {
            if let Some(e) = self.pods.get_mut(&uid)
                && e.pod.cgroup.is_none()
            {
                tracing::info!(pod = %e.pod.identity, cgroup = %c.path.display(), "pod cgroup found from its processes");
                e.appeared.get_or_insert_with(Instant::now);
                e.pod.cgroup = Some(c);
            }
        }
    }

    fn publish(&mut self) {
        let index = PodIndex::new(self.pods.values().map(|e| e.pod.clone()));
        let set: CgroupSet = self
            .pods
            .values()
            .filter_map(|e| {
                e.pod
                    .cgroup
                    .as_ref()
                    .map(|c| (c.id, e.appeared.unwrap_or(e.pod.seen)))
            })
            .collect();
        self.index.store(Arc::new(index));
        self.cgroups.send_if_modified(|current| {
            if *current == set {
                false
            } else {
                *current = set;
                true
            }
        });
    }
}

/// A pod's identity and addresses; `None` for an object without a uid or name.
fn summarize(p: &KubePod) -> Option<Pod> {
    let uid = p.metadata.uid.clone()?;
    let spec = p.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ips = if host_network {
        Vec::new()
    } else {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect()
    };
    Some(Pod {
        uid,
        identity: WorkloadIdentity {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            pod: p.metadata.name.clone()?,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
        },
        ips,
        cgroup: None,
        seen: Instant::now(),
    })
}

/// A pod whose containers are all done for good.
fn finished(p: &KubePod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Sends every directory created in the pods' root or its QoS folders.
fn watch_parents(
    tree: &CgroupTree,
    tx: mpsc::UnboundedSender<PathBuf>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher as _;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(e) = res
            && matches!(e.kind, notify::EventKind::Create(_))
        {
            for p in e.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    for p in tree.parents() {
        w.watch(&p, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}
