//! A real single-node Kubernetes v1.20.2 on this machine, for the Kubernetes-mode end-to-end
//! tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd 1.6 (CRI
//! v1alpha2, runc, cgroupfs driver), a bridge CNI network, a kubelet and kube-proxy (iptables
//! mode). Pods are real: a pause sandbox and a network namespace each, and per-pod cgroup v2
//! directories under `/sys/fs/cgroup/unified/kubepods` (runc joins every container to the
//! unified hierarchy of this machine's hybrid cgroup layout).
//!
//! `cargo xtask setup` (or `cargo xtask node build`) builds the five binaries and the two images
//! once into `~/.cache/kube-node`. [`start`] runs the node detached, its state in `/tmp/kube-node`
//! (`$CONNECTORS_KUBE_NODE_DIR`), and is a no-op when it runs already; [`stop`] stops it and
//! leaves the host as it found it (kube-proxy's iptables rules included: `kube-proxy --cleanup`,
//! then a check that no `KUBE-` chain is left). [`KubeNode::shared`] gives a test the running
//! node, starting it first when needed, so test binaries and `cargo xtask test` share one node; a
//! lock file in the state folder serialises starts and stops across processes.
//!
//! Addresses: node IP 198.18.0.1/32 on `lo`; pods 198.19.0.0/24 on bridge `kn-br0` (gateway
//! 198.19.0.1); services 198.19.128.0/24. kube-proxy (iptables mode) makes ClusterIPs route,
//! from pods and from the host (so from hostNetwork pods too): the `kubernetes` Service
//! (198.19.128.1:443) leads to the apiserver, so in-cluster clients work with the environment
//! the kubelet injects. Pods reach the host's addresses, each other and Services, nothing else:
//! the global `net.ipv4.ip_forward` stays off; the bridge alone forwards (a pod's connection to
//! a ClusterIP whose endpoint is another pod is routed back into the bridge), its frames pass
//! through iptables (`net.bridge.bridge-nf-call-iptables=1`, so the bridged reply is un-NAT-ed),
//! and two policy rules (priorities 17400-17401) route what comes from the bridge only back into
//! the pod network, anything else being unreachable at once. Start sets all this up, stop
//! removes it. There is no cluster DNS (no CoreDNS image): reach a Service by its ClusterIP, or
//! by the `<NAME>_SERVICE_HOST`/`_PORT` variables of pods created after it.
//! Ports: apiserver 17443, controller-manager 17444, scheduler 17445, kubelet 17446 (healthz
//! 17447), kube-proxy healthz 17448 and metrics 17449 (on 127.0.0.1), etcd 17379-17381; none
//! clash with the test apiserver of [`crate::kube`] (free ephemeral ports).
//!
//! Images cannot be pulled here: pods use [`TOOLS_IMAGE`] (Debian bookworm with git, curl,
//! iproute2, procps, perl-base) with `imagePullPolicy: Never`, or the project's own
//! [`AGENT_IMAGE`] and [`CONTROLLER_IMAGE`], built by `cargo xtask image` and imported with
//! [`KubeNode::import_images`] (what `cargo xtask image --import` runs).

mod config;
mod host;
mod images;
mod pki;
mod pods;
mod start;
mod stop;

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use host::{mounts_under, unmount_under};
pub use images::{
    AGENT_IMAGE, CONTROLLER_IMAGE, IMAGE_REPOSITORY, IMAGE_VERSION, ImportedImage, PROJECT_IMAGES,
    ProjectImage, archive_digest, image_digest, import_images, import_project_images,
    project_images_dir, target_dir, workspace_root,
};
pub use pods::{PodCgroup, tools_pod_yaml};
pub use start::{Timings, start};
pub use stop::{StopReport, stop};

