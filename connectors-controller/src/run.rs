//! Startup, the servers every replica runs, leader election, what only the leader runs, and
//! shutdown.
//!
//! Every replica: the health and metrics servers, the HTTPS server (agent API, pod webhook,
//! the unified REST API) with its certificate, the CA Secret (created when absent, then followed), and the caches the
//! agent API reads. The leader, while it holds the Lease: the Connector and ConnectorClass
//! controllers, the built-in classes, CA rotation, and the trust bundles of every namespace.

use std::future::ready;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connectors_crd::{Connector, ConnectorClass};
use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::agent_api::AgentApi;
use crate::authorize::AccessChecker;
use crate::bundle::{self, Bundles};
use crate::ca::rotation::{self, Policy};
use crate::ca::store::CaStore;
use crate::caches::WorkloadCaches;
use crate::config::Args;
use crate::context::{Context, Settings};
use crate::events::Events;
use crate::health::{self, Health};
use crate::leader::{LeaderElector, LeaderError};
use crate::metrics::Metrics;
use crate::prober::Prober;
use crate::serving_cert::{self, CertSlot};
use crate::tokens::AgentAuthenticator;
use crate::tracked::Tracked;
use crate::webhook::Webhook;
use crate::{api, builtin_classes, class, connector, https, server};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no Kubernetes client (KUBECONFIG or in-cluster ServiceAccount): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch for signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot read the system roots {} (--system-roots): {source}", .path.display())]
    SystemRoots {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Leadership(#[from] LeaderError),
}

/// What the leader runs beside the controllers.
struct LeaderJobs {
    client: Client,
    ca: Arc<CaStore>,
    bundles: Arc<Bundles>,
    policy: Policy,
    metrics: Arc<Metrics>,
    install_classes: bool,
}

/// Runs until SIGTERM or SIGINT (Ok), or until leadership is lost (Err: the process should exit
/// and be restarted, as a fresh standby).
pub async fn run(args: Args) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let system_roots =
        std::fs::read_to_string(&args.system_roots).map_err(|source| RunError::SystemRoots {
            path: args.system_roots.clone(),
            source,
        })?;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })
    };
    let health_listener = bind(args.health_listen).await?;
    let metrics_listener = bind(args.metrics_listen).await?;
    let https_listener = bind(args.https_listen).await?;
    let servers_stop = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(health::serve(
        health::health_router(health.clone()),
        health_listener,
        servers_stop.clone(),
    ));
    servers.spawn(health::serve(
        health::metrics_router(metrics.clone()),
        metrics_listener,
        servers_stop.clone(),
    ));

    // The cluster CA, the HTTPS certificate and the agent API's caches: every replica.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = Arc::new(CaStore::new(
        client.clone(),
        args.namespace(),
        &args.ca_secret,
        args.ca_validity,
    ));
    {
        let ca = ca.clone();
        let stop = servers_stop.clone();
        servers.spawn(async move { ca.follow(stop).await });
    }
    let slot = Arc::new(CertSlot::default());
    servers.spawn(serving_cert::maintain(
        slot.clone(),
        ca.subscribe(),
        serving_cert::names(
            &args.service_name,
            args.namespace(),
            &args.cluster_domain,
            &args.tls_san,
        ),
        args.serving_cert_validity,
        provider.clone(),
        servers_stop.clone(),
    ));
    let (caches, fill_caches) = WorkloadCaches::start(client.clone(), servers_stop.clone());
    servers.spawn(fill_caches);
    let bundles = Arc::new(Bundles::new(
        client.clone(),
        system_roots,
        ca.subscribe(),
        metrics.clone(),
    ));
    let agent_api = Arc::new(AgentApi {
        client: client.clone(),
        ca: ca.subscribe(),
        caches: caches.clone(),
        tokens: AgentAuthenticator::new(
            client.clone(),
            &args.agent_audience,
            args.agent_service_account.clone(),
            metrics.clone(),
        ),
        access: AccessChecker::new(client.clone(), metrics.clone()),
        metrics: metrics.clone(),
        intermediate_validity: args.intermediate_validity,
    });
    let webhook = Arc::new(Webhook {
        bundles: bundles.clone(),
        metrics: metrics.clone(),
    });
    // The unified REST API: every replica, when `--api` is on.
    let api_routes = if args.api {
        let (routes, fill) = api::start(
            &args,
            client.clone(),
            caches.clone(),
            metrics.clone(),
            provider.clone(),
            servers_stop.clone(),
        );
        servers.spawn(fill);
        Some(routes)
    } else {
        None
    };
    servers.spawn(https::serve(
        https_listener,
        https::tls_config(provider.clone(), slot.clone())?,
        server::router(agent_api, webhook, api_routes),
        servers_stop.clone(),
    ));
    {
        let (health, slot, caches, ca_rx, stop) = (
            health.clone(),
            slot.clone(),
            caches.clone(),
            ca.subscribe(),
            servers_stop.clone(),
        );
        servers.spawn(async move {
            let mut logged = false;
            loop {
                let serving = slot.is_loaded() && caches.synced() && ca_rx.borrow().is_some();
                Health::set(&health.serving, serving);
                if serving && !logged {
                    tracing::info!("HTTPS server ready (cluster CA loaded, caches synced)");
                    logged = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
    }

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        on_signal.cancel();
    });

    let identity = args.identity();
    let ctx = Arc::new(Context {
        client: client.clone(),
        prober: Prober::new(provider, args.probe_timeout),
        events: Events::new(client.clone(), identity.clone()),
        metrics: metrics.clone(),
        tracked: Arc::new(Tracked::new(Some(metrics.clone()))),
        settings: Settings {
            recheck: args.recheck_interval,
            retry: args.retry_interval,
            error_retry: Duration::from_secs(5)
                .min(args.retry_interval.max(Duration::from_millis(500))),
            serve_api: args.api,
        },
    });
    let jobs = LeaderJobs {
        client: client.clone(),
        ca,
        bundles,
        policy: Policy {
            validity: args.ca_validity,
            propagation_delay: args.ca_propagation_delay,
            longest_issued: args.intermediate_validity,
            retire_margin: args.ca_retire_margin,
        },
        metrics: metrics.clone(),
        install_classes: args.install_classes,
    };
    tracing::info!(%identity, leader_elect = args.leader_elect, https = %args.https_listen, "connectors-controller starting");

    let result = if args.leader_elect {
        let mut elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            args.lease_duration,
            args.lease_retry,
        );
        let reachable = {
            let health = health.clone();
            move || Health::set(&health.api_reachable, true)
        };
        if elector.acquire(&shutdown, reachable).await {
            lead(&mut elector, &ctx, &jobs, &health, &args, &shutdown).await
        } else {
            Ok(())
        }
    } else {
        Health::set(&health.leading, true);
        metrics.set_leader(true);
        leading(ctx.clone(), &jobs, health.clone(), &args, shutdown.clone()).await;
        Ok(())
    };

    Health::set(&health.stopping, true);
    servers_stop.cancel();
    while servers.join_next().await.is_some() {}
    tracing::info!("stopped");
    result.map_err(RunError::from)
}

