//! Finding a pod's cgroup v2 directory on this node.
//!
//! The kubelet puts every pod in a directory under the pods' root (`kubepods`, or `kubepods.slice`
//! with the systemd driver), directly for Guaranteed pods and under a QoS directory for the
//! others:
//!
//! ```text
//! cgroupfs: kubepods/pod<uid>/   kubepods/besteffort/pod<uid>/   kubepods/burstable/pod<uid>/
//! systemd:  kubepods.slice/kubepods-pod<uid_>.slice/   kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
//! ```
//!
//! (`<uid_>`: the uid with `_` for `-`). A pod's directory is found two ways: by its name under
//! the pods' root (the fast path: the directory exists, empty, before any container of the pod
//! starts), and from the pod's processes, whose `0::` line in `/proc/<pid>/cgroup` is the same
//! for every cgroup driver and runtime. The id the eBPF programs see is the directory's inode
//! number.
//!
//! The kubelet does not always remove a deleted pod's directory (it stays, empty, on hybrid
//! hosts), so a pod is taken out of the redirect when the pod is deleted, not when its directory
//! goes.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// A pod's cgroup directory and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: PathBuf,
    /// The cgroup id (the directory's inode number).
    pub id: u64,
    /// Found by name under the pods' root, or from a process of the pod.
    pub found_by: FoundBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    Name,
    Process,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 file system is mounted (looked for cgroup2 in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error(
        "no pods' cgroup found under {mount} (looked for kubepods and kubepods.slice); is this a Kubernetes node? name it with --cgroup-root"
    )]
    NoPodsRoot { mount: PathBuf },
    #[error("{path}: {problem}")]
    Bad { path: PathBuf, problem: String },
}

/// The cgroup v2 tree of this node, as far as pods are concerned.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    /// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
    /// hosts).
    mount: PathBuf,
    /// The pods' root (`<mount>/kubepods` or `<mount>/kubepods.slice`).
    root: PathBuf,
    /// The root's level in the hierarchy (the mount's root is level 0).
    root_level: u32,
}

