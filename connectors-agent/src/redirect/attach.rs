//! Loading the embedded programs and attaching them to workload cgroups.
//!
//! Links are owned by file descriptors of this process, never pinned: when the agent exits,
//! however it exits, the kernel detaches them and workloads connect directly again. A cgroup
//! that is removed loses its programs in the kernel; the agent then drops its links and records,
//! and attaches again if a cgroup appears at the same path.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
    cgroup_sock_addr::CgroupSockAddrLink, sock_ops::SockOpsLink,
};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use connectors_common::{names, programs};

use super::RedirectError;
use super::maps::Maps;

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Reads the programs' aya-log records into the `log` facade.
pub type Logger = EbpfLogger<&'static dyn log::Log>;

/// The loaded programs (not attached anywhere by themselves).
pub struct Programs {
    ebpf: Ebpf,
}

/// The three links that make a cgroup's connections redirected. Dropping them detaches.
pub struct CgroupLinks {
    /// The cgroup's id (its directory's inode number).
    pub id: u64,
    connect4: CgroupSockAddrLink,
    connect6: CgroupSockAddrLink,
    sockops: SockOpsLink,
}

impl CgroupLinks {
    /// The links as file-descriptor links (to be pinned); those attached another way are
    /// dropped (detached).
    fn into_fd_links(self) -> Vec<FdLink> {
        [
            FdLink::try_from(self.connect4).ok(),
            FdLink::try_from(self.connect6).ok(),
            FdLink::try_from(self.sockops).ok(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Programs {
    /// Loads the maps and programs into the kernel. `log_level` is the highest aya-log level
    /// the programs emit (0: none).
    pub fn load(
        object: &[u8],
        log_level: u8,
    ) -> Result<(Self, Maps, Option<Logger>), RedirectError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(object)
            .map_err(|e| RedirectError::from_ebpf("creating the eBPF maps", e))?;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log records will not be shown");
                None
            }
        };
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| RedirectError::from_ebpf(format!("loading program {name}"), e))?;
        }
        let prog: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?;
        prog.load().map_err(|e| {
            RedirectError::from_ebpf(format!("loading program {}", programs::SOCKOPS), e)
        })?;
        let prog: &mut CgroupSkb = program(&mut ebpf, programs::PARK)?;
        prog.load().map_err(|e| {
            RedirectError::from_ebpf(format!("loading program {}", programs::PARK), e)
        })?;
        let maps = take_maps(&mut ebpf)?;
        Ok((Self { ebpf }, maps, logger))
    }

    /// Attaches the programs to the cgroup at `path`.
    pub fn attach(&mut self, path: &Path) -> Result<CgroupLinks, RedirectError> {
        let file = File::open(path).map_err(|e| RedirectError::cgroup(path, e.to_string()))?;
        let id = file
            .metadata()
            .map_err(|e| RedirectError::cgroup(path, e.to_string()))?
            .ino();
        let what = |name: &str| format!("attaching {name} to cgroup {}", path.display());
        let mut sock_addr = |name: &str| {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let link_id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|e| RedirectError::from_ebpf(what(name), e))?;
            prog.take_link(link_id)
                .map_err(|e| RedirectError::from_ebpf(what(name), e))
        };
        let connect4 = sock_addr(programs::CONNECT4)?;
        let connect6 = sock_addr(programs::CONNECT6)?;
        let prog: &mut SockOps = program(&mut self.ebpf, programs::SOCKOPS)?;
        let link_id = prog
            .attach(&file, CgroupAttachMode::Single)
            .map_err(|e| RedirectError::from_ebpf(what(programs::SOCKOPS), e))?;
        let sockops = prog
            .take_link(link_id)
            .map_err(|e| RedirectError::from_ebpf(what(programs::SOCKOPS), e))?;
        Ok(CgroupLinks {
            id,
            connect4,
            connect6,
            sockops,
        })
    }

    /// Attaches `park` to the cgroup at `path` (a hand-over), alongside its other programs.
    pub fn attach_park(&mut self, path: &Path) -> Result<FdLink, RedirectError> {
        let file = File::open(path).map_err(|e| RedirectError::cgroup(path, e.to_string()))?;
        let what = || format!("attaching {} to cgroup {}", programs::PARK, path.display());
        let prog: &mut CgroupSkb = program(&mut self.ebpf, programs::PARK)?;
        let id = prog
            .attach(&file, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(|e| RedirectError::from_ebpf(what(), e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| RedirectError::from_ebpf(what(), e))?;
        FdLink::try_from(link).map_err(|e| RedirectError::from_ebpf(what(), e))
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| RedirectError::Object(format!("no program named {name}")))?;
    prog.try_into()
        .map_err(|e| RedirectError::from_ebpf(format!("program {name}"), e))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, RedirectError> {
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| RedirectError::Object(format!("no map named {name}")))
    };
    let map_err = |name: &str, e: aya::maps::MapError| {
        RedirectError::Object(format!("map {name} has an unexpected layout: {e}"))
    };
    let endpoints =
        HashMap::try_from(take(names::ENDPOINTS)?).map_err(|e| map_err(names::ENDPOINTS, e))?;
    let proxy = Array::try_from(take(names::PROXY)?).map_err(|e| map_err(names::PROXY, e))?;
    let by_cookie =
        HashMap::try_from(take(names::BY_COOKIE)?).map_err(|e| map_err(names::BY_COOKIE, e))?;
    let by_tuple =
        HashMap::try_from(take(names::BY_TUPLE)?).map_err(|e| map_err(names::BY_TUPLE, e))?;
    let counters =
        PerCpuArray::try_from(take(names::COUNTERS)?).map_err(|e| map_err(names::COUNTERS, e))?;
    let settings =
        Array::try_from(take(names::SETTINGS)?).map_err(|e| map_err(names::SETTINGS, e))?;
    let handoff = Array::try_from(take(names::HANDOFF)?).map_err(|e| map_err(names::HANDOFF, e))?;
    let workloads =
        HashMap::try_from(take(names::WORKLOADS)?).map_err(|e| map_err(names::WORKLOADS, e))?;
    Ok(Maps {
        endpoints: endpoints.into(),
        proxy: proxy.into(),
        by_cookie: by_cookie.into(),
        by_tuple: std::sync::Arc::new(by_tuple.into()),
        counters,
        settings: settings.into(),
        workloads: workloads.into(),
        handoff: handoff.into(),
    })
}

