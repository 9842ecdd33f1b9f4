//! The eBPF transparent redirect: workloads' connections to tool endpoints are sent to the
//! transparent listener by the kernel, with no configuration in the workload.
//!
//! - [`attach`]: loads the programs embedded at build time and attaches them: to the workload
//!   cgroups named on the command line (`--redirect-cgroup`, following them as they come and
//!   go), or, in Kubernetes mode, once to the pods' root, with the labelled pods' cgroups in a
//!   map the programs check (so a pod is redirected as soon as its cgroup id is in the map, with
//!   no attach per pod, and unlabelled pods are untouched).
//! - [`endpoints`]: fills the endpoint map from the catalog (on every change, and re-resolved
//!   every `--redirect-refresh`).
//! - [`maps`]: the map layouts' userspace side, and [`EbpfOriginalDst`], which the transparent
//!   listener asks where an accepted connection was going and from which workload.
//!
//! Stopping (or dying) detaches everything: links belong to this process's file descriptors.

mod attach;
mod endpoints;
pub mod handoff;
mod maps;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors_common::{Counter, Settings, WorkloadEntry};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::proxy::Shared;
use crate::resolve::Resolver;
use crate::workload::pods::CgroupSet;

pub use attach::check_cgroup;
pub use maps::EbpfOriginalDst;

use attach::{Attachments, Change, Programs};
use endpoints::EndpointSync;
use maps::Maps;

/// The programs, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connectors-ebpf"));

/// How often the cgroups named on the command line are checked.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "this agent was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild it \
         without AYA_BUILD_SKIP to use --redirect-cgroup"
    )]
    NotBuilt,
    #[error(
        "--redirect-cgroup needs --transparent-listen: redirected connections are sent to the \
         transparent listener"
    )]
    NoListener,
    #[error(
        "the transparent listener is on {0}, which is not an address workloads can connect to; \
         name the address they reach it at with --redirect-to"
    )]
    NoTarget(SocketAddr),
    #[error("--redirect-to {addr}: {problem}")]
    BadTarget { addr: SocketAddr, problem: String },
    #[error("cgroup {path}: {problem}")]
    Cgroup { path: PathBuf, problem: String },
    #[error(
        "{what} was refused: {detail}. The eBPF redirect needs CAP_BPF and CAP_NET_ADMIN (or \
         CAP_SYS_ADMIN) to load programs and attach them to cgroups: run the agent as root or \
         as a privileged container, or leave out --redirect-cgroup"
    )]
    Privileges { what: String, detail: String },
    #[error(
        "{what} failed: {detail} (the eBPF redirect needs a kernel with BPF, cgroup v2 and \
         cgroup BPF (CONFIG_CGROUP_BPF), 5.7 or newer)"
    )]
    Kernel { what: String, detail: String },
    #[error("the embedded eBPF object is not what this agent expects: {0}")]
    Object(String),
}

impl RedirectError {
    fn cgroup(path: &Path, problem: String) -> Self {
        Self::Cgroup {
            path: path.to_owned(),
            problem,
        }
    }

    /// Classifies an aya error: refused for lack of privileges, or otherwise failed.
    fn from_ebpf(what: impl Into<String>, e: impl std::error::Error + 'static) -> Self {
        let what = what.into();
        let mut detail = String::new();
        let mut denied = false;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.contains(&text) {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&text);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            {
                denied = true;
            }
            source = s.source();
        }
        if denied {
            Self::Privileges { what, detail }
        } else {
            Self::Kernel { what, detail }
        }
    }
}

/// Whose connections are redirected.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every process of these cgroup v2 directories (standalone `--redirect-cgroup`).
    Cgroups(Vec<PathBuf>),
    /// Kubernetes mode: the programs attached once at the pods' root, redirecting only the
    /// processes under one of `workloads` (pod cgroups, looked for at `levels`).
    Pods {
        root: PathBuf,
        levels: (u32, u32),
        workloads: watch::Receiver<CgroupSet>,
    },
}

/// What the redirect needs to know.
#[derive(Clone, Debug)]
pub struct RedirectSettings {
    pub scope: Scope,
    /// Where connections are sent, at most one per family.
    pub targets: Vec<SocketAddr>,
    /// How often tool names are resolved again.
    pub refresh: Duration,
}

