//! The host side of the node: processes by pid file, sysctls kubelet changes, the fixed host
//! paths kubelet 1.20 and containerd write to, mounts, links, cgroups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{BRIDGE, POD_CIDR};
use crate::process::wait_until;

/// Sysctls kubelet (`protectKernelDefaults: false`), kube-proxy, the CNI plugins or start may
/// change; saved at the first start and restored by stop. Kubelet sets `kernel.panic=10`,
/// `kernel.panic_on_oops=1` and `vm.overcommit_memory=1`; kube-proxy (iptables mode) sets
/// `net.ipv4.conf.all.route_localnet=1`; start sets `net.bridge.bridge-nf-call-iptables=1`.
pub const SYSCTLS: [&str; 9] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
];

/// Paths outside the state folder that kubelet 1.20 and containerd 1.6 write to whatever their
/// configuration says: pod logs, the device-plugin socket, libcni's result cache, the default
/// flexvolume folder (moved by start, kept as a backstop). Start records those that were absent,
/// stop removes exactly those.
pub const FIXED_HOST_PATHS: [&str; 5] = [
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/usr/libexec/kubernetes",
];

/// The pid in `pid_file` when that process is alive (not a zombie) and runs `program`.
pub fn live_pid(pid_file: &Path, program: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid, program).then_some(pid)
}

/// Whether `pid` is a live process (not a zombie) whose program's file name is `program`.
pub fn alive(pid: i32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(&*String::from_utf8_lossy(argv0))
        .file_name()
        .is_some_and(|n| n == program)
}

/// SIGTERM, then SIGKILL after `grace`; returns whether it had to kill.
pub fn terminate(pid: i32, program: &str, grace: Duration) -> bool {
    if !alive(pid, program) {
        return false;
    }
    // SAFETY: a signal to a process of the node (its pid file and program checked).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    if wait_until(grace, || !alive(pid, program)) {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(5), || !alive(pid, program));
    true
}

/// Runs a command quietly; Ok(stdout) when it succeeds.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The policy rules start adds (priority, then selector and action): what comes in from the pod
/// bridge is routed back into the pod network, and nowhere else.
pub const BRIDGE_RULES: [(u32, &[&str]); 2] = [
    (17400, &["iif", BRIDGE, "to", POD_CIDR, "lookup", "main"]),
    (17401, &["iif", BRIDGE, "unreachable"]),
];

/// Deletes the rules of [`BRIDGE_RULES`] (each by its full description, so another rule at
/// the same priority stays); returns how many went.
pub fn delete_bridge_rules() -> usize {
    BRIDGE_RULES
        .iter()
        .filter(|(priority, rule)| {
            let priority = priority.to_string();
            let mut args = vec!["-4", "rule", "del"];
            args.extend(rule.iter());
            args.extend(["priority", priority.as_str()]);
            ip(&args).is_ok()
        })
        .count()
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Saves [`SYSCTLS`] to `file` (`key=value` lines), each unless saved already (a file from a
/// start that knew fewer keys gets the others added).
pub fn save_sysctls(file: &Path) -> Result<(), String> {
    let saved = std::fs::read_to_string(file).unwrap_or_default();
    let mut text = saved.clone();
    for key in SYSCTLS {
        if saved
            .lines()
            .any(|l| l.split_once('=').is_some_and(|(k, _)| k == key))
        {
            continue;
        }
        if let Ok(v) = std::fs::read_to_string(sysctl_path(key)) {
            text.push_str(&format!("{key}={}\n", v.trim()));
        }
    }
    if text == saved && file.is_file() {
        return Ok(());
    }
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Writes back what [`save_sysctls`] saved and removes `file`; returns the keys it changed.
pub fn restore_sysctls(file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
        let path = sysctl_path(key);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() != value && std::fs::write(&path, value).is_ok() {
            changed.push(format!("{key}={value} (was {})", now.trim()));
        }
    }
    let _ = std::fs::remove_file(file);
    changed
}

/// Adds to `file` each of [`FIXED_HOST_PATHS`] that does not exist now.
pub fn record_absent_host_paths(file: &Path) -> Result<(), String> {
    let known = std::fs::read_to_string(file).unwrap_or_default();
    let mut text = known.clone();
    for p in FIXED_HOST_PATHS {
        if !Path::new(p).exists() && !known.lines().any(|l| l == p) {
            text.push_str(p);
            text.push('\n');
        }
    }
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Removes the paths `file` lists (only ones of [`FIXED_HOST_PATHS`]) and `file`.
pub fn remove_recorded_host_paths(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut removed = Vec::new();
    for p in text.lines().filter(|l| FIXED_HOST_PATHS.contains(l)) {
        if Path::new(p).exists() {
            // Nothing may be mounted below: unmount first, then remove.
            unmount_under(Path::new(p));
            if std::fs::remove_dir_all(p).is_ok() {
                removed.push(p.to_owned());
            }
        }
    }
    let _ = std::fs::remove_file(file);
    removed
}

/// Where nodes mount the bpf file system (systemd does at boot); the agent pins what it hands
/// over to the next agent there.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether a bpf file system is mounted at [`BPFFS`].
fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&BPFFS) && f.get(2) == Some(&"bpf")
        })
}

