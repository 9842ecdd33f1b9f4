//! Workloads: who a connection comes from.
//!
//! In Kubernetes mode the agent keeps an index of the labelled pods of its node ([`PodIndex`]):
//! each pod's identity (namespace, name, ServiceAccount), its addresses and its cgroup
//! ([`cgroups`]). A redirected connection carries the cgroup id the eBPF programs matched; an
//! explicit-proxy connection its source address. [`pods`] keeps the index in step with the API
//! server and the cgroup tree.

pub mod cgroups;
pub mod pods;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use connectors_crd::access::WorkloadIdentity;

pub use cgroups::{CgroupTree, PodCgroup};

/// What the eBPF redirect recorded of a connection's workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The cgroup the redirect matched: the pod's directory in Kubernetes mode, the
    /// connecting task's own cgroup otherwise.
    pub cgroup_id: u64,
    pub netns_cookie: u64,
}

/// Where a redirected connection was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: std::net::SocketAddr,
    pub workload: Option<Workload>,
}

/// A labelled pod of this node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub uid: String,
    pub identity: WorkloadIdentity,
    /// The pod's own addresses (none for a hostNetwork pod: it shares the node's).
    pub ips: Vec<IpAddr>,
    pub cgroup: Option<PodCgroup>,
    /// When the agent first heard of the pod.
    pub seen: Instant,
}

/// The labelled pods of this node, by uid, by cgroup id and by address.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, Arc<Pod>>,
    by_cgroup: HashMap<u64, Arc<Pod>>,
    by_ip: HashMap<IpAddr, Arc<Pod>>,
}

impl PodIndex {
    pub fn new(pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut index = Self::default();
        for pod in pods {
            let pod = Arc::new(pod);
            if let Some(c) = &pod.cgroup {
                index.by_cgroup.insert(c.id, pod.clone());
            }
            for ip in &pod.ips {
                index.by_ip.insert(ip.to_canonical(), pod.clone());
            }
            index.pods.insert(pod.uid.clone(), pod);
        }
        index
    }

    pub fn by_cgroup(&self, id: u64) -> Option<&Arc<Pod>> {
        self.by_cgroup.get(&id)
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Pod>> {
        self.by_ip.get(&ip.to_canonical())
    }

    pub fn by_uid(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.pods.get(uid)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn pods(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods.values()
    }

    /// The cgroup ids under the redirect.
    pub fn cgroup_ids(&self) -> BTreeSet<u64> {
        self.by_cgroup.keys().copied().collect()
    }

    /// The namespaces of the pods.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.pods
            .values()
            .map(|p| p.identity.namespace.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pod(uid: &str, ns: &str, ip: &str, cgroup: Option<u64>) -> Pod {
        Pod {
            uid: uid.into(),
            identity: WorkloadIdentity {
                namespace: ns.into(),
                pod: format!("p-{uid}"),
                service_account: "default".into(),
            },
            ips: vec![ip.parse().unwrap()],
            cgroup: cgroup.map(|id| PodCgroup {
                path: PathBuf::from(format!("/sys/fs/cgroup/kubepods/pod{uid}")),
                id,
                found_by: cgroups::FoundBy::Name,
            }),
            seen: Instant::now(),
        }
    }

    #[test]
    fn pods_are_found_by_cgroup_and_address() {
        let i = PodIndex::new([
            pod("a", "x", "10.0.0.1", Some(7)),
            pod("b", "y", "10.0.0.2", None),
        ]);
        assert_eq!(i.by_cgroup(7).unwrap().uid, "a");
        assert!(i.by_cgroup(8).is_none());
        assert_eq!(i.by_ip("10.0.0.2".parse().unwrap()).unwrap().uid, "b");
        assert_eq!(
            i.by_ip("::ffff:10.0.0.1".parse().unwrap()).unwrap().uid,
            "a"
        );
        assert_eq!(i.cgroup_ids().into_iter().collect::<Vec<_>>(), vec![7]);
        assert_eq!(i.namespaces().len(), 2);
    }
}