impl RedirectSettings {
    /// `redirect_to` if given, else the transparent listener's own address.
    pub fn new(
        scope: Scope,
        redirect_to: &[SocketAddr],
        listener: Option<SocketAddr>,
        refresh: Duration,
    ) -> Result<Self, RedirectError> {
        let listener = listener.ok_or(RedirectError::NoListener)?;
        let targets = if redirect_to.is_empty() {
            if listener.ip().is_unspecified() {
                return Err(RedirectError::NoTarget(listener));
            }
            vec![listener]
        } else {
            redirect_to.to_vec()
        };
        for (i, t) in targets.iter().enumerate() {
            let problem = if t.ip().is_loopback() {
                "loopback is not reachable from workloads in other network namespaces"
            } else if t.ip().is_unspecified() || t.port() == 0 {
                "not an address one can connect to"
            } else if targets[..i].iter().any(|o| o.is_ipv4() == t.is_ipv4()) {
                "one address per family (IPv4, IPv6)"
            } else {
                continue;
            };
            return Err(RedirectError::BadTarget {
                addr: *t,
                problem: problem.into(),
            });
        }
        Ok(Self {
            scope,
            targets,
            refresh,
        })
    }
}

struct Inner {
    settings: RedirectSettings,
    attachments: Mutex<Attachments>,
    maps: Maps,
}

/// The running redirect. [`Redirect::stop`] (or dropping it, or the process ending) detaches it.
pub struct Redirect {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Redirect {
    /// Loads the programs, fills the maps from the current catalog, attaches to every cgroup
    /// and starts following catalog changes and the cgroups.
    pub async fn start(
        settings: RedirectSettings,
        shared: Arc<Shared>,
        resolver: Resolver,
    ) -> Result<Self, RedirectError> {
        if OBJECT.is_empty() {
            return Err(RedirectError::NotBuilt);
        }
        match &settings.scope {
            Scope::Cgroups(cgroups) => {
                for c in cgroups {
                    check_cgroup(c)?;
                }
            }
            // The agent's own pod is under the root too; filtering leaves it alone.
            Scope::Pods { root, .. } => attach::check_cgroup_v2(root)?,
        }
        let (programs, maps, logger) = Programs::load(OBJECT, ebpf_log_level())?;
        maps.proxy
            .lock()
            .map_err(|_| RedirectError::Object("proxy map lock poisoned".into()))?
            .set(0, maps::proxy_target(&settings.targets), 0)
            .map_err(|e| RedirectError::from_ebpf("setting the proxy address", e))?;
        if let Scope::Pods { levels, .. } = &settings.scope {
            maps.settings
                .lock()
                .map_err(|_| RedirectError::Object("settings map lock poisoned".into()))?
                .set(
                    0,
                    Settings {
                        filter: 1,
                        min_level: levels.0,
                        max_level: levels.1,
                        _pad: 0,
                    },
                    0,
                )
                .map_err(|e| RedirectError::from_ebpf("setting the workload filter", e))?;
        }

        let mut sync = EndpointSync::new(resolver, settings.targets.clone());
        let catalog = shared.catalog.load_full();
        let report = sync.sync(&catalog, &maps).await;
        tracing::info!(
            endpoints = report.endpoints,
            addresses = report.addresses,
            "redirect endpoints loaded"
        );

        let mut attachments = Attachments::new(programs);
        let paths: Vec<PathBuf> = match &settings.scope {
            Scope::Cgroups(c) => c.clone(),
            Scope::Pods { root, .. } => vec![root.clone()],
        };
        for c in &paths {
            let id = attachments.attach(c)?;
            tracing::info!(cgroup = %c.display(), id, targets = ?settings.targets, "redirect attached");
        }
        let stop = shared.shutdown.child_token();
        let scope = settings.scope.clone();
        let inner = Arc::new(Inner {
            settings,
            attachments: Mutex::new(attachments),
            maps,
        });
        if let Some(logger) = logger {
            tokio::spawn(read_ebpf_logs(logger, stop.clone()));
        }
        tokio::spawn(
            follow_catalog(inner.clone(), shared.clone(), sync, stop.clone())
                .instrument(tracing::info_span!("redirect-endpoints")),
        );
        match scope {
            Scope::Cgroups(paths) => {
                tokio::spawn(
                    follow_cgroups(inner.clone(), paths, stop.clone())
                        .instrument(tracing::info_span!("redirect-cgroups")),
                );
            }
            Scope::Pods { workloads, .. } => {
                // The pods known now are in the map before this returns (a restart picks up
                // every running pod at once).
                let mut current = BTreeSet::new();
                sync_workloads(&inner, &shared, &workloads.borrow(), &mut current);
                tokio::spawn(
                    follow_workloads(inner.clone(), shared, workloads, current, stop.clone())
                        .instrument(tracing::info_span!("redirect-pods")),
                );
            }
        }
        Ok(Self { inner, stop })
    }

