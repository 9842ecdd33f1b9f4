//! Starting the node: host network (node IP, pod bridge, the service network's route, bridged
//! frames through iptables), PKI and kubeconfigs (once), then etcd, kube-apiserver, containerd
//! (images imported when missing), kube-controller-manager, kube-scheduler, kube-proxy and
//! kubelet, each detached (its own session) with a pid file and a log, and a wait for a Ready
//! heartbeat from this kubelet (with etcd data kept from an earlier run the Node object says
//! Ready from the start, so an older heartbeat does not count) and for the `kubernetes`
//! Service's ClusterIP to lead to the apiserver (kube-proxy's rules are in).

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::{self, CNI_BIN};
use super::host::{self, ip, run};
use super::pki;
use super::{
    API_PORT, BINARIES, BRIDGE, BRIDGE_MAC, DirLock, ETCD_PORT, IMAGE_ARCHIVES, KubeNode, NODE_IP,
    NODE_NAME, POD_GATEWAY, Paths, SERVICE_CIDR, SERVICE_IP, bin_dir, images_dir, status,
};

/// How long a fresh start took to each point.
#[derive(Debug, Clone)]
pub struct Timings {
    /// containerd answering, with both images present.
    pub containerd_ready: Duration,
    /// Images imported into containerd by this start (a fresh containerd root imports both).
    pub imported: Vec<&'static str>,
    pub apiserver_ready: Duration,
    /// A Ready heartbeat from this kubelet, and the default ServiceAccount there.
    pub node_ready: Duration,
    /// The `kubernetes` Service's ClusterIP answering from the host (kube-proxy's rules in).
    pub services_ready: Duration,
}

/// Programs the node runs or drives, on PATH (kube-proxy runs the iptables ones).
const TOOLS: [&str; 12] = [
    "etcd",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "kubectl",
    "openssl",
    "curl",
    "ip",
    "iptables",
    "iptables-save",
    "iptables-restore",
];

/// Starts the node in `dir` unless it runs already (then only the node is returned, no
/// timings). A partial node (some processes gone) is stopped and started again; a start that
/// fails stops what it started and says why, with the log that tells.
pub fn start(dir: &Path) -> Result<(KubeNode, Option<Timings>), String> {
    let paths = Paths::new(dir);
    preflight()?;
    let _lock = DirLock::take(&paths)?;
    let now = status(dir);
    if now.all_running() && apiserver_ready(&paths) {
        return Ok((KubeNode::at(dir)?, None));
    }
    // A node started before it ran kube-proxy: add kube-proxy rather than restart it all.
    let only_proxy_missing = now
        .processes
        .iter()
        .all(|(name, pid)| pid.is_some() || *name == "kube-proxy");
    if only_proxy_missing && apiserver_ready(&paths) {
        eprintln!(
            "kube-node: the node in {} runs without kube-proxy: starting it",
            dir.display()
        );
        start_kube_proxy(&paths)?;
        return Ok((KubeNode::at(dir)?, None));
    }
    if now.any_running() {
        eprintln!(
            "kube-node: a partial node runs in {}: stopping it first",
            dir.display()
        );
        super::stop::stop_locked(&paths, false)?;
    }
    match start_locked(&paths) {
        Ok(t) => Ok((KubeNode::at(dir)?, Some(t))),
        Err(e) => {
            let _ = super::stop::stop_locked(&paths, false);
            Err(format!(
                "starting the Kubernetes node failed: {e}\n(what had started was stopped again; logs in {})",
                paths.log().display()
            ))
        }
    }
}