/// Mounts a bpf file system at [`BPFFS`] when none is (as on a node systemd booted), and records
/// it in `file` for [`unmount_bpffs`].
pub fn mount_bpffs(file: &Path) -> Result<(), String> {
    if bpffs_mounted() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| e.to_string());
    let (src, target, fstype) = (c("bpf")?, c(BPFFS)?, c("bpf")?);
    // SAFETY: mount(2) with NUL-terminated strings owned above and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting the bpf file system at {BPFFS}: {}",
            std::io::Error::last_os_error()
        ));
    }
    std::fs::write(file, BPFFS).map_err(|e| format!("{}: {e}", file.display()))
}

/// Unmounts the bpf file system [`mount_bpffs`] mounted (what is pinned there goes with it).
pub fn unmount_bpffs(file: &Path) -> bool {
    if !file.exists() {
        return false;
    }
    let unmounted = unmount_under(Path::new(BPFFS)) > 0;
    let _ = std::fs::remove_file(file);
    unmounted
}

/// The iptables front ends, by family: save and restore.
const IPTABLES: [(&str, &str); 2] = [
    ("iptables-save", "iptables-restore"),
    ("ip6tables-save", "ip6tables-restore"),
];

/// `iptables-save` (and `ip6tables-save`) lines naming a `KUBE-` chain: kube-proxy's rules and
/// chains.
pub fn kube_iptables_lines() -> Vec<String> {
    IPTABLES
        .iter()
        .filter_map(|(save, _)| run(&mut Command::new(save)).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains("KUBE-"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What `kube-proxy --cleanup` (v1.20) leaves: it removes its service chains and their jumps
/// but keeps `KUBE-MARK-MASQ`, `KUBE-MARK-DROP` (kubelet's, in a real cluster) and the
/// `KUBE-PROXY-CANARY` chains. This removes every rule that jumps to a `KUBE-` chain, then
/// flushes and deletes every `KUBE-` chain, in each table of both families (one
/// `iptables-restore --noflush` per family, so nothing else is touched).
pub fn remove_kube_chains() -> Result<(), String> {
    for (save, restore) in IPTABLES {
        let Ok(text) = run(&mut Command::new(save)) else {
            continue;
        };
        let script = kube_chains_removal(&text);
        if script.is_empty() {
            continue;
        }
        let mut child = Command::new(restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {restore}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("{restore}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{restore}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{restore} --noflush failed: {}\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The `iptables-restore --noflush` input that removes the `KUBE-` chains of `save` (the
/// output of `iptables-save`): `-D` for each rule of another chain that names one, then `-F`
/// and `-X` for each. Empty when there is none.
fn kube_chains_removal(save: &str) -> String {
    let mut script = String::new();
    let mut table: Option<&str> = None;
    let (mut deletes, mut chains) = (Vec::new(), Vec::new());
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t);
            deletes.clear();
            chains.clear();
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            if name.starts_with("KUBE-") {
                chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !chain.starts_with("KUBE-") && rule.contains("KUBE-") {
                deletes.push(format!("-D {rule}"));
            }
        } else if line == "COMMIT"
            && let Some(t) = table.take()
            && !(deletes.is_empty() && chains.is_empty())
        {
            script.push_str(&format!("*{t}\n"));
            for d in &deletes {
                script.push_str(&format!("{d}\n"));
            }
            for c in &chains {
                script.push_str(&format!("-F {c}\n"));
            }
            for c in &chains {
                script.push_str(&format!("-X {c}\n"));
            }
            script.push_str("COMMIT\n");
        }
    }
    script
}

/// The nftables tables there are now (`table ip nat` lines), or None without the `nft` tool.
fn nft_tables() -> Option<Vec<String>> {
    let text = run(Command::new("nft").args(["list", "tables"])).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("table "))
            .map(str::to_owned)
            .collect(),
    )
}

/// Records in `file` the nftables tables there are before the node runs (once: a file from an
/// earlier start is kept). iptables-nft creates the `filter`, `nat` and `mangle` tables when
/// kube-proxy first writes a rule, and nothing removes them.
pub fn record_nft_tables(file: &Path) -> Result<(), String> {
    if file.is_file() {
        return Ok(());
    }
    let Some(tables) = nft_tables() else {
        return Ok(());
    };
    let text: String = tables.iter().map(|t| format!("{t}\n")).collect();
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Deletes the tables that [`record_nft_tables`] did not see and that hold nothing now (only
/// empty base chains: no rule, set or other chain), and removes `file`; returns the tables
/// deleted.
pub fn remove_new_empty_nft_tables(file: &Path) -> Vec<String> {
    let Ok(before) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Some(now) = nft_tables() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for table in now
        .iter()
        .filter(|t| !before.lines().any(|b| b == t.as_str()))
    {
        let spec: Vec<&str> = table.split_whitespace().skip(1).collect();
        let mut list = vec!["list", "table"];
        list.extend(&spec);
        let Ok(text) = run(Command::new("nft").args(&list)) else {
            continue;
        };
        if nft_table_is_empty(&text) {
            let mut delete = vec!["delete", "table"];
            delete.extend(&spec);
            if run(Command::new("nft").args(&delete)).is_ok() {
                removed.push(table.clone());
            }
        }
    }
    let _ = std::fs::remove_file(file);
    removed
}

/// Whether `nft list table` output shows only the base chains iptables-nft makes, empty.
fn nft_table_is_empty(text: &str) -> bool {
    const BASE: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    text.lines().map(str::trim).all(|l| {
        l.is_empty()
            || l == "}"
            || l.starts_with('#')
            || l.starts_with("table ")
            || l.starts_with("type ")
            || l.strip_prefix("chain ")
                .and_then(|c| c.split_whitespace().next())
                .is_some_and(|c| BASE.contains(&c))
    })
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount_path(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort();
    found.dedup();
    found.reverse();
    found
}

/// Unmounts everything at or below `dir`, deepest first (lazily when busy); returns the count.
pub fn unmount_under(dir: &Path) -> usize {
    let mut count = 0;
    // Stacked mounts show one entry each: repeat until none is left (bounded).
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2 on a NUL-terminated path owned by `c`.
            let ok = unsafe { libc::umount2(c.as_ptr(), 0) } == 0
                || unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0;
            if ok {
                count += 1;
            }
        }
    }
    count
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point: `/sys/fs/cgroup/unified` in the hybrid layout, `/sys/fs/cgroup`
/// on a pure v2 host.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split(' ').next() == Some("cgroup2"))
            .then(|| {
                pre.split(' ')
                    .nth(4)
                    .map(|m| PathBuf::from(unescape_mount_path(m)))
            })
            .flatten()
    })
}

/// Removes the `kubepods` cgroup trees (leaves first) in every hierarchy under /sys/fs/cgroup:
/// the v1 controllers and the unified one, where kubelet never removes pod folders itself.
/// Returns how many folders it removed.
pub fn remove_kubepods_cgroups() -> usize {
    let mut roots = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in dir.filter_map(Result::ok) {
            roots.push(e.path().join("kubepods"));
        }
    }
    roots.push(PathBuf::from("/sys/fs/cgroup/kubepods"));
    roots
        .iter()
        .filter(|r| r.is_dir())
        .map(|r| rmdir_tree(r))
        .sum()
}

fn rmdir_tree(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                n += rmdir_tree(&e.path());
            }
        }
    }
    // A cgroup folder goes with rmdir even though it holds its interface files.
    if std::fs::remove_dir(dir).is_ok() {
        n += 1;
    }
    n
}