/// Leads while holding the Lease; releases it at shutdown.
async fn lead(
    elector: &mut LeaderElector,
    ctx: &Arc<Context>,
    jobs: &LeaderJobs,
    health: &Arc<Health>,
    args: &Args,
    shutdown: &CancellationToken,
) -> Result<(), LeaderError> {
    Health::set(&health.leading, true);
    ctx.metrics.set_leader(true);
    tracing::info!(identity = %elector.identity(), "leading: reconciling");
    let stop = CancellationToken::new();
    let running = leading(ctx.clone(), jobs, health.clone(), args, stop.clone());
    tokio::pin!(running);
    let held = tokio::select! {
        held = elector.hold(shutdown) => held,
        () = &mut running => Ok(()),
    };
    stop.cancel();
    running.await;
    ctx.metrics.set_leader(false);
    match &held {
        Ok(()) => elector.release().await,
        Err(e) => tracing::error!(error = %e, "stopped reconciling"),
    }
    Health::set(&health.leading, false);
    held
}

/// What the leader runs, until `stop`: the controllers, and the jobs (built-in classes, CA
/// rotation, trust bundles).
async fn leading(
    ctx: Arc<Context>,
    jobs: &LeaderJobs,
    health: Arc<Health>,
    args: &Args,
    stop: CancellationToken,
) {
    let classes = async {
        if jobs.install_classes {
            builtin_classes::install(jobs.client.clone(), stop.clone()).await;
        }
    };
    let rotation = rotation::lead(
        jobs.ca.clone(),
        jobs.policy.clone(),
        jobs.metrics.clone(),
        stop.clone(),
    );
    let bundles = bundle::lead(jobs.bundles.clone(), stop.clone());
    futures_util::future::join4(
        controllers(ctx, health, args, stop.clone()),
        classes,
        rotation,
        bundles,
    )
    .await;
}

