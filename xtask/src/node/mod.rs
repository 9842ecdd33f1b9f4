//! `cargo xtask node build|start|stop|status|smoke`: a real single-node Kubernetes v1.20.2
//! (kubelet, containerd, runc, bridge CNI, kube-proxy, scheduler, controller-manager, apiserver,
//! etcd) on this machine, for the Kubernetes-mode end-to-end tests.
//!
//! - `build` ([`build`], [`images`]): binaries and images, once, into `~/.cache/kube-node`
//!   (`cargo xtask setup` runs it).
//! - `start`: builds what is missing, then starts the node detached (state in `/tmp/kube-node`,
//!   `--dir` or `$CONNECTORS_KUBE_NODE_DIR`) and prints the admin kubeconfig's path; a no-op
//!   when it runs. The start itself is `connectors_tests::node::start`, the same code the tests'
//!   `KubeNode::shared()` runs.
//! - `stop [--wipe]`: stops it and cleans the host (kube-proxy's iptables rules included: it
//!   fails when `iptables-save` still shows a `KUBE-` chain); `--wipe` also drops etcd,
//!   containerd, kubelet and IPAM state (the PKI stays).
//! - `status`: what runs; fails when the node does not.
//! - `smoke` ([`smoke`]): Pod, Job, hostNetwork DaemonSet, ServiceAccount token (on the node IP
//!   and through the `kubernetes` Service), pod cgroup v2 folder and network namespace, on the
//!   running node (started first if needed).

pub mod build;
pub mod images;
mod smoke;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, Subcommand};
use connectors_tests::node::{self, KubeNode};

/// Debian packages running the node needs (beyond `kube::RUN_PACKAGES`: etcd, curl): the
/// container runtime and CNI plugins, `ctr`, `ip`, `nsenter`, `openssl` for the PKI, iptables
/// and conntrack for kube-proxy.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iproute2",
    "util-linux",
    "openssl",
    "curl",
    "iptables",
    "conntrack",
];

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    what: NodeCommand,
}

#[derive(Args)]
struct DirArg {
    /// The node's state folder (default: $CONNECTORS_KUBE_NODE_DIR, else /tmp/kube-node).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(node::default_dir)
    }
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Build the five binaries and the two images unless cached (only what is missing).
    Build {
        /// Build again even what is cached.
        #[arg(long)]
        force: bool,
    },
    /// Start the node (a no-op when it runs); prints the admin kubeconfig.
    Start(DirArg),
    /// Stop the node and clean the host.
    Stop {
        #[command(flatten)]
        dir: DirArg,
        /// Also delete etcd data, containerd's root, kubelet's folder and IPAM state.
        #[arg(long)]
        wipe: bool,
    },
    /// Show what runs; fails when the node does not run.
    Status(DirArg),
    /// Check the node end to end (starts it first if needed).
    Smoke {
        #[command(flatten)]
        dir: DirArg,
        /// Keep the smoke namespace (default: deleted when every check passed).
        #[arg(long)]
        keep: bool,
    },
}

pub fn run(args: &NodeArgs) -> anyhow::Result<()> {
    match &args.what {
        NodeCommand::Build { force } => {
            let bin = build::build(*force)?;
            println!("{}", bin.display());
            Ok(())
        }
        NodeCommand::Start(d) => {
            let node = start(&d.dir())?;
            println!("{}", node.kubeconfig.display());
            Ok(())
        }
        NodeCommand::Stop { dir, wipe } => stop(&dir.dir(), *wipe),
        NodeCommand::Status(d) => status(&d.dir()),
        NodeCommand::Smoke { dir, keep } => {
            let node = start(&dir.dir())?;
            smoke::run(&node, *keep)
        }
    }
}

/// Builds what is missing, then starts the node unless it runs.
pub fn start(dir: &std::path::Path) -> anyhow::Result<KubeNode> {
    build::build(false)?;
    let t = Instant::now();
    let (node, timings) = node::start(dir).map_err(anyhow::Error::msg)?;
    match timings {
        None => eprintln!("kube-node: already running in {}", dir.display()),
        Some(t0) => eprintln!(
            "kube-node: started in {:.1} s (containerd {:.1} s, apiserver {:.1} s, Ready {:.1} s, Services {:.1} s); stop with `cargo xtask node stop`",
            t.elapsed().as_secs_f64(),
            t0.containerd_ready.as_secs_f64(),
            t0.apiserver_ready.as_secs_f64(),
            t0.node_ready.as_secs_f64(),
            t0.services_ready.as_secs_f64()
        ),
    }
    Ok(node)
}

/// Stops the node in `dir` and says what it did.
pub fn stop(dir: &std::path::Path, wipe: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let report = node::stop(dir, wipe).map_err(anyhow::Error::msg)?;
    if report.stopped.is_empty() {
        eprintln!("kube-node: nothing was running in {}", dir.display());
    } else {
        eprintln!("kube-node: stopped {}", report.stopped.join(", "));
    }
    if report.unmounted > 0 {
        eprintln!("kube-node: unmounted {} mounts", report.unmounted);
    }
    for s in &report.sysctls_restored {
        eprintln!("kube-node: restored {s}");
    }
    if !report.host_paths_removed.is_empty() {
        eprintln!(
            "kube-node: removed {}",
            report.host_paths_removed.join(", ")
        );
    }
    if report.iptables_cleaned {
        eprintln!("kube-node: removed kube-proxy's iptables rules and chains");
    }
    if !report.nft_tables_removed.is_empty() {
        eprintln!(
            "kube-node: removed the empty nftables tables start had not found: {}",
            report.nft_tables_removed.join(", ")
        );
    }
    if !report.mounts_left.is_empty() {
        bail!("still mounted: {}", report.mounts_left.join(" "));
    }
    if !report.iptables_left.is_empty() {
        bail!(
            "iptables still has kube-proxy's chains after the cleanup:\n{}",
            report.iptables_left.join("\n")
        );
    }
    eprintln!(
        "kube-node: stopped in {:.1} s{}",
        t.elapsed().as_secs_f64(),
        if wipe { ", state wiped" } else { "" }
    );
    Ok(())
}

fn status(dir: &std::path::Path) -> anyhow::Result<()> {
    let s = node::status(dir);
    for (name, pid) in &s.processes {
        match pid {
            Some(pid) => println!("{name:<20} running (pid {pid})"),
            None => println!("{name:<20} not running"),
        }
    }
    if !s.all_running() {
        bail!(
            "the node in {} is not running: `cargo xtask node start`",
            dir.display()
        );
    }
    let node = KubeNode::at(dir).map_err(anyhow::Error::msg)?;
    let nodes = node
        .kubectl_ok(&["get", "nodes", "-o", "wide"])
        .map_err(anyhow::Error::msg)?;
    print!("{nodes}");
    println!("KUBECONFIG={}", node.kubeconfig.display());
    Ok(())
}
