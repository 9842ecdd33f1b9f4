//! Wiring: load the configuration, bind the listeners, serve until told to stop, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::authz::Access;
use crate::catalog::Catalog;
use crate::config::{Args, OriginalDstSource};
use crate::controller_api::{ControllerClient, ControllerSettings};
use crate::metrics::Metrics;
use crate::proxy::admission::{Admission, Caps};
use crate::proxy::idle::Timeouts;
use crate::proxy::{FirstFound, KubeMode, OriginalDst, ProxySettings, Shared, SoOriginalDst};
use crate::redirect::{Redirect, RedirectError, RedirectSettings, Scope};
use crate::resolve::{ResolveError, Resolver};
use crate::source::kube::KubeSource;
use crate::source::standalone::FolderError;
use crate::source::{self, Snapshot, SourceHealth};
use crate::tls::intermediate;
use crate::tls::{CertAuthority, LeafCertificates, TlsError};
use crate::upstream::{UpstreamSettings, Upstreams};
use crate::workers::{self, Workers};
use crate::workload::pods::{self, TrackError, Tracking};
use crate::workload::{CgroupTree, cgroups::CgroupError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the transparent listener must not be on loopback ({0}): workloads in other network namespaces cannot reach it"
    )]
    LoopbackTransparent(SocketAddr),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error("--original-dst ebpf needs the eBPF redirect (--redirect-cgroup)")]
    EbpfSourceWithoutRedirect,
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    #[error("Kubernetes mode: no Kubernetes client (in-cluster ServiceAccount or KUBECONFIG): {0}")]
    Kube(#[source] kube::Error),
    #[error("Kubernetes mode: {0}")]
    Cgroups(#[from] CgroupError),
    #[error("Kubernetes mode: {0}")]
    Track(#[from] TrackError),
    #[error(
        "Kubernetes mode needs --transparent-listen: labelled pods' connections are redirected to it"
    )]
    NoTransparentListener,
    #[error("stopped before the configuration was loaded")]
    Stopped,
    #[error(transparent)]
    Api(#[from] crate::api::ApiStartError),
}

/// What Kubernetes mode runs beside the proxy.
struct Cluster {
    client: kube::Client,
    node: String,
    tree: CgroupTree,
    tracking: Tracking,
    source: KubeSource,
    controller: ControllerClient,
    access: Access,
}

/// How long the listeners keep accepting once the redirect sends no new connection here.
const ACCEPT_GRACE: Duration = Duration::from_millis(250);

/// A running agent.
pub struct Agent {
    pub shared: Arc<Shared>,
    drain_timeout: Duration,
    /// The eBPF redirect, when `--redirect-cgroup` is given; detached first at shutdown.
    redirect: Option<Redirect>,
    /// The data-path threads.
    workers: Option<Workers>,
    /// Where the redirect is handed over at shutdown, if anywhere.
    handoff_dir: Option<std::path::PathBuf>,
    /// Kubernetes mode: what tells a restart from an uninstall at shutdown.
    owner: Option<Owner>,
}

/// The agent's pod, to find at shutdown whether its DaemonSet stays.
struct Owner {
    client: kube::Client,
    namespace: String,
    pod: String,
}

impl Owner {
    /// Whether the DaemonSet that runs this pod stays (a restart or an upgrade, as opposed to
    /// an uninstall). The DaemonSet gone, being deleted or replaced by another of the same
    /// name, or the agent's own access gone (its ServiceAccount or binding deleted: 401, 403,
    /// or its namespace: 404) all mean an uninstall. When the API server cannot be reached it
    /// is assumed to stay: a hand-over nobody takes stands aside after a minute.
    async fn daemonset_stays(&self) -> bool {
        use k8s_openapi::api::apps::v1::DaemonSet;
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let sets: kube::Api<DaemonSet> =
            kube::Api::namespaced(self.client.clone(), &self.namespace);
        let ask = async {
            let pod = pods.get(&self.pod).await?;
            let Some(owner) = pod
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.kind == "DaemonSet")
            else {
                return Ok(false);
            };
            Ok(match sets.get_opt(&owner.name).await? {
                Some(ds) => {
                    ds.metadata.deletion_timestamp.is_none()
                        && ds.metadata.uid.as_deref() == Some(owner.uid.as_str())
                }
                None => false,
            })
        };
        let answer: Result<Result<bool, kube::Error>, _> =
            tokio::time::timeout(Duration::from_secs(3), ask).await;
        match answer {
            Ok(Ok(stays)) => stays,
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 401 | 403 | 404) => {
                tracing::info!(
                    code = status.code,
                    "the agent's access is gone: an uninstall"
                );
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot tell a restart from an uninstall; handing over");
                true
            }
            Err(_) => {
                tracing::warn!("the API server did not answer in 3 s; handing over");
                true
            }
        }
    }
}