/// The Kubernetes version of the node.
pub const VERSION: &str = "v1.20.2";
/// The binaries built from Debian's `kubernetes` source package, cached in [`bin_dir`]
/// (`cargo xtask node build` builds only those missing).
pub const BINARIES: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];
/// The Node object's name.
pub const NODE_NAME: &str = "kn-node";
/// The node's address (a /32 on `lo`: this kernel has no `dummy` links).
pub const NODE_IP: &str = "198.18.0.1";
/// kube-apiserver's port on [`NODE_IP`]; the controller-manager, scheduler, kubelet, kubelet
/// healthz, kube-proxy healthz and kube-proxy metrics use the next six.
pub const API_PORT: u16 = 17443;
/// etcd's client port on 127.0.0.1; peer and metrics use the next two.
pub const ETCD_PORT: u16 = 17379;
/// The pod network, on bridge [`BRIDGE`].
pub const POD_CIDR: &str = "198.19.0.0/24";
/// The bridge's address, the pods' default gateway.
pub const POD_GATEWAY: &str = "198.19.0.1";
/// The service network (ClusterIPs, routed by kube-proxy).
pub const SERVICE_CIDR: &str = "198.19.128.0/24";
/// The `kubernetes` Service's ClusterIP (in the apiserver's certificate); port 443.
pub const SERVICE_IP: &str = "198.19.128.1";
/// The pod bridge.
pub const BRIDGE: &str = "kn-br0";
/// The bridge's fixed MAC: without one it takes the lowest MAC of its ports, which changes as
/// pods come and go, and running pods' connections stall on the stale gateway entry.
pub const BRIDGE_MAC: &str = "02:6b:6e:00:00:01";
/// The sandbox image (a static `pause` from the Kubernetes source).
pub const PAUSE_IMAGE: &str = "kn.local/pause:3.4";
/// The image for test pods: Debian bookworm minbase, git, curl, ca-certificates, iproute2, procps.
pub const TOOLS_IMAGE: &str = "kn.local/tools:1";
/// The image archives in [`images_dir`], by image.
pub const IMAGE_ARCHIVES: [(&str, &str); 2] =
    [(PAUSE_IMAGE, "pause.tar"), (TOOLS_IMAGE, "tools.tar")];

/// The node's processes in start order, with their program names.
pub const PROCESSES: [(&str, &str); 7] = [
    ("etcd", "etcd"),
    ("apiserver", "kube-apiserver"),
    ("containerd", "containerd"),
    ("controller-manager", "kube-controller-manager"),
    ("scheduler", "kube-scheduler"),
    ("kube-proxy", "kube-proxy"),
    ("kubelet", "kubelet"),
];

/// The cache: `$CONNECTORS_KUBE_NODE_CACHE`, else `~/.cache/kube-node`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CONNECTORS_KUBE_NODE_CACHE") {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/kube-node")
}

/// The binaries of [`BINARIES`].
pub fn bin_dir() -> PathBuf {
    cache_dir().join("bin")
}

/// The image archives (OCI layouts in tar files).
pub fn images_dir() -> PathBuf {
    cache_dir().join("images")
}

/// The node's state folder: `$CONNECTORS_KUBE_NODE_DIR`, else `/tmp/kube-node`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CONNECTORS_KUBE_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/kube-node"))
}

/// Where things are in a state folder.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    /// Pid files, containerd's state and socket, runc's root, saved host settings.
    pub fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    /// One log per process, `<name>.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn log_of(&self, process: &str) -> PathBuf {
        self.log().join(format!("{process}.log"))
    }
    pub fn pid_file(&self, process: &str) -> PathBuf {
        self.run().join(format!("{process}.pid"))
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.run().join("containerd/containerd.sock")
    }
    /// Where CRI bind-mounts the pods' network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.run()
            .join("containerd/io.containerd.grpc.v1.cri/netns")
    }
    /// `admin`, `alice` (no rights), `kubelet`, `controller-manager`, `scheduler`, `kube-proxy`.
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }
    fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
}