/// Checks that `path` is a cgroup v2 directory the agent may redirect: it must exist, be on a
/// cgroup2 file system, and not contain the agent itself (whose connections to tools would
/// otherwise come back to it).
pub fn check_cgroup(path: &Path) -> Result<(), RedirectError> {
    check_cgroup_v2(path)?;
    if let Some(own) = own_cgroup(path)
        && let Ok(target) = path.canonicalize()
        && own.starts_with(&target)
    {
        return Err(RedirectError::cgroup(
            path,
            format!(
                "holds the agent itself ({}); its own connections to tools would be redirected \
                 back to it. Name the workloads' cgroup instead",
                own.display()
            ),
        ));
    }
    Ok(())
}

/// Checks that `path` is a directory on a cgroup v2 file system.
pub fn check_cgroup_v2(path: &Path) -> Result<(), RedirectError> {
    let meta = std::fs::metadata(path).map_err(|e| RedirectError::cgroup(path, e.to_string()))?;
    if !meta.is_dir() {
        return Err(RedirectError::cgroup(path, "is not a folder".into()));
    }
    if !is_cgroup2(path) {
        return Err(RedirectError::cgroup(
            path,
            "is not on a cgroup v2 file system (cgroup v2 is mounted at /sys/fs/cgroup, or at \
             /sys/fs/cgroup/unified on hybrid hosts)"
                .into(),
        ));
    }
    Ok(())
}

fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
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

/// The agent's own cgroup v2 directory, under the same mount as `near`.
fn own_cgroup(near: &Path) -> Option<PathBuf> {
    let mut root = near.canonicalize().ok()?;
    while let Some(parent) = root.parent() {
        if !is_cgroup2(parent) {
            break;
        }
        root = parent.to_owned();
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// The inode (cgroup id) of the directory at `path` now, if it exists.
pub fn cgroup_id(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The programs and the cgroups they are attached to.
pub struct Attachments {
    programs: Programs,
    attached: BTreeMap<PathBuf, CgroupLinks>,
    /// Cgroups whose last attach failed (by id), so the failure is logged once.
    failed: BTreeMap<PathBuf, u64>,
}

/// What [`Attachments::reconcile`] did to one cgroup.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Attached { path: PathBuf, id: u64 },
    Detached { path: PathBuf, id: u64 },
}

impl Attachments {
    pub fn new(programs: Programs) -> Self {
        Self {
            programs,
            attached: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Attaches to `path` now; any failure is returned.
    pub fn attach(&mut self, path: &Path) -> Result<u64, RedirectError> {
        let links = self.programs.attach(path)?;
        let id = links.id;
        self.attached.insert(path.to_owned(), links);
        self.failed.remove(path);
        Ok(id)
    }

    /// Follows the cgroups at `paths`: detaches from those removed (or replaced by another
    /// cgroup at the same path) and attaches to those present and not attached.
    pub fn reconcile(&mut self, paths: &[PathBuf]) -> Vec<Change> {
        let mut changes = Vec::new();
        for path in paths {
            let now = cgroup_id(path);
            if let Some(links) = self.attached.get(path)
                && Some(links.id) != now
            {
                let id = links.id;
                self.attached.remove(path);
                changes.push(Change::Detached {
                    path: path.clone(),
                    id,
                });
            }
            let Some(id) = now else { continue };
            if self.attached.contains_key(path) {
                continue;
            }
            match self.programs.attach(path) {
                Ok(links) => {
                    self.attached.insert(path.clone(), links);
                    self.failed.remove(path);
                    changes.push(Change::Attached {
                        path: path.clone(),
                        id,
                    });
                }
                Err(e) => {
                    if self.failed.insert(path.clone(), id) != Some(id) {
                        tracing::warn!(cgroup = %path.display(), error = %e, "cannot attach the redirect; retrying");
                    }
                }
            }
        }
        changes
    }

    /// Attaches `park` to every cgroup under redirect (see [`Programs::attach_park`]).
    pub fn attach_park(&mut self) -> Result<Vec<FdLink>, RedirectError> {
        let paths: Vec<PathBuf> = self.attached.keys().cloned().collect();
        paths.iter().map(|p| self.programs.attach_park(p)).collect()
    }

    /// Every cgroup's links, as file-descriptor links, leaving none attached here.
    pub fn take_fd_links(&mut self) -> Vec<FdLink> {
        std::mem::take(&mut self.attached)
            .into_values()
            .flat_map(CgroupLinks::into_fd_links)
            .collect()
    }

    /// Detaches from every cgroup.
    pub fn detach_all(&mut self) -> usize {
        let n = self.attached.len();
        self.attached.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_is_not_a_cgroup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_cgroup(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("not on a cgroup v2 file system"),
            "{e}"
        );
        let e = check_cgroup(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