impl Agent {
    /// Loads the configuration and starts every listener.
    pub async fn start(args: &Args) -> Result<Self, StartError> {
        let nofile = match crate::rlimit::raise_nofile() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise the open-files limit");
                1024
            }
        };
        let caps = Caps {
            total: args.max_connections.map_or_else(
                || crate::rlimit::default_max_connections(nofile),
                |n| n as usize,
            ),
            per_peer: args.max_connections_per_peer as usize,
        };
        tracing::info!(
            open_files = nofile,
            max_connections = caps.total,
            max_connections_per_peer = caps.per_peer,
            "connection limits"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(SourceHealth::default());
        let cluster = if args.kubernetes {
            Some(Self::cluster(args, &provider, &metrics, &health, &shutdown).await?)
        } else {
            None
        };
        // The signing CA: files (standalone, or given), else an intermediate from the controller.
        let mut renew_from = None;
        let ca = match (args.ca_paths(), &cluster) {
            (Some((ca_cert, ca_key)), _) => {
                let (ca, created) = CertAuthority::load_or_create(&ca_cert, &ca_key)?;
                if created {
                    tracing::info!(cert = %ca_cert.display(), "created a new proxy CA; workloads must trust this certificate");
                } else {
                    tracing::info!(cert = %ca_cert.display(), "loaded the proxy CA");
                }
                ca
            }
            (None, Some(c)) => {
                let issued = intermediate::first(&c.controller, &c.node, &shutdown).await?;
                renew_from = Some((issued.not_after, issued.generation));
                issued.ca
            }
            (None, None) => unreachable_ca()?,
        };
        let resolver = match &args.hosts_file {
            Some(p) => Resolver::from_hosts_file(p)?,
            None => Resolver::default(),
        };
        let upstreams = Arc::new(Upstreams::new(
            provider.clone(),
            resolver,
            UpstreamSettings {
                connect_timeout: args.connect_timeout,
                ..Default::default()
            },
        ));
        let (generation, _) = tokio::sync::watch::channel(0);
        let kube = cluster.as_ref().map(|c| KubeMode {
            pods: c.tracking.index.clone(),
            access: c.access.clone(),
            refresh: c.source.refresh.clone(),
        });
        let shared = Arc::new(Shared {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            generation,
            kube,
            leaves: Arc::new(LeafCertificates::new(Arc::new(ca), provider)),
            upstreams: upstreams.clone(),
            settings: ProxySettings {
                response_timeout: args.response_timeout,
                timeouts: Timeouts {
                    header: args.header_timeout,
                    idle: args.idle_timeout,
                },
                connect_timeout: args.connect_timeout,
                ..Default::default()
            },
            metrics,
            admission: Admission::new(caps),
            shutdown,
            tasks: TaskTracker::new(),
        });

        // Configuration first, so the first connection already sees it.
        let (first, snapshots) = match (&args.config_dir, &cluster) {
            (Some(dir), _) => {
                source::standalone::start(dir, health.clone(), shared.shutdown.clone()).await?
            }
            (None, Some(c)) => first_snapshot(c, &shared.shutdown).await?,
            (None, None) => return Err(StartError::Stopped),
        };
        source::apply(&shared, &upstreams, &first, 1);

        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, what, source })
        };
        let n = args.worker_count();
        let bind_workers = |addr: SocketAddr, what: &'static str| {
            workers::bind(addr, n).map_err(|source| StartError::Bind { addr, what, source })
        };
        let proxy_listeners = bind_workers(args.proxy_listen, "forward proxy")?;
        let transparent_listeners = match args.transparent_listen {
            Some(addr) if addr.ip().is_loopback() => {
                return Err(StartError::LoopbackTransparent(addr));
            }
            Some(addr) => bind_workers(addr, "transparent listener")?,
            None => Vec::new(),
        };
        let transparent_addr = transparent_listeners
            .first()
            .and_then(|l| l.local_addr().ok());
        let admin_listener = bind(args.admin_listen, "admin").await?;
        let metrics_listener = bind(args.metrics_listen, "metrics").await?;
        let health_listener = bind(args.health_listen, "health").await?;

        let ready = Arc::new(AtomicBool::new(false));
        let state = AdminState {
            shared: shared.clone(),
            ready: ready.clone(),
            source: health,
        };
        tokio::spawn(admin::serve(
            admin::admin_router(state.clone()),
            admin_listener,
            shared.clone(),
        ));
        tokio::spawn(admin::serve(
            admin::metrics_router(state.clone()),
            metrics_listener,
            shared.clone(),
        ));
        tokio::spawn(admin::serve(
            admin::health_router(state),
            health_listener,
            shared.clone(),
        ));
        // The unified REST API, over the configuration (standalone).
        if let Some(options) = args.api_options() {
            let routes =
                crate::api::router(&options, snapshots.clone(), upstreams.resolver().clone())?;
            let listener = bind(options.listen, "unified API").await?;
            tracing::info!(addr = %options.listen, "unified REST API listening (page: /connectors/ui/)");
            tokio::spawn(admin::serve(routes, listener, shared.clone()));
        }
        // The eBPF redirect: attached once the listener it sends connections to is bound.
        let scope = match &cluster {
            Some(c) => {
                if transparent_addr.is_none() {
                    return Err(StartError::NoTransparentListener);
                }
                Some(Scope::Pods {
                    root: c.tree.root().to_owned(),
                    levels: c.tree.pod_levels(),
                    workloads: c.tracking.cgroups.clone(),
                })
            }
            None if args.redirect_cgroups.is_empty() => None,
            None => Some(Scope::Cgroups(args.redirect_cgroups.clone())),
        };
        let redirect = match scope {
            None => None,
            Some(scope) => {
                let settings = RedirectSettings::new(
                    scope,
                    &args.redirect_to,
                    transparent_addr,
                    args.redirect_refresh,
                )?;
                let resolver = upstreams.resolver().clone();
                Some(Redirect::start(settings, shared.clone(), resolver).await?)
            }
        };
        // A redirect a previous agent handed over: its parked connections come to the
        // listeners bound above once it is taken over, and their records are in its map.
        let handoff_dir = match (&redirect, &args.handoff_dir) {
            (Some(_), Some(dir)) => match crate::redirect::handoff::check_dir(dir) {
                Ok(()) => Some(dir.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "no hand-over on restart: connections go direct while the agent restarts");
                    None
                }
            },
            _ => None,
        };
        let previous: Option<Arc<dyn OriginalDst>> = match (&redirect, &handoff_dir) {
            (Some(r), Some(dir)) => match r.take_over(dir) {
                Ok(p) => p.map(|p| Arc::new(p) as Arc<dyn OriginalDst>),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over the previous agent's redirect");
                    None
                }
            },
            _ => None,
        };
        let origin: Option<Arc<dyn OriginalDst>> = match transparent_addr {
            None => None,
            Some(_) => Some(match (args.original_dst, &redirect) {
                (OriginalDstSource::Netfilter, _) | (OriginalDstSource::Auto, None) => {
                    Arc::new(SoOriginalDst)
                }
                (OriginalDstSource::Ebpf, Some(r)) => {
                    let mut sources: Vec<Arc<dyn OriginalDst>> = vec![Arc::new(r.original_dst()?)];
                    sources.extend(previous.clone());
                    Arc::new(FirstFound(sources))
                }
                (OriginalDstSource::Ebpf, None) => {
                    return Err(StartError::EbpfSourceWithoutRedirect);
                }
                (OriginalDstSource::Auto, Some(r)) => {
                    let mut sources: Vec<Arc<dyn OriginalDst>> = vec![Arc::new(r.original_dst()?)];
                    sources.extend(previous.clone());
                    sources.push(Arc::new(SoOriginalDst));
                    Arc::new(FirstFound(sources))
                }
            }),
        };
        let workers = Workers::start(
            &shared,
            proxy_listeners,
            transparent_listeners,
            origin,
            args.drain_timeout,
        )
        .map_err(StartError::Workers)?;
        tracing::info!(addr = %args.proxy_listen, workers = n, "forward proxy listening");
        if let Some(addr) = transparent_addr {
            tracing::info!(%addr, "transparent listener listening");
        }

        // Every later change to the configuration.
        tokio::spawn(source::follow(shared.clone(), upstreams, snapshots, 1));
        if let (Some(c), Some((not_after, generation))) = (&cluster, renew_from) {
            tokio::spawn(intermediate::renew(
                c.controller.clone(),
                c.node.clone(),
                shared.leaves.clone(),
                not_after,
                generation,
                c.source.ca_generation.clone(),
                shared.shutdown.clone(),
            ));
        }
        ready.store(true, Ordering::Release);
        let owner = match (&cluster, &args.pod_name) {
            (Some(c), Some(pod)) => Some(Owner {
                client: c.client.clone(),
                namespace: args.controller_namespace.clone(),
                pod: pod.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            shared,
            drain_timeout: args.drain_timeout,
            redirect,
            workers: Some(workers),
            handoff_dir,
            owner,
        })
    }

    /// Kubernetes mode: the API client, the pods of this node and their cgroups, the controller
    /// and the configuration source.
    async fn cluster(
        args: &Args,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        metrics: &Arc<Metrics>,
        health: &Arc<SourceHealth>,
        shutdown: &CancellationToken,
    ) -> Result<Cluster, StartError> {
        let node = args.node_name.clone().unwrap_or_default();
        let client = kube::Client::try_default()
            .await
            .map_err(StartError::Kube)?;
        let tree = CgroupTree::detect(args.cgroup_mount.as_deref(), args.cgroup_root.as_deref())?;
        tracing::info!(%node, root = %tree.root().display(), levels = ?tree.pod_levels(), "Kubernetes mode");
        let tracking = pods::track(client.clone(), &node, tree.clone(), shutdown.clone())?;
        let controller = ControllerClient::new(
            ControllerSettings {
                url: args.controller_url.clone(),
                namespace: args.controller_namespace.clone(),
                service: args.controller_service.clone(),
                token_file: args.token_file.clone(),
                ca_file: args.controller_ca.clone(),
            },
            client.clone(),
            provider.clone(),
        );
        let source = source::kube::start(
            client.clone(),
            controller.clone(),
            tracking.clone(),
            args.credentials_refresh,
            health.clone(),
            shutdown.clone(),
        );
        let access = Access::new(client.clone(), args.authz_ttl, metrics.clone());
        Ok(Cluster {
            client: client.clone(),
            node,
            tree,
            tracking,
            source,
            controller,
            access,
        })
    }

    /// Stops accepting, lets open connections finish within the drain timeout, then returns.
    pub async fn shutdown(mut self) {
        // New connections are never sent to a proxy that is going away: handed over to the next
        // agent (parked until it listens) when one is coming, else direct from now on.
        if let Some(r) = &self.redirect {
            let hand_over = match (&self.handoff_dir, &self.owner) {
                (Some(_), Some(owner)) => owner.daemonset_stays().await,
                (Some(_), None) => true,
                (None, _) => false,
            };
            match (&self.handoff_dir, hand_over) {
                (Some(dir), true) => r.hand_over(dir),
                (dir, _) => {
                    r.stop();
                    if let Some(dir) = dir {
                        let removed = crate::redirect::handoff::remove_all(dir);
                        tracing::info!(removed, "uninstalled: no redirect left behind");
                    }
                }
            }
            // No new connection comes here from now on, but handshakes already under way end
            // in the listeners' backlog: keep accepting a moment so they are served, not reset.
            tokio::time::sleep(ACCEPT_GRACE).await;
        }
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let open = self.shared.tasks.len();
        if open > 0 {
            tracing::info!(open, "draining connections");
        }
        if tokio::time::timeout(self.drain_timeout, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.tasks.len(),
                "drain timeout reached; closing the rest"
            );
        }
        if let Some(w) = self.workers.take()
            && tokio::task::spawn_blocking(move || w.join()).await.is_err()
        {
            tracing::warn!("worker threads did not stop cleanly");
        }
    }
}

/// Standalone mode always has a folder, and so its CA files.
fn unreachable_ca() -> Result<CertAuthority, StartError> {
    Err(StartError::Tls(TlsError::Config(
        "no CA: give --ca-cert and --ca-key, a config folder, or run in Kubernetes mode".into(),
    )))
}

/// Kubernetes mode: waits for the source's first snapshot (pods, classes and Connectors listed,
/// credentials asked for once).
async fn first_snapshot(
    c: &Cluster,
    shutdown: &CancellationToken,
) -> Result<(Arc<Snapshot>, tokio::sync::watch::Receiver<Arc<Snapshot>>), StartError> {
    let mut rx = c.source.snapshots.clone();
    tokio::select! {
        r = rx.changed() => r.map_err(|_| StartError::Stopped)?,
        () = shutdown.cancelled() => return Err(StartError::Stopped),
    }
    let first = rx.borrow_and_update().clone();
    Ok((first, rx))
}
