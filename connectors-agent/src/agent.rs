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
use crate::catalog::{self, Catalog};
use crate::config::{Args, OriginalDstSource};
use crate::metrics::Metrics;
use crate::proxy::{FirstFound, OriginalDst, ProxySettings, Shared, SoOriginalDst};
use crate::redirect::{Redirect, RedirectError, RedirectSettings};
use crate::resolve::{ResolveError, Resolver};
use crate::standalone::{self, ConfigFolder, FolderError};
use crate::tls::{CertAuthority, LeafCertificates, TlsError};
use crate::upstream::{UpstreamSettings, Upstreams};
use crate::workers::{self, Workers};

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
}

/// A running agent.
pub struct Agent {
    pub shared: Arc<Shared>,
    drain_timeout: Duration,
    /// The eBPF redirect, when `--redirect-cgroup` is given; detached first at shutdown.
    redirect: Option<Redirect>,
    /// The data-path threads.
    workers: Option<Workers>,
}

impl Agent {
    /// Loads the configuration and starts every listener.
    pub async fn start(args: &Args) -> Result<Self, StartError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (ca_cert, ca_key) = args.ca_paths();
        let (ca, created) = CertAuthority::load_or_create(&ca_cert, &ca_key)?;
        if created {
            tracing::info!(cert = %ca_cert.display(), "created a new proxy CA; workloads must trust this certificate");
        } else {
            tracing::info!(cert = %ca_cert.display(), "loaded the proxy CA");
        }
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
        let shared = Arc::new(Shared {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            leaves: LeafCertificates::new(Arc::new(ca), provider),
            upstreams: upstreams.clone(),
            settings: ProxySettings {
                response_timeout: args.response_timeout,
                ..Default::default()
            },
            metrics: Arc::new(Metrics::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });

        // Configuration first, so the first connection already sees it.
        let mut folder = ConfigFolder::new(&args.config_dir)?;
        let (watch_guard, mut changes) = standalone::watch(&args.config_dir)?;
        folder = apply(&shared, &upstreams, folder, 1).await?;

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
        // The eBPF redirect: attached once the listener it sends connections to is bound.
        let redirect = if args.redirect_cgroups.is_empty() {
            None
        } else {
            let settings = RedirectSettings::new(
                args.redirect_cgroups.clone(),
                &args.redirect_to,
                transparent_addr,
                args.redirect_refresh,
            )?;
            let resolver = upstreams.resolver().clone();
            Some(Redirect::start(settings, shared.clone(), resolver).await?)
        };
        let origin: Option<Arc<dyn OriginalDst>> = match transparent_addr {
            None => None,
            Some(_) => Some(match (args.original_dst, &redirect) {
                (OriginalDstSource::Netfilter, _) | (OriginalDstSource::Auto, None) => {
                    Arc::new(SoOriginalDst)
                }
                (OriginalDstSource::Ebpf, Some(r)) => Arc::new(r.original_dst()?),
                (OriginalDstSource::Ebpf, None) => {
                    return Err(StartError::EbpfSourceWithoutRedirect);
                }
                (OriginalDstSource::Auto, Some(r)) => Arc::new(FirstFound(vec![
                    Arc::new(r.original_dst()?),
                    Arc::new(SoOriginalDst),
                ])),
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

        // Apply every change to the folder.
        let reload_shared = shared.clone();
        tokio::spawn(async move {
            let _guard = watch_guard;
            let mut folder = folder;
            let mut generation = 1;
            loop {
                tokio::select! {
                    changed = changes.recv() => if changed.is_none() { break },
                    () = reload_shared.shutdown.cancelled() => break,
                }
                standalone::settle(&mut changes).await;
                generation += 1;
                folder = match apply(&reload_shared, &upstreams, folder, generation).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(error = %e, "config folder unreadable; stopping reloads");
                        break;
                    }
                };
            }
        });
        ready.store(true, Ordering::Release);
        Ok(Self {
            shared,
            drain_timeout: args.drain_timeout,
            redirect,
            workers: Some(workers),
        })
    }

    /// Stops accepting, lets open connections finish within the drain timeout, then returns.
    pub async fn shutdown(mut self) {
        // New connections go direct from now on, never to a proxy that is going away.
        if let Some(r) = &self.redirect {
            r.stop();
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

/// Reads the folder and swaps in a new catalog. Returns the folder for the next reload.
async fn apply(
    shared: &Arc<Shared>,
    upstreams: &Arc<Upstreams>,
    mut folder: ConfigFolder,
    generation: u64,
) -> Result<ConfigFolder, FolderError> {
    let upstreams = upstreams.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let loaded = folder.load();
        (folder, loaded)
    })
    .await;
    let (folder, loaded) = match joined {
        Ok(pair) => pair,
        Err(e) => {
            return Err(FolderError::Read {
                path: Default::default(),
                source: std::io::Error::other(e.to_string()),
            });
        }
    };
    let (objects, file_problems) = loaded?;
    let counts = standalone::summary(&objects);
    let mut catalog = catalog::build(&objects, &upstreams, generation);
    let mut problems = file_problems;
    problems.append(&mut catalog.problems);
    catalog.problems = problems;
    for p in &catalog.problems {
        tracing::warn!(generation, "config problem: {p}");
    }
    let ready = catalog
        .routes()
        .iter()
        .filter(|r| matches!(r.state, catalog::RouteState::Ready(_)))
        .count();
    tracing::info!(
        generation,
        classes = counts["classes"],
        connectors = counts["connectors"],
        ready,
        secrets = counts["secrets"],
        problems = catalog.problems.len(),
        dir = %folder.dir().display(),
        "configuration applied"
    );
    shared.metrics.config(generation, catalog.problems.len());
    shared.catalog.store(Arc::new(catalog));
    Ok(folder)
}
