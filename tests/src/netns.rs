//! Simulated pods for the privileged tests: a network namespace + a veth pair + a cgroup v2
//! directory, on a "lab" network of test-only addresses.
//!
//! Addresses are only taken from 198.18.0.0/15 and fd00::/8 and only assigned to interfaces
//! created here. Each [`Lab`] holds a machine-wide lease on an index `k` (a file under
//! `/run/connectors-tests`, freed on drop or reclaimed once its process is gone), so tests and
//! benchmarks running at the same time never share names or addresses:
//!
//! - the node (the agent's side, in the host's namespace): a veth pair `cx<k>n`/`cx<k>m` holding
//!   `198.18.<k>.<n>/32` and `fd00:0:<k>::<n>/128` (the proxy at `.254`, tools below);
//! - pod `p`: namespace `cx<k>p<p>`, veth `cx<k>h<p>` (host) / `eth0` (pod) with
//!   `198.19.<k>.<4p+1|4p+2>/30` and `fd00:1:<k>:<p>::1|2/64`, default routes to the host, and
//!   cgroup `<cgroup2>/cx-<k>-<p>`.
//!
//! Everything is removed on drop, also when a test fails.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{require_tool, run, run_ok, wait_until};

const LEASE_DIR: &str = "/run/connectors-tests";