impl CgroupTree {
    /// The tree at `mount` (default: found in `/proc/self/mountinfo`), with the pods' root
    /// `root` (default: `kubepods` or `kubepods.slice` under the mount).
    pub fn detect(mount: Option<&Path>, root: Option<&Path>) -> Result<Self, CgroupError> {
        let mount = match mount {
            // A hybrid host's /sys/fs/cgroup holds cgroup v2 at `unified/`.
            Some(m) if !is_cgroup2(m) && is_cgroup2(&m.join("unified")) => m.join("unified"),
            Some(m) => m.to_owned(),
            None => cgroup2_mount().ok_or(CgroupError::NoCgroup2)?,
        };
        let root = match root {
            Some(r) if r.is_absolute() => r.to_owned(),
            Some(r) => mount.join(r),
            None => ["kubepods", "kubepods.slice"]
                .iter()
                .map(|n| mount.join(n))
                .find(|p| p.is_dir())
                .ok_or_else(|| CgroupError::NoPodsRoot {
                    mount: mount.clone(),
                })?,
        };
        let rel = root.strip_prefix(&mount).map_err(|_| CgroupError::Bad {
            path: root.clone(),
            problem: format!("is not under the cgroup v2 mount {}", mount.display()),
        })?;
        if !root.is_dir() {
            return Err(CgroupError::Bad {
                path: root,
                problem: "is not a directory".into(),
            });
        }
        let root_level = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count() as u32;
        Ok(Self {
            mount,
            root,
            root_level,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The levels at which pods' directories sit: right under the root (Guaranteed pods) and one
    /// below (a QoS directory between).
    pub fn pod_levels(&self) -> (u32, u32) {
        (self.root_level + 1, self.root_level + 2)
    }

    /// The folders new pods' directories appear in: the root and its QoS directories.
    pub fn parents(&self) -> Vec<PathBuf> {
        let mut out = vec![self.root.clone()];
        if let Ok(dir) = std::fs::read_dir(&self.root) {
            for e in dir.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if e.file_type().is_ok_and(|t| t.is_dir()) && is_qos_dir(&name) {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// The pod's directory: by name under the root, else from its processes.
    pub fn find(&self, uid: &str) -> Option<PodCgroup> {
        self.find_by_name(uid)
            .or_else(|| self.find_by_processes(&[uid]).into_values().next())
    }

    /// The directory `dir` as a pod cgroup, if it is one.
    pub fn at(&self, dir: &Path) -> Option<PodCgroup> {
        cgroup_at(dir, FoundBy::Name)
    }

    /// The pod's directory by its name under the root.
    pub fn find_by_name(&self, uid: &str) -> Option<PodCgroup> {
        for parent in self.parents() {
            let Ok(dir) = std::fs::read_dir(&parent) else {
                continue;
            };
            for e in dir.flatten() {
                let name = e.file_name();
                if uid_of_dir(&name.to_string_lossy()).as_deref() == Some(uid) {
                    return cgroup_at(&e.path(), FoundBy::Name);
                }
            }
        }
        None
    }

    /// The directories of the pods `uids` from the `0::` lines of their processes, in one pass
    /// over `/proc`.
    pub fn find_by_processes(&self, uids: &[&str]) -> std::collections::HashMap<String, PodCgroup> {
        let mut found = std::collections::HashMap::new();
        let Ok(proc_dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for e in proc_dir.flatten() {
            if found.len() == uids.len() {
                break;
            }
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path().join("cgroup")) else {
                continue;
            };
            let Some(path) = unified_path(&text) else {
                continue;
            };
            for uid in uids {
                if found.contains_key(*uid) {
                    continue;
                }
                if let Some(dir) = pod_dir_in(path, uid) {
                    let full = self.mount.join(dir.trim_start_matches('/'));
                    if let Some(c) = cgroup_at(&full, FoundBy::Process) {
                        found.insert((*uid).to_owned(), c);
                    }
                }
            }
        }
        found
    }

    /// The uid of the pod a new directory under one of [`Self::parents`] belongs to.
    pub fn uid_of(&self, dir: &Path) -> Option<String> {
        if !self.parents().iter().any(|p| dir.parent() == Some(p)) {
            return None;
        }
        uid_of_dir(&dir.file_name()?.to_string_lossy())
    }
}

fn cgroup_at(path: &Path, found_by: FoundBy) -> Option<PodCgroup> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_dir().then(|| PodCgroup {
        path: path.to_owned(),
        id: meta.ino(),
        found_by,
    })
}

/// `besteffort`, `burstable`, or their systemd slices.
fn is_qos_dir(name: &str) -> bool {
    matches!(
        name,
        "besteffort" | "burstable" | "kubepods-besteffort.slice" | "kubepods-burstable.slice"
    )
}

/// The pod uid in a pod directory's name: `pod<uid>` or `...-pod<uid_>.slice`.
pub fn uid_of_dir(name: &str) -> Option<String> {
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let at = name.rfind("pod")?;
    let before = &name[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    looks_like_uid(&uid).then_some(uid)
}

fn looks_like_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` file: its `0::` line.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// In a process's cgroup path, the part up to and including the component naming pod `uid`.
pub fn pod_dir_in<'a>(path: &'a str, uid: &str) -> Option<&'a str> {
    let underscored = uid.replace('-', "_");
    let mut end = 0;
    for comp in path.split('/') {
        end += comp.len();
        let named = comp.contains(uid) || comp.contains(&underscored);
        if named && uid_of_dir(comp).as_deref() == Some(uid) {
            return Some(&path[..end]);
        }
        end += 1;
    }
    None
}

/// Whether `path` is on a cgroup v2 file system.
fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is a plain C struct the kernel fills; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is not i64 on every target"
    )]
    let magic = i64::from(st.f_type);
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

/// Where cgroup v2 is mounted, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2a91-6b5e-4d7a-9c1e-2b3f4a5d6e7f";

    #[test]
    fn pod_directory_names_of_both_drivers() {
        assert_eq!(uid_of_dir(&format!("pod{UID}")).as_deref(), Some(UID));
        let u = UID.replace('-', "_");
        assert_eq!(
            uid_of_dir(&format!("kubepods-besteffort-pod{u}.slice")).as_deref(),
            Some(UID)
        );
        assert_eq!(
            uid_of_dir(&format!("kubepods-pod{u}.slice")).as_deref(),
            Some(UID)
        );
        assert_eq!(uid_of_dir("besteffort"), None);
        assert_eq!(uid_of_dir("podnot-a-uid"), None);
        assert_eq!(uid_of_dir(&format!("xpod{UID}")), None);
    }

    #[test]
    fn the_pod_directory_in_a_process_path() {
        let p = format!("/kubepods/besteffort/pod{UID}/0123abcd");
        assert_eq!(
            pod_dir_in(&p, UID),
            Some(format!("/kubepods/besteffort/pod{UID}").as_str())
        );
        let u = UID.replace('-', "_");
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-0123.scope"
        );
        assert!(pod_dir_in(&p, UID).unwrap().ends_with(".slice"));
        assert_eq!(pod_dir_in("/system.slice/sshd.service", UID), None);
        assert_eq!(
            unified_path("12:memory:/x\n0::/kubepods/pod1/c\n"),
            Some("/kubepods/pod1/c")
        );
    }

    #[test]
    fn a_tree_under_a_plain_folder_finds_pods_by_name() {
        let mount = tempfile::tempdir().unwrap();
        let root = mount.path().join("kubepods");
        let pod = root.join("besteffort").join(format!("pod{UID}"));
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::create_dir_all(root.join("burstable")).unwrap();
        let t = CgroupTree::detect(Some(mount.path()), None).unwrap();
        assert_eq!(t.pod_levels(), (2, 3));
        assert_eq!(t.parents().len(), 3);
        let found = t.find_by_name(UID).unwrap();
        assert_eq!(found.path, pod);
        assert_eq!(found.found_by, FoundBy::Name);
        assert_eq!(t.uid_of(&pod).as_deref(), Some(UID));
        assert!(
            t.find_by_name("0f3c2a91-6b5e-4d7a-9c1e-000000000000")
                .is_none()
        );
        assert!(CgroupTree::detect(Some(&mount.path().join("nope")), None).is_err());
    }
}