/// The Connector and ConnectorClass controllers, until `stop` (then running checks get
/// `--drain-timeout` to finish).
async fn controllers(ctx: Arc<Context>, health: Arc<Health>, args: &Args, stop: CancellationToken) {
    let client = ctx.client.clone();
    let config = controller::Config::default().concurrency(args.concurrency);

    // Connectors: reconciled on a new generation, forgotten on deletion.
    // The first full list marks the caches synced (read from the stream: the store's own
    // readiness future wakes only one waiter, and the controller is that waiter).
    let (reader, writer) = reflector::store::<Connector>();
    let tracked = ctx.tracked.clone();
    let on_sync = health.clone();
    let connectors = watcher(
        Api::<Connector>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .inspect(move |e| {
        if matches!(e, Ok(watcher::Event::InitDone)) {
            Health::set(&on_sync.api_reachable, true);
            if !on_sync
                .synced
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                tracing::info!("Connector cache synced");
            }
        }
    })
    .filter_map(move |e| ready(tracked.filter(e)));

    // A Secret change re-checks the Connectors that name it; only metadata is watched, so no
    // Secret data is held in memory.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let by_secret = reader.clone();
    let secret_mapper = move |s: PartialObjectMeta<Secret>| {
        let ns = s.namespace().unwrap_or_default();
        let name = s.name_any();
        connectors_where(&by_secret, |c| {
            c.namespace().as_deref() == Some(ns.as_str()) && names_secret(c, &name)
        })
    };

    // A class change (or deletion) re-checks the Connectors of that class.
    let class_filter = Tracked::new(None);
    let classes = watcher(
        Api::<ConnectorClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(move |e| ready(class_filter.filter_with_deletions(e)));
    let by_class = reader.clone();
    let class_mapper = move |class: ConnectorClass| {
        let name = class.name_any();
        connectors_where(&by_class, |c| c.spec.connector_class_name == name)
    };

    let connector_controller = Controller::for_stream(connectors, reader)
        .watches_stream(secrets, secret_mapper)
        .watches_stream(classes, class_mapper)
        .with_config(config.clone())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(connector::reconcile, connector::error_policy, ctx.clone())
        .for_each(|r| {
            log_result(r);
            ready(())
        });
    let class_controller = Controller::new(
        Api::<ConnectorClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config)
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(class::reconcile, class::error_policy, ctx.clone())
    .for_each(|r| {
        log_result(r);
        ready(())
    });

    let both = futures_util::future::join(connector_controller, class_controller);
    tokio::pin!(both);
    let drain = args.drain_timeout;
    tokio::select! {
        _ = &mut both => {}
        () = async { stop.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?drain, "checks still running after the drain timeout; stopping anyway");
        }
    }
    Health::set(&health.synced, false);
}

fn connectors_where(
    store: &Store<Connector>,
    keep: impl Fn(&Connector) -> bool,
) -> Vec<ObjectRef<Connector>> {
    store
        .state()
        .iter()
        .filter(|c| keep(c))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Whether a Connector reads the Secret `name` (of its own namespace).
fn names_secret(c: &Connector, name: &str) -> bool {
    let auth = c
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.secret_ref.as_ref())
        .is_some_and(|r| r.name == name);
    let ca = c
        .spec
        .ca_cert_secret_ref
        .as_ref()
        .is_some_and(|r| r.name == name);
    auth || ca
}

fn log_result<K: kube::Resource, E: std::error::Error>(
    r: Result<(ObjectRef<K>, controller::Action), controller::Error<E, watcher::Error>>,
) where
    K::DynamicType: std::fmt::Debug,
{
    match r {
        Ok(_) => {}
        // Logged by the error policy.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(obj)) => {
            tracing::debug!(%obj, "gone before its reconcile");
        }
        Err(e) => tracing::warn!(error = %e, "controller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectors_crd::ConnectorSpec;
    use connectors_crd::connector::{ConnectorAuth, LocalObjectRef, SecretReference};

    #[test]
    fn secret_references() {
        let mut c = Connector::new("c", ConnectorSpec::default());
        assert!(!names_secret(&c, "creds"));
        c.spec.auth = Some(ConnectorAuth {
            secret_ref: Some(SecretReference {
                name: "creds".into(),
                namespace: None,
            }),
            ..Default::default()
        });
        c.spec.ca_cert_secret_ref = Some(LocalObjectRef { name: "ca".into() });
        assert!(names_secret(&c, "creds"));
        assert!(names_secret(&c, "ca"));
        assert!(!names_secret(&c, "other"));
    }
}