    /// The transparent listener's source of original destinations.
    pub fn original_dst(&self) -> Result<EbpfOriginalDst, RedirectError> {
        EbpfOriginalDst::new(self.inner.maps.by_tuple.clone())
            .map_err(|e| RedirectError::from_ebpf("opening the redirect's connection map", e))
    }

    /// Takes over what a previous agent handed over in `dir`, if anything (call once this
    /// agent's transparent listener listens): the connections parked for it come in; the
    /// previous agent's records are returned as an extra source of original destinations; its
    /// programs and pins go after [`handoff::KEEP_PREVIOUS`].
    pub fn take_over(&self, dir: &Path) -> Result<Option<EbpfOriginalDst>, RedirectError> {
        let Some(taken) = handoff::take_over(dir)? else {
            return Ok(None);
        };
        tracing::info!(dir = %dir.display(), "took the redirect over from the previous agent");
        let records = taken.records.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(handoff::KEEP_PREVIOUS) => {}
                // Stopping first: the shutdown replaces (hand-over) or removes (uninstall)
                // what is in the folder; removing it here would undo this agent's hand-over.
                () = stop.cancelled() => return,
            }
            let removed = taken.finish();
            tracing::info!(removed, "the previous agent's redirect is gone");
        });
        Ok(Some(records))
    }

    /// Hands the redirect over to the next agent (see [`handoff`]): it stays attached after this
    /// process ends, parking new connections until the next agent listens. Falls back to
    /// [`Redirect::stop`] when that cannot be done.
    pub fn hand_over(&self, dir: &Path) {
        self.stop.cancel();
        let result = match self.inner.attachments.lock() {
            Ok(mut a) => handoff::HandOver {
                dir,
                attachments: &mut a,
                maps: &self.inner.maps,
            }
            .run(),
            Err(_) => Err(RedirectError::Object("attachments lock poisoned".into())),
        };
        match result {
            Ok(pinned) => tracing::info!(
                dir = %dir.display(),
                pinned,
                wait_s = handoff::WAIT_FOR_NEXT.as_secs(),
                "redirect handed over: new connections wait for the next agent"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the redirect over; detaching");
                handoff::remove_all(dir);
                self.stop();
            }
        }
    }

    /// Detaches from every cgroup now: new connections go direct.
    pub fn stop(&self) {
        self.stop.cancel();
        let detached = match self.inner.attachments.lock() {
            Ok(mut a) => a.detach_all(),
            Err(_) => 0,
        };
        let m = &self.inner.maps;
        tracing::info!(
            detached,
            redirected = m.counter(Counter::Redirected),
            established = m.counter(Counter::Established),
            no_proxy = m.counter(Counter::NoProxy),
            insert_failures =
                m.counter(Counter::CookieInsertFailed) + m.counter(Counter::TupleInsertFailed),
            "redirect detached"
        );
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The aya-log level the programs emit: debug when `connectors_ebpf` debug logs are wanted,
/// else nothing (a log call then costs one comparison).
fn ebpf_log_level() -> u8 {
    if tracing::enabled!(target: "connectors_ebpf", tracing::Level::DEBUG) {
        EBPF_LOG_DEBUG
    } else {
        0
    }
}

/// `aya_log_common::Level::Debug`.
const EBPF_LOG_DEBUG: u8 = 4;

async fn read_ebpf_logs(logger: attach::Logger, stop: CancellationToken) {
    // SAFETY: the logger owns its ring buffer's file descriptor, which stays open and the same
    // for as long as the logger lives, and the AsyncFd owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read eBPF log records");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "eBPF log records unreadable");
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

async fn follow_catalog(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    mut sync: EndpointSync,
    stop: CancellationToken,
) {
    let mut generations = shared.generation.subscribe();
    let mut generation = shared.catalog.load().generation;
    loop {
        // A new configuration, or the time to resolve the tool names again.
        tokio::select! {
            r = generations.changed() => if r.is_err() { return },
            () = tokio::time::sleep(inner.settings.refresh) => {}
            () = stop.cancelled() => return,
        }
        let catalog = shared.catalog.load_full();
        let changed = catalog.generation != generation;
        let report = sync.sync(&catalog, &inner.maps).await;
        if changed || report.added + report.removed > 0 {
            tracing::info!(
                generation = catalog.generation,
                endpoints = report.endpoints,
                addresses = report.addresses,
                added = report.added,
                removed = report.removed,
                "redirect endpoints updated"
            );
        }
        generation = catalog.generation;
    }
}

/// Kubernetes mode: keeps the workload map equal to the tracked pods' cgroups.
async fn follow_workloads(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    mut workloads: watch::Receiver<CgroupSet>,
    mut current: BTreeSet<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            r = workloads.changed() => if r.is_err() { return },
            () = stop.cancelled() => return,
        }
        let set = workloads.borrow_and_update().clone();
        sync_workloads(&inner, &shared, &set, &mut current);
    }
}

