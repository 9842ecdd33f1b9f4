//! Stopping the node and leaving the host as start found it. Order matters: controller-manager,
//! scheduler and kube-proxy first (no new pods, no more rule syncs), then every pod is deleted
//! and kubelet tears the sandboxes down through CRI (CNI DEL, veths, IPAM, netns) before kubelet
//! and containerd stop; then leftover tasks and shims, the apiserver and etcd; then
//! kube-proxy's iptables rules (`kube-proxy --cleanup`, then the chains it keeps, then the
//! empty tables iptables-nft made; checked with `iptables-save`), mounts
//! under the state folder, the bridge (with the service route and forwarding on it) and its
//! policy rules, node IP and stale IPAM reservations, the `kubepods` cgroups, the fixed host
//! paths start found absent, the bpf file system start mounted, and the sysctls kubelet and kube-proxy changed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::config;
use super::host::{self, ip};
use super::start::ctr;
use super::{BRIDGE, DirLock, NODE_IP, PROCESSES, Paths};
use crate::process::wait_until;

/// What stop did, for the log.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Processes stopped (`name (pid N)`), `killed` when SIGTERM was not enough.
    pub stopped: Vec<String>,
    pub unmounted: usize,
    pub host_paths_removed: Vec<String>,
    pub sysctls_restored: Vec<String>,
    /// Mounts still there (only after a failure to unmount): `--wipe` refuses to delete then.
    pub mounts_left: Vec<String>,
    /// Whether `kube-proxy --cleanup` ran (only when `iptables-save` showed `KUBE-` chains),
    /// followed by the removal of the chains it leaves.
    pub iptables_cleaned: bool,
    /// nftables tables removed because start did not find them and they are empty now (those
    /// iptables-nft made for kube-proxy's rules).
    pub nft_tables_removed: Vec<String>,
    /// `iptables-save` lines still naming a `KUBE-` chain after the cleanup (should be none).
    pub iptables_left: Vec<String>,
    /// Whether the bpf file system start mounted at `/sys/fs/bpf` was unmounted.
    pub bpffs_unmounted: bool,
}

/// Stops the node in `dir` and cleans the host; `wipe` also deletes etcd's data, containerd's
/// root (imported images), kubelet's folder, IPAM state and `run/` (the PKI and kubeconfigs
/// stay, so tokens and kubeconfigs keep working across runs).
pub fn stop(dir: &Path, wipe: bool) -> Result<StopReport, String> {
    let paths = Paths::new(dir);
    if !dir.exists() {
        return Ok(StopReport::default());
    }
    let _lock = DirLock::take(&paths)?;
    stop_locked(&paths, wipe)
}

fn program(name: &str) -> &'static str {
    PROCESSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or("?")
}

fn stop_process(paths: &Paths, name: &str, grace: Duration, report: &mut StopReport) {
    let pid_file = paths.pid_file(name);
    if let Some(pid) = host::live_pid(&pid_file, program(name)) {
        let killed = host::terminate(pid, program(name), grace);
        report.stopped.push(format!(
            "{name} (pid {pid}){}",
            if killed { " killed" } else { "" }
        ));
    }
    let _ = std::fs::remove_file(pid_file);
}