/// Root, the binaries, the tools: what is missing, and that `cargo xtask setup` brings it.
fn preflight() -> Result<(), String> {
    if !super::is_root() {
        return Err("the Kubernetes node needs root (kubelet, containerd, links, mounts): run as root, after `cargo xtask setup` has built the node".into());
    }
    let bins = bin_dir();
    let missing: Vec<String> = BINARIES
        .iter()
        .filter(|b| !bins.join(b).is_file())
        .map(|b| b.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the Kubernetes node is not built: {} missing in {}; run `cargo xtask setup` (as root), which builds and caches it (or `cargo xtask node build`)",
            missing.join(", "),
            bins.display()
        ));
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the Kubernetes node needs {} on PATH: run `cargo xtask setup`, which installs them",
            missing.join(", ")
        ));
    }
    if !Path::new(CNI_BIN).join("bridge").is_file() {
        return Err(format!(
            "no CNI plugins in {CNI_BIN}: run `cargo xtask setup`, which installs containernetworking-plugins"
        ));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn start_locked(paths: &Paths) -> Result<Timings, String> {
    let t0 = Instant::now();
    let (run_dir, pki) = (paths.run(), paths.pki());
    for d in [
        run_dir.clone(),
        run_dir.join("containerd"),
        run_dir.join("runc"),
        pki.clone(),
        paths.log(),
        paths.dir.join("cni/net.d"),
        paths.dir.join("cni/ipam"),
        paths.dir.join("containerd"),
        paths.dir.join("kubelet"),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    host::save_sysctls(&run_dir.join("sysctl.saved"))?;
    host::record_absent_host_paths(&run_dir.join("host-paths.created"))?;
    host::record_nft_tables(&run_dir.join("nft-tables.before"))?;
    host::mount_bpffs(&run_dir.join("bpffs.mounted"))?;
    network()?;
    pki::make_pki(&pki)?;
    let admin_token = pki::tokens(&pki)?;
    pki::write_kubeconfigs(paths, &admin_token)?;

    let mut etcd = spawn(paths, "etcd", config::etcd_command(paths))?;
    wait_for(
        paths,
        "etcd healthy",
        Duration::from_secs(30),
        &mut [("etcd", &mut etcd)],
        || {
            run(Command::new("curl")
                .args(["-sf", "-m", "2"])
                .arg(format!("http://127.0.0.1:{ETCD_PORT}/health")))
            .is_ok()
        },
    )?;
    let mut api = spawn(paths, "apiserver", config::apiserver_command(paths))?;
    config::write_containerd_config(paths)?;
    config::write_cni_config(paths)?;
    let mut containerd = spawn(paths, "containerd", config::containerd_command(paths))?;
    wait_for(
        paths,
        "containerd answering",
        Duration::from_secs(30),
        &mut [("containerd", &mut containerd)],
        || ctr(paths, &["version"]).is_ok(),
    )?;
    let imported = import_images(paths)?;
    let containerd_ready = t0.elapsed();
    eprintln!(
        "kube-node: containerd up at +{:.1}s{}",
        containerd_ready.as_secs_f64(),
        if imported.is_empty() {
            String::new()
        } else {
            format!(" (imported {})", imported.join(", "))
        }
    );
    wait_for(
        paths,
        "kube-apiserver ready",
        Duration::from_secs(120),
        &mut [("apiserver", &mut api), ("etcd", &mut etcd)],
        || apiserver_ready(paths),
    )?;
    let apiserver_ready = t0.elapsed();
    eprintln!(
        "kube-node: apiserver ready at +{:.1}s",
        apiserver_ready.as_secs_f64()
    );

    let mut cm = spawn(
        paths,
        "controller-manager",
        config::controller_manager_command(paths),
    )?;
    let mut sched = spawn(paths, "scheduler", config::scheduler_command(paths))?;
    let mut proxy = spawn(paths, "kube-proxy", config::kube_proxy_command(paths))?;
    config::write_kubelet_config(paths)?;
    let kubelet_start = unix_now();
    let mut kubelet = spawn(paths, "kubelet", config::kubelet_command(paths))?;
    let mut watched = [
        ("kubelet", &mut kubelet),
        ("controller-manager", &mut cm),
        ("scheduler", &mut sched),
        ("kube-proxy", &mut proxy),
        ("containerd", &mut containerd),
        ("apiserver", &mut api),
        ("etcd", &mut etcd),
    ];
    wait_for(
        paths,
        &format!("node {NODE_NAME} Ready (a heartbeat from this kubelet)"),
        Duration::from_secs(150),
        &mut watched,
        || node_ready_since(paths, kubelet_start),
    )?;
    // Pods need the default ServiceAccount of their namespace.
    wait_for(
        paths,
        "the default ServiceAccount",
        Duration::from_secs(30),
        &mut watched,
        || api_get(paths, "/api/v1/namespaces/default/serviceaccounts/default").is_ok(),
    )?;
    let node_ready = t0.elapsed();
    eprintln!(
        "kube-node: node {NODE_NAME} Ready at +{:.1}s",
        node_ready.as_secs_f64()
    );
    // kube-proxy first: its log is the one shown on a timeout.
    watched.rotate_left(3);
    wait_for(
        paths,
        &format!("the `kubernetes` Service ({SERVICE_IP}:443) leading to the apiserver"),
        Duration::from_secs(60),
        &mut watched,
        || service_routes(paths),
    )?;
    let services_ready = t0.elapsed();
    Ok(Timings {
        containerd_ready,
        imported,
        apiserver_ready,
        node_ready,
        services_ready,
    })
}

/// Starts kube-proxy alone (on a running node that lacks it) and waits for its rules.
fn start_kube_proxy(paths: &Paths) -> Result<(), String> {
    host::save_sysctls(&paths.run().join("sysctl.saved"))?;
    host::record_nft_tables(&paths.run().join("nft-tables.before"))?;
    network()?;
    pki::make_pki(&paths.pki())?;
    let admin_token = pki::tokens(&paths.pki())?;
    pki::write_kubeconfigs(paths, &admin_token)?;
    let mut proxy = spawn(paths, "kube-proxy", config::kube_proxy_command(paths))?;
    wait_for(
        paths,
        &format!("the `kubernetes` Service ({SERVICE_IP}:443) leading to the apiserver"),
        Duration::from_secs(60),
        &mut [("kube-proxy", &mut proxy)],
        || service_routes(paths),
    )
}

/// Whether the apiserver answers `/readyz` on the `kubernetes` Service's ClusterIP, from the
/// host: kube-proxy's rules are in place.
fn service_routes(paths: &Paths) -> bool {
    run(Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-m", "2", "--cacert"])
        .arg(paths.ca_cert())
        .arg("-H")
        .arg(format!("@{}", paths.pki().join("admin-header").display()))
        .arg(format!("https://{SERVICE_IP}:443/readyz")))
    .is_ok()
}

/// The node IP on `lo` (no `dummy` links in this kernel) and the pod bridge with its gateway
/// address, made here so that the bridge plugin (`isGateway: false`) never turns on
/// `net.ipv4.ip_forward`. Services need three things more:
/// - the bridge hands its frames to iptables (`bridge-nf-call-iptables`), so the reply of a
///   pod whose connection to a ClusterIP kube-proxy DNAT-ed to another pod is un-NAT-ed even
///   though it is bridged;
/// - forwarding on the bridge alone (`net.ipv4.conf.kn-br0.forwarding`; the global switch stays
///   off), since that DNAT-ed packet is routed from the bridge back to the bridge, with no ICMP
///   redirects; and two policy rules so that what comes in from the bridge is routed only back
///   into the pod network: anything else is unreachable (an immediate ICMP error). Pods reach
///   the host's addresses (the local table comes first), each other and Services, nothing
///   beyond;
/// - the service network routed to the bridge, so that the host's connections to a ClusterIP
///   (which kube-proxy's rules rewrite) never leave by the default route.
fn network() -> Result<(), String> {
    let lo = ip(&["-4", "-o", "addr", "show", "dev", "lo"])?;
    if !lo.contains(&format!(" {NODE_IP}/32 ")) {
        ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    }
    if ip(&["link", "show", BRIDGE]).is_err() {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    }
    // addr_assign_type 3: set by hand, so the kernel no longer follows the ports' MACs.
    let assigned = std::fs::read_to_string(format!("/sys/class/net/{BRIDGE}/addr_assign_type"))
        .unwrap_or_default();
    if assigned.trim() != "3" {
        ip(&["link", "set", BRIDGE, "address", BRIDGE_MAC])?;
    }
    let br = ip(&["-4", "-o", "addr", "show", "dev", BRIDGE])?;
    if !br.contains(&format!(" {POD_GATEWAY}/24 ")) {
        ip(&["addr", "add", &format!("{POD_GATEWAY}/24"), "dev", BRIDGE])?;
    }
    ip(&["link", "set", BRIDGE, "up"])?;
    for (key, value) in [("forwarding", "1"), ("send_redirects", "0")] {
        let p = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/{key}");
        std::fs::write(&p, value).map_err(|e| format!("{p}: {e}"))?;
    }
    let rules = ip(&["-4", "rule", "show"])?;
    for (priority, rule) in host::BRIDGE_RULES {
        if !rules
            .lines()
            .any(|l| l.starts_with(&format!("{priority}:")))
        {
            let priority = priority.to_string();
            let mut args = vec!["-4", "rule", "add"];
            args.extend(rule.iter());
            args.extend(["priority", priority.as_str()]);
            ip(&args)?;
        }
    }
    ip(&["route", "replace", SERVICE_CIDR, "dev", BRIDGE])?;
    let nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !nf.is_file() {
        return Err(format!(
            "{} is missing: this kernel lacks br_netfilter, which kube-proxy needs for pod-to-Service traffic on the bridge",
            nf.display()
        ));
    }
    if std::fs::read_to_string(nf).unwrap_or_default().trim() != "1" {
        std::fs::write(nf, "1").map_err(|e| format!("{}: {e}", nf.display()))?;
    }
    Ok(())
}

/// Spawns `cmd` detached: its own session (no signal from this terminal or process reaches
/// it), stdin closed, output to `log/<name>.log`, pid in `run/<name>.pid`.
fn spawn(paths: &Paths, name: &str, mut cmd: Command) -> Result<Child, String> {
    let log_path = paths.log_of(name);
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| format!("{e}"))?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
    let pid_file = paths.pid_file(name);
    std::fs::write(&pid_file, child.id().to_string())
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    Ok(child)
}

/// Polls `ready` (every 250 ms) until it holds; fails when one of `watched` exits (with its
/// log) or after `timeout` (with the first one's log).
fn wait_for(
    paths: &Paths,
    what: &str,
    timeout: Duration,
    watched: &mut [(&str, &mut Child)],
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        for (name, child) in watched.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!(
                    "{name} exited ({st}) while waiting for {what}; the end of {}:\n{}",
                    paths.log_of(name).display(),
                    host::tail(&paths.log_of(name), 25)
                ));
            }
        }
        if Instant::now() > deadline {
            let name = watched.first().map(|(n, _)| *n).unwrap_or("etcd");
            return Err(format!(
                "no {what} after {} s; the end of {}:\n{}",
                timeout.as_secs(),
                paths.log_of(name).display(),
                host::tail(&paths.log_of(name), 25)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `ctr` on the node's containerd, namespace `k8s.io` (where CRI keeps its images).
pub(super) fn ctr(paths: &Paths, args: &[&str]) -> Result<String, String> {
    run(Command::new("ctr")
        .arg("-a")
        .arg(paths.containerd_socket())
        .args(["-n", "k8s.io"])
        .args(args))
}

/// Imports the image archives whose images containerd lacks; returns those imported.
fn import_images(paths: &Paths) -> Result<Vec<&'static str>, String> {
    let have = ctr(paths, &["images", "ls", "-q"])?;
    let mut imported = Vec::new();
    for (image, archive) in IMAGE_ARCHIVES {
        if have.lines().any(|l| l.trim() == image) {
            continue;
        }
        let path = images_dir().join(archive);
        if !path.is_file() {
            return Err(format!(
                "image {image} is not built ({} missing): run `cargo xtask setup` (or `cargo xtask node build`)",
                path.display()
            ));
        }
        ctr(
            paths,
            &[
                "images",
                "import",
                "--all-platforms",
                &path.display().to_string(),
            ],
        )?;
        imported.push(image);
    }
    Ok(imported)
}

/// GET `path` from the apiserver as the admin; the JSON it answers.
pub(super) fn api_get(paths: &Paths, path: &str) -> Result<serde_json::Value, String> {
    let body = run(Command::new("curl")
        .args(["-sf", "-m", "5", "--cacert"])
        .arg(paths.ca_cert())
        .arg("-H")
        .arg(format!("@{}", paths.pki().join("admin-header").display()))
        .arg(format!("https://{NODE_IP}:{API_PORT}{path}")))?;
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))
}

/// Whether `/readyz` answers ok.
pub(super) fn apiserver_ready(paths: &Paths) -> bool {
    run(Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-m", "2", "--cacert"])
        .arg(paths.ca_cert())
        .arg("-H")
        .arg(format!("@{}", paths.pki().join("admin-header").display()))
        .arg(format!("https://{NODE_IP}:{API_PORT}/readyz")))
    .is_ok()
}

/// Whether the Node is Ready with a heartbeat at or after `since` (seconds since the epoch).
fn node_ready_since(paths: &Paths, since: i64) -> bool {
    let Ok(node) = api_get(paths, &format!("/api/v1/nodes/{NODE_NAME}")) else {
        return false;
    };
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .is_some_and(|c| {
            c["status"] == "True"
                && c["lastHeartbeatTime"]
                    .as_str()
                    .and_then(host::parse_utc)
                    .is_some_and(|t| t >= since)
        })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