/// Inserts the new pod cgroups into the workload map and removes the gone ones (and their
/// connection records); records how long each new one took to become active.
fn sync_workloads(inner: &Inner, shared: &Shared, set: &CgroupSet, current: &mut BTreeSet<u64>) {
    let Ok(mut map) = inner.maps.workloads.lock() else {
        return;
    };
    for (id, appeared) in set {
        if current.contains(id) {
            continue;
        }
        match map.insert(id, WorkloadEntry { flags: 1, _pad: 0 }, 0) {
            Ok(()) => {
                let after = appeared.elapsed();
                shared.metrics.redirect_activated(after);
                tracing::info!(
                    cgroup_id = id,
                    after_ms = after.as_secs_f64() * 1000.0,
                    "pod under redirect"
                );
                current.insert(*id);
            }
            Err(e) => tracing::warn!(cgroup_id = id, error = %e, "cannot put a pod under redirect"),
        }
    }
    let gone: Vec<u64> = current
        .iter()
        .filter(|id| !set.contains_key(id))
        .copied()
        .collect();
    for id in gone {
        if let Err(e) = map.remove(&id) {
            tracing::debug!(cgroup_id = id, error = %e, "workload entry already gone");
        }
        current.remove(&id);
        let forgotten = inner.maps.forget_cgroup(id);
        tracing::info!(cgroup_id = id, forgotten, "pod out of the redirect");
    }
    shared.metrics.pods_redirected(current.len());
}

async fn follow_cgroups(inner: Arc<Inner>, paths: Vec<PathBuf>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
        let changes = match inner.attachments.lock() {
            // Checked under the lock: `stop` detaches under it too, and must stay detached.
            Ok(_) if stop.is_cancelled() => return,
            Ok(mut a) => a.reconcile(&paths),
            Err(_) => return,
        };
        for change in changes {
            match change {
                Change::Attached { path, id } => {
                    tracing::info!(cgroup = %path.display(), id, "redirect attached to a new cgroup at the same path");
                }
                Change::Detached { path, id } => {
                    let forgotten = inner.maps.forget_cgroup(id);
                    tracing::info!(cgroup = %path.display(), id, forgotten, "cgroup removed; redirect detached");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(to: &[&str], listener: Option<&str>) -> Result<RedirectSettings, RedirectError> {
        let to: Vec<SocketAddr> = to.iter().map(|a| a.parse().unwrap()).collect();
        RedirectSettings::new(
            Scope::Cgroups(vec![PathBuf::from("/sys/fs/cgroup/pod")]),
            &to,
            listener.map(|l| l.parse().unwrap()),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn the_target_is_the_listener_unless_named() {
        let s = settings(&[], Some("198.18.0.1:15001")).unwrap();
        assert_eq!(s.targets, vec!["198.18.0.1:15001".parse().unwrap()]);
        let s = settings(&["198.18.0.1:15001", "[fd00::1]:15001"], Some("[::]:15001")).unwrap();
        assert_eq!(s.targets.len(), 2);
    }

    #[test]
    fn unusable_targets_are_refused_with_the_reason() {
        let e = settings(&[], None).unwrap_err();
        assert!(matches!(e, RedirectError::NoListener), "{e}");
        let e = settings(&[], Some("0.0.0.0:15001")).unwrap_err();
        assert!(e.to_string().contains("--redirect-to"), "{e}");
        let e = settings(&["127.0.0.1:15001"], Some("0.0.0.0:15001")).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = settings(
            &["198.18.0.1:15001", "198.18.0.2:15001"],
            Some("0.0.0.0:15001"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one address per family"), "{e}");
    }

    #[test]
    fn permission_errors_name_the_capabilities() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = RedirectError::from_ebpf("loading program connect4", io);
        assert!(matches!(e, RedirectError::Privileges { .. }));
        assert!(e.to_string().contains("CAP_BPF"), "{e}");
        let io = std::io::Error::from_raw_os_error(libc::EINVAL);
        let e = RedirectError::from_ebpf("attaching connect4", io);
        assert!(e.to_string().contains("CONFIG_CGROUP_BPF"), "{e}");
    }
}