/// The running node, as tests and tasks use it.
#[derive(Clone, Debug)]
pub struct KubeNode {
    pub paths: Paths,
    /// The admin kubeconfig (a token of `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://198.18.0.1:17443`
    pub url: String,
    /// The CA of every certificate of the node (apiserver, kubelet, clients).
    pub ca_cert: PathBuf,
    pub admin_token: String,
    pub node_name: String,
    pub node_ip: String,
}

impl KubeNode {
    /// The node for this test process: started (detached, shared with other processes) unless it
    /// runs already. Fails the test, naming `cargo xtask setup`, when it cannot be had.
    pub fn shared() -> &'static KubeNode {
        static NODE: OnceLock<Result<KubeNode, String>> = OnceLock::new();
        match NODE.get_or_init(|| Self::ensure_running(&default_dir())) {
            Ok(node) => node,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts the node in `dir` unless it runs already.
    pub fn ensure_running(dir: &Path) -> Result<KubeNode, String> {
        start(dir).map(|(node, _)| node)
    }

    /// The node in `dir` as it is: its files, whether or not it runs.
    pub fn at(dir: &Path) -> Result<KubeNode, String> {
        let paths = Paths::new(dir);
        let tokens = std::fs::read_to_string(paths.pki().join("tokens.csv")).map_err(|e| {
            format!(
                "no node in {} ({e}): start it with `cargo xtask node start`",
                dir.display()
            )
        })?;
        let admin_token = tokens
            .lines()
            .find(|l| l.contains(",admin,"))
            .and_then(|l| l.split(',').next())
            .ok_or_else(|| format!("{}/pki/tokens.csv has no admin token", dir.display()))?
            .to_owned();
        Ok(KubeNode {
            kubeconfig: paths.kubeconfig("admin"),
            url: format!("https://{NODE_IP}:{API_PORT}"),
            ca_cert: paths.ca_cert(),
            admin_token,
            node_name: NODE_NAME.into(),
            node_ip: NODE_IP.into(),
            paths,
        })
    }

    /// Environment for in-cluster clients in pods that should reach the apiserver on the node
    /// IP rather than through the `kubernetes` Service (container env overrides what kubelet
    /// injects). No longer needed since the node runs kube-proxy (the injected
    /// `KUBERNETES_SERVICE_HOST`, the ClusterIP, routes); kept for pods that must not depend on
    /// Service routing.
    pub fn in_cluster_env(&self) -> [(&'static str, String); 2] {
        [
            ("KUBERNETES_SERVICE_HOST", self.node_ip.clone()),
            ("KUBERNETES_SERVICE_PORT", API_PORT.to_string()),
        ]
    }
}

/// What runs, by pid file.
#[derive(Debug)]
pub struct Status {
    /// Each process of [`PROCESSES`] with its pid when it is alive.
    pub processes: Vec<(&'static str, Option<i32>)>,
}

impl Status {
    pub fn all_running(&self) -> bool {
        self.processes.iter().all(|(_, p)| p.is_some())
    }
    pub fn any_running(&self) -> bool {
        self.processes.iter().any(|(_, p)| p.is_some())
    }
}

/// The node's processes in `dir`, alive or not (a pid whose process is gone, a zombie, or
/// another program counts as not alive).
pub fn status(dir: &Path) -> Status {
    let paths = Paths::new(dir);
    Status {
        processes: PROCESSES
            .iter()
            .map(|(name, program)| (*name, host::live_pid(&paths.pid_file(name), program)))
            .collect(),
    }
}

/// Whether this process runs as root (the node needs it: kubelet, containerd, links, mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive lock on the state folder, held while starting or stopping.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn take(paths: &Paths) -> Result<Self, String> {
        std::fs::create_dir_all(&paths.dir).map_err(|e| format!("{}: {e}", paths.dir.display()))?;
        let f =
            File::create(paths.lock()).map_err(|e| format!("{}: {e}", paths.lock().display()))?;
        // SAFETY: flock on a descriptor this value owns; it is released when the file closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {}: {}",
                paths.lock().display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self { _file: f })
    }
}
