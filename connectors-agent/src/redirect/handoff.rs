//! Handing the redirect over to the next agent, so that a rolling restart of the DaemonSet never
//! sends a connection anywhere it fails: not direct (the tool would ask for credentials), not to a
//! proxy that is gone (it would be refused).
//!
//! The stopping agent, when its DaemonSet is still there (a restart, an upgrade):
//! 1. sets a deadline in `HANDOFF` (a minute from now: if no agent takes over by then, its
//!    programs stand aside and connections go direct, as when an agent dies);
//! 2. attaches `park` (a `cgroup_skb/egress` program) to the cgroups under redirect: until the
//!    deadline is cleared, the SYN of a new connection to the transparent listener is dropped
//!    before it leaves the pod, so the client sends it again a second later instead of being
//!    refused while no agent listens;
//! 3. pins its links (the redirect stays attached after it exits), `park`'s links and the maps
//!    the next agent needs (`BY_TUPLE`, `HANDOFF`) under the hand-over folder;
//! 4. drains its connections and exits.
//!
//! The next agent attaches its own programs and listens, then clears the pinned deadline
//! (parked connections arrive at their next SYN), reads original destinations from both record
//! maps, and a little later (when no connection the previous programs redirected can still be
//! opening) removes the previous agent's links and pins. An agent whose DaemonSet is being
//! deleted (an uninstall) detaches everything and removes every pin instead.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use connectors_common::{Origin, TupleKey};

use super::RedirectError;
use super::attach::Attachments;
use super::maps::{EbpfOriginalDst, Maps};

/// How long a stopping agent's redirect waits for the next agent before standing aside.
pub const WAIT_FOR_NEXT: Duration = Duration::from_secs(60);
/// How long the next agent keeps the previous agent's programs after taking over: a connection
/// they redirected while nobody listened is sent again within this (1, 3, 7, 15 s after the
/// first SYN).
pub const KEEP_PREVIOUS: Duration = Duration::from_secs(20);

/// Files under the hand-over folder.
const LINKS: &str = "links";
const BY_TUPLE: &str = "by_tuple";
const HANDOFF: &str = "handoff";

/// Checks that `dir` can hold a hand-over: it is created if missing and must be on a bpf file
/// system (pins live nowhere else).
pub fn check_dir(dir: &Path) -> Result<(), String> {
    /// `BPF_FS_MAGIC` of statfs(2).
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: an all-zero statfs is valid for the kernel to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) on a NUL-terminated path, filling `st`.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "{}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between targets"
    )]
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(format!(
            "{} is not on a bpf file system (mount one at /sys/fs/bpf)",
            dir.display()
        ));
    }
    Ok(())
}

/// What a stopping agent leaves for the next one.
pub struct HandOver<'a> {
    pub dir: &'a Path,
    pub attachments: &'a mut Attachments,
    pub maps: &'a Maps,
}

impl HandOver<'_> {
    /// Steps 1-3 above. On any failure the redirect is detached as usual (connections go direct).
    pub fn run(self) -> Result<usize, RedirectError> {
        let dir = self.dir;
        let fail = |what: &str, e: String| RedirectError::Kernel {
            what: format!("handing the redirect over ({what})"),
            detail: e,
        };
        // Whatever an earlier hand-over left is replaced.
        remove_all(dir);
        std::fs::create_dir_all(dir.join(LINKS)).map_err(|e| fail("folder", e.to_string()))?;
        let deadline = monotonic_ns().saturating_add(WAIT_FOR_NEXT.as_nanos() as u64);
        self.maps
            .handoff
            .lock()
            .map_err(|_| fail("map", "poisoned".into()))?
            .set(0, deadline, 0)
            .map_err(|e| fail("deadline", e.to_string()))?;
        // Parked, not refused, from now on.
        let mut pinned = 0;
        for (i, link) in self.attachments.attach_park()?.into_iter().enumerate() {
            pin_link(link, &dir.join(LINKS).join(format!("park-{i}")))
                .map_err(|e| fail("park", e))?;
            pinned += 1;
        }
        for (i, link) in self.attachments.take_fd_links().into_iter().enumerate() {
            pin_link(link, &dir.join(LINKS).join(format!("redirect-{i}")))
                .map_err(|e| fail("links", e))?;
            pinned += 1;
        }
        let poisoned = || fail("map", "poisoned".into());
        {
            let m = self.maps.by_tuple.lock().map_err(|_| poisoned())?;
            pin_fd(m.map().fd().as_fd(), &dir.join(BY_TUPLE)).map_err(|e| fail(BY_TUPLE, e))?;
        }
        {
            let m = self.maps.handoff.lock().map_err(|_| poisoned())?;
            pin_fd(m.map().fd().as_fd(), &dir.join(HANDOFF)).map_err(|e| fail(HANDOFF, e))?;
        }
        Ok(pinned)
    }
}

/// What the previous agent left, taken over by this one.
pub struct TakenOver {
    /// Original destinations the previous agent's programs recorded.
    pub records: EbpfOriginalDst,
    dir: PathBuf,
}

/// Takes over a hand-over left in `dir`, if there is one. Call once this agent's own programs
/// are attached and its transparent listener listens: the previous programs' parked
/// connections come in at their next SYN.
pub fn take_over(dir: &Path) -> Result<Option<TakenOver>, RedirectError> {
    if !dir.join(HANDOFF).exists() {
        return Ok(None);
    }
    let fail = |what: &str, e: String| RedirectError::Kernel {
        what: format!("taking the redirect over ({what})"),
        detail: e,
    };
    let data = MapData::from_pin(dir.join(BY_TUPLE)).map_err(|e| fail("records", e.to_string()))?;
    let records: HashMap<MapData, TupleKey, Origin> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(|e| fail("records", e.to_string()))?;
    let records = EbpfOriginalDst::new(Arc::new(Mutex::new(records)))
        .map_err(|e| fail("records", e.to_string()))?;
    // Its deadline no longer applies: someone took over, and parked SYNs go through again.
    let data = MapData::from_pin(dir.join(HANDOFF)).map_err(|e| fail("deadline", e.to_string()))?;
    Array::<MapData, u64>::try_from(Map::Array(data))
        .map_err(|e| fail("deadline", e.to_string()))?
        .set(0, 0, 0)
        .map_err(|e| fail("deadline", e.to_string()))?;
    Ok(Some(TakenOver {
        records,
        dir: dir.to_owned(),
    }))
}

impl TakenOver {
    /// Removes the previous agent's programs and pins (after [`KEEP_PREVIOUS`]).
    pub fn finish(self) -> usize {
        remove_all(&self.dir)
    }
}

/// Detaches and removes everything a hand-over left in `dir` (pinned links detach when their
/// pin goes and nothing else holds them). Returns the links removed.
pub fn remove_all(dir: &Path) -> usize {
    let mut links = 0;
    if let Ok(entries) = std::fs::read_dir(dir.join(LINKS)) {
        for e in entries.flatten() {
            match PinnedLink::from_pin(e.path()) {
                Ok(l) => {
                    if l.unpin().is_ok() {
                        links += 1;
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for name in [BY_TUPLE, HANDOFF] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir.join(LINKS));
    links
}

/// `BPF_OBJ_PIN` of a map's file descriptor at `path` (on a bpf file system).
fn pin_fd(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    /// The object-pin part of `union bpf_attr`.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd()).map_err(|e| e.to_string())?,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; `pathname` points to a live
    // NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), String> {
    link.pin(path).map(drop).map_err(|e| e.to_string())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