/// Fails the test, saying why, unless it runs with the privileges a simulated pod needs.
pub fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this is a privileged test: it creates network namespaces, veths and cgroups and attaches \
         eBPF programs, so it must run as root (CI runs it as root through `cargo xtask test`; \
         locally: `sudo -E cargo test -p connectors-tests --test redirect`). It never skips."
    );
    for tool in ["ip", "sh"] {
        require_tool(tool);
    }
    assert!(
        cgroup2_root().is_some(),
        "no cgroup v2 file system is mounted (looked for cgroup2 in /proc/self/mountinfo)"
    );
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` (unified hosts) or `/sys/fs/cgroup/unified`
/// (hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A test network: the node's addresses and a lease on its index.
pub struct Lab {
    pub k: u8,
    node_link: String,
    lease: PathBuf,
}

impl Lab {
    /// Takes a free index and creates the node link with the proxy address.
    pub fn new() -> Self {
        require_privileges();
        let (k, lease) = take_lease();
        let lab = Self {
            k,
            node_link: format!("cx{k}n"),
            lease,
        };
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &lab.node_link,
            "type",
            "veth",
            "peer",
            "name",
            &format!("cx{k}m"),
        ]));
        for link in [lab.node_link.clone(), format!("cx{k}m")] {
            run_ok(Command::new("ip").args(["link", "set", &link, "up"]));
        }
        lab.node_ip4(254);
        lab.node_ip6(254);
        lab
    }

    /// `198.18.<k>.<n>`, assigned to the node (tools listen there; `.254` is the proxy).
    pub fn node_ip4(&self, n: u8) -> Ipv4Addr {
        let ip = Ipv4Addr::new(198, 18, self.k, n);
        self.assign(IpAddr::V4(ip));
        ip
    }

    /// `fd00:0:<k>::<n>`, assigned to the node.
    pub fn node_ip6(&self, n: u8) -> Ipv6Addr {
        let ip = Ipv6Addr::new(0xfd00, 0, u16::from(self.k), 0, 0, 0, 0, u16::from(n));
        self.assign(IpAddr::V6(ip));
        ip
    }

    fn assign(&self, ip: IpAddr) {
        let exists =
            run_ok(Command::new("ip").args(["-br", "addr", "show", "dev", &self.node_link]))
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(&ip.to_string()));
        if exists {
            return;
        }
        let cidr = match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        };
        let mut cmd = Command::new("ip");
        cmd.args(["addr", "add", &cidr, "dev", &self.node_link]);
        if ip.is_ipv6() {
            cmd.arg("nodad");
        }
        run_ok(&mut cmd);
    }

    /// Pod `p` (0..=62): namespace, veth, addresses, routes, cgroup.
    pub fn pod(&self, p: u8) -> Pod {
        assert!(p <= 62, "pod index {p} out of range");
        let k = self.k;
        let netns = format!("cx{k}p{p}");
        let host_link = format!("cx{k}h{p}");
        let cgroup = cgroup2_root()
            .expect("cgroup v2")
            .join(format!("cx-{k}-{p}"));
        let pod = Pod {
            netns: netns.clone(),
            host_link: host_link.clone(),
            cgroup: cgroup.clone(),
            ip4: Ipv4Addr::new(198, 19, k, 4 * p + 2),
            gw4: Ipv4Addr::new(198, 19, k, 4 * p + 1),
            ip6: Ipv6Addr::new(0xfd00, 1, u16::from(k), u16::from(p), 0, 0, 0, 2),
            gw6: Ipv6Addr::new(0xfd00, 1, u16::from(k), u16::from(p), 0, 0, 0, 1),
        };
        // Created before the rest so that Drop cleans up whatever a failure leaves behind.
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", cgroup.display()));
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args));
        };
        let in_ns = |args: &[&str]| {
            run_ok(Command::new("ip").args(["-n", &netns]).args(args));
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{}/30", pod.gw4), "dev", &host_link]);
        ip(&[
            "addr",
            "add",
            &format!("{}/64", pod.gw6),
            "dev",
            &host_link,
            "nodad",
        ]);
        ip(&["link", "set", &host_link, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["addr", "add", &format!("{}/30", pod.ip4), "dev", "eth0"]);
        in_ns(&[
            "addr",
            "add",
            &format!("{}/64", pod.ip6),
            "dev",
            "eth0",
            "nodad",
        ]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["route", "add", "default", "via", &pod.gw4.to_string()]);
        in_ns(&["-6", "route", "add", "default", "via", &pod.gw6.to_string()]);
        pod
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", &self.node_link]));
        let _ = std::fs::remove_file(&self.lease);
    }
}

/// Takes the first free lab index (1..=250), reclaiming those whose process is gone.
fn take_lease() -> (u8, PathBuf) {
    std::fs::create_dir_all(LEASE_DIR).expect("lease folder");
    let me = std::process::id();
    // The lease appears with its content at once (a hard link of a finished file), so nobody
    // ever reads a lease without its owner.
    let token = format!(
        "{me} {:?}-{}",
        std::thread::current().id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let mine = Path::new(LEASE_DIR).join(format!(".{}", token.replace(' ', "-")));
    let write_mine = || {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&mine)
            .expect("lease file");
        write!(f, "{token}").expect("write lease");
    };
    write_mine();
    let create = |path: &Path| std::fs::hard_link(&mine, path);
    // Replacing a stale lease: whoever renamed last owns it; the others see another token.
    let replace = |path: &Path| {
        let ok = std::fs::rename(&mine, path).is_ok()
            && std::fs::read_to_string(path).is_ok_and(|t| t == token);
        write_mine();
        ok
    };
    let mut found = None;
    for k in 1..=250u8 {
        let path = Path::new(LEASE_DIR).join(format!("lab-{k}"));
        let taken = match create(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner: Option<i32> = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok());
                // SAFETY: signal 0 only checks whether the process exists.
                let alive = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
                // Stale (its holder died without cleaning up): take it over.
                !alive && replace(&path)
            }
            Err(e) => panic!("cannot create {}: {e}", path.display()),
        };
        if taken {
            found = Some((k, path));
            break;
        }
    }
    let _ = std::fs::remove_file(&mine);
    let (k, path) = found.unwrap_or_else(|| panic!("no free lab index in {LEASE_DIR}"));
    remove_leftovers(k);
    (k, path)
}

/// Removes what a killed run with index `k` may have left: its servers and agents (found by
/// the lab addresses their sockets are bound to), namespaces, links and cgroups.
fn remove_leftovers(k: u8) {
    let holders = socket_holders(k);
    for pid in &holders {
        // SAFETY: signalling a process; no memory is involved.
        unsafe {
            libc::kill(*pid, libc::SIGTERM);
        }
    }
    wait_until(Duration::from_secs(3), || {
        // SAFETY: signal 0 only checks whether the process exists.
        holders
            .iter()
            .all(|pid| unsafe { libc::kill(*pid, 0) } != 0)
    });
    let _ = run(Command::new("ip").args(["link", "del", &format!("cx{k}n")]));
    let prefix = format!("cx{k}p");
    if let Ok(list) = std::fs::read_dir("/run/netns") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
            {
                let _ = run(Command::new("ip").args(["netns", "del", &name]));
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
            }
        }
    }
    if let Some(root) = cgroup2_root()
        && let Ok(list) = std::fs::read_dir(&root)
    {
        let prefix = format!("cx-{k}-");
        for e in list.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                remove_cgroup(&e.path());
            }
        }
    }
}

/// Processes of this network namespace with TCP sockets on lab `k`'s addresses.
fn socket_holders(k: u8) -> Vec<i32> {
    let ours = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && (o[1] == 18 || o[1] == 19) && o[2] == k
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd00 && s[1] <= 1 && s[2] == u16::from(k)
        }
    };
    let mut inodes = std::collections::HashSet::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let Some((hex, _port)) = local.split_once(':') else {
                continue;
            };
            // The kernel prints each 32-bit word of the address as a native-endian number.
            let words: Vec<u32> = (0..hex.len() / 8)
                .filter_map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
                .collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let ip = match (v6, bytes.len()) {
                (false, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                (true, 16) => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&bytes);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                _ => continue,
            };
            if ours(ip.to_canonical()) && *inode != "0" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|t| inodes.contains(t.to_string_lossy().as_ref()))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// Kills what runs in a cgroup, then removes it.
fn remove_cgroup(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
    });
    let _ = std::fs::remove_dir(path);
}

/// A simulated pod.
pub struct Pod {
    pub netns: String,
    pub cgroup: PathBuf,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub gw4: Ipv4Addr,
    pub gw6: Ipv6Addr,
    host_link: String,
}

impl Pod {
    /// The pod's `/etc/hosts` (`ip name...` lines), bind-mounted by `ip netns exec`.
    pub fn hosts(&self, entries: &[(IpAddr, &str)]) {
        let dir = Path::new("/etc/netns").join(&self.netns);
        std::fs::create_dir_all(&dir).expect("/etc/netns folder");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {names}\n"));
        }
        std::fs::write(dir.join("hosts"), text).expect("pod hosts file");
    }

    /// `cmd` (program, arguments, environment, folder) run by a process of the pod: it joins the
    /// pod's cgroup, then enters its network namespace. (`ip netns exec` remounts /sys, hence
    /// this order.)
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@""#)
            .arg("sh")
            .arg(&self.cgroup);
        self.finish(c, cmd)
    }

    /// `cmd` run in the pod's network namespace but outside its cgroup (a process the redirect
    /// does not cover).
    pub fn wrap_outside_cgroup(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]);
        self.finish(c, cmd)
    }

    fn finish(&self, mut c: Command, cmd: &Command) -> Command {
        c.arg(&self.netns)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            c.current_dir(dir);
        }
        c
    }

    /// Sets a (network-namespaced) sysctl in the pod, e.g. `net.ipv4.tcp_rmem`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.netns, "sh", "-c"])
                .arg(format!("echo '{value}' > {path}")),
        );
    }

    /// The host side of the pod's veth.
    pub fn host_link(&self) -> String {
        self.host_link.clone()
    }

    /// Removes the pod's cgroup (killing what runs in it), as when a pod ends.
    pub fn remove_cgroup(&self) {
        remove_cgroup(&self.cgroup);
        assert!(
            !self.cgroup.exists(),
            "cgroup {} is still there",
            self.cgroup.display()
        );
    }

    /// Creates the pod's cgroup again (a new pod at the same path).
    pub fn recreate_cgroup(&self) {
        std::fs::create_dir(&self.cgroup).expect("create cgroup");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_cgroup(&self.cgroup);
        let _ = run(Command::new("ip").args(["netns", "del", &self.netns]));
        let _ = run(Command::new("ip").args(["link", "del", &self.host_link]));
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.netns));
    }
}