/// Seconds since the epoch of an RFC 3339 UTC time as the API server writes it
/// (`2026-12-01T21:42:07Z`).
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss = t.next()?.split('.').next()?.parse::<i64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Random lowercase hex from /dev/urandom.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_api_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(parse_utc("2026-12-01T21:42:07Z"), Some(1_796_161_327));
        assert_eq!(parse_utc("2026-12-01T21:42:07.5Z"), Some(1_796_161_327));
        assert_eq!(parse_utc("2026-12-01 21:42:07"), None);
    }

    #[test]
    fn removes_only_kube_chains() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n:MINE - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -j MINE\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            kube_chains_removal(save),
            "*nat\n-D PREROUTING -j KUBE-SERVICES\n-F KUBE-MARK-MASQ\n-F KUBE-PROXY-CANARY\n-X KUBE-MARK-MASQ\n-X KUBE-PROXY-CANARY\nCOMMIT\n"
        );
        assert_eq!(
            kube_chains_removal("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
            ""
        );
    }

    #[test]
    fn empty_nft_tables_are_told_apart() {
        let empty = "# Warning: table ip nat is managed by iptables-nft, do not touch!\ntable ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\n";
        assert!(nft_table_is_empty(empty));
        let rule = "table ip nat {\n\tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tcounter accept\n\t}\n}\n";
        assert!(!nft_table_is_empty(rule));
        let chain = "table ip nat {\n\tchain MINE {\n\t}\n}\n";
        assert!(!nft_table_is_empty(chain));
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path(r"/x\\y"), r"/x\\y");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