pub(super) fn stop_locked(paths: &Paths, wipe: bool) -> Result<StopReport, String> {
    let mut report = StopReport::default();
    let alive = |name: &str| host::live_pid(&paths.pid_file(name), program(name)).is_some();
    let grace = Duration::from_secs(10);

    // 1. No new pods, no more rule syncs; delete the pods and let kubelet tear them down
    //    through CRI.
    stop_process(paths, "controller-manager", grace, &mut report);
    stop_process(paths, "scheduler", grace, &mut report);
    stop_process(paths, "kube-proxy", grace, &mut report);
    if alive("apiserver") && alive("kubelet") && alive("containerd") {
        let _ = host::run(
            Command::new("kubectl")
                .env("KUBECONFIG", paths.kubeconfig("admin"))
                .arg("--cache-dir")
                .arg(paths.dir.join("kubectl-cache"))
                .args([
                    "delete",
                    "pods",
                    "--all",
                    "--all-namespaces",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ]),
        );
        // Gone when no task runs and no pod network namespace is mounted (CNI DEL done).
        let left = || {
            let tasks = ctr(paths, &["tasks", "ls", "-q"]).unwrap_or_default();
            (
                tasks.split_whitespace().count(),
                host::mounts_under(&paths.netns_dir()).len(),
            )
        };
        if !wait_until(Duration::from_secs(60), || left() == (0, 0)) {
            let (tasks, netns) = left();
            eprintln!(
                "kube-node: pods not torn down after 60 s ({tasks} tasks, {netns} network namespaces left): removing them by force"
            );
        }
    }
    stop_process(paths, "kubelet", grace, &mut report);

    // 2. Whatever is left in containerd: kill the tasks, delete them and their containers
    //    (their shims exit with them).
    if alive("containerd") {
        let tasks = ctr(paths, &["tasks", "ls", "-q"]).unwrap_or_default();
        for t in tasks.split_whitespace() {
            let _ = ctr(paths, &["tasks", "kill", "-s", "KILL", t]);
        }
        if !tasks.trim().is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
        for t in tasks.split_whitespace() {
            let _ = ctr(paths, &["tasks", "delete", "-f", t]);
        }
        let containers = ctr(paths, &["containers", "ls", "-q"]).unwrap_or_default();
        for c in containers.split_whitespace() {
            let _ = ctr(paths, &["containers", "rm", c]);
        }
    }
    stop_process(paths, "containerd", grace, &mut report);
    // Shims that outlived containerd: only ours, whose -address is our socket.
    for pid in our_shims(paths) {
        host::terminate(pid, "containerd-shim-runc-v2", Duration::from_secs(2));
        report
            .stopped
            .push(format!("containerd-shim-runc-v2 (pid {pid})"));
    }
    stop_process(paths, "apiserver", grace, &mut report);
    stop_process(paths, "etcd", grace, &mut report);

    // 3. kube-proxy's rules (it leaves them when it exits, as it should in a real cluster):
    //    its own cleanup, then the chains that leaves, then the tables iptables-nft made.
    if !host::kube_iptables_lines().is_empty() {
        // Its exit status is 1 without the `ipset` tool (see the command): what matters is
        // what `iptables-save` shows afterwards.
        let _ = host::run(&mut config::kube_proxy_cleanup_command());
        if let Err(e) = host::remove_kube_chains() {
            eprintln!("kube-node: {e}");
        }
        report.iptables_cleaned = true;
    }
    report.iptables_left = host::kube_iptables_lines();
    report.nft_tables_removed =
        host::remove_new_empty_nft_tables(&paths.run().join("nft-tables.before"));

    // 4. Mounts under the state folder (netns, shm, rootfs overlays, kubelet's own bind mount),
    //    and the network namespaces' mount point files, which would look like live pods.
    report.unmounted = host::unmount_under(&paths.dir);
    if let Ok(files) = std::fs::read_dir(paths.netns_dir()) {
        for f in files.filter_map(Result::ok) {
            let _ = std::fs::remove_file(f.path());
        }
    }

    // 5. Veths left on the bridge, the bridge (its routes and settings go with it), its policy
    //    rules, the node IP.
    if let Ok(links) = ip(&["-o", "link", "show", "master", BRIDGE]) {
        for l in links.lines() {
            if let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    let _ = ip(&["link", "del", BRIDGE]);
    // The policy rules name the bridge but outlive it.
    host::delete_bridge_rules();
    let _ = ip(&["addr", "del", &format!("{NODE_IP}/32"), "dev", "lo"]);
    // No pod is left, so any IP still reserved (a sandbox killed without CNI DEL) is stale.
    clear_ipam_reservations(&paths.dir.join("cni/ipam"));

    // 6. kubepods cgroups in every hierarchy.
    host::remove_kubepods_cgroups();

    // 7. Fixed host paths start found absent, and the shims' socket folder.
    report.host_paths_removed =
        host::remove_recorded_host_paths(&paths.run().join("host-paths.created"));
    for d in ["/run/containerd/s", "/run/containerd"] {
        // Only when empty: another containerd may use it.
        let _ = std::fs::remove_dir(d);
    }

    // 8. The bpf file system start mounted (with whatever an agent left pinned there).
    report.bpffs_unmounted = host::unmount_bpffs(&paths.run().join("bpffs.mounted"));

    // 9. Sysctls.
    report.sysctls_restored = host::restore_sysctls(&paths.run().join("sysctl.saved"));

    report.mounts_left = host::mounts_under(&paths.dir)
        .iter()
        .map(|m| m.display().to_string())
        .collect();
    if wipe {
        if !report.mounts_left.is_empty() {
            return Err(format!(
                "not wiping {}: still mounted there: {}",
                paths.dir.display(),
                report.mounts_left.join(" ")
            ));
        }
        for sub in ["etcd-data", "containerd/root", "kubelet", "cni/ipam", "run"] {
            let p = paths.dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    Ok(report)
}

/// Removes host-local's per-IP reservation files (named by the IP) in each network folder.
fn clear_ipam_reservations(ipam: &Path) {
    let Ok(networks) = std::fs::read_dir(ipam) else {
        return;
    };
    for net in networks.filter_map(Result::ok) {
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.filter_map(Result::ok) {
            if f.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}

/// containerd-shim-runc-v2 processes started for our containerd (by their `-address`).
fn our_shims(paths: &Paths) -> Vec<i32> {
    let sock = paths.containerd_socket().display().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock)
        })
        .collect()
}
