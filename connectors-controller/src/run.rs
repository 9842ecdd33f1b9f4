//! Startup, leader election, the two controllers (Connector and ConnectorClass), and shutdown.

use std::future::ready;
use std::net::SocketAddr;
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

use crate::config::Args;
use crate::context::{Context, Settings};
use crate::events::Events;
use crate::health::{self, Health};
use crate::leader::{LeaderElector, LeaderError};
use crate::metrics::Metrics;
use crate::prober::Prober;
use crate::tracked::Tracked;
use crate::{class, connector};

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
    #[error(transparent)]
    Leadership(#[from] LeaderError),
}

/// Runs until SIGTERM or SIGINT (Ok), or until leadership is lost (Err: the process should exit
/// and be restarted, as a fresh standby).
pub async fn run(args: Args) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })
    };
    let health_listener = bind(args.health_listen).await?;
    let metrics_listener = bind(args.metrics_listen).await?;
    let servers_stop = CancellationToken::new();
    let servers = tokio::spawn(futures_util::future::join(
        health::serve(
            health::health_router(health.clone()),
            health_listener,
            servers_stop.clone(),
        ),
        health::serve(
            health::metrics_router(metrics.clone()),
            metrics_listener,
            servers_stop.clone(),
        ),
    ));

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        },
    });
    tracing::info!(%identity, leader_elect = args.leader_elect, "connectors-controller starting");

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
            lead(&mut elector, &ctx, &health, &args, &shutdown).await
        } else {
            Ok(())
        }
    } else {
        Health::set(&health.leading, true);
        metrics.set_leader(true);
        controllers(ctx.clone(), health.clone(), &args, shutdown.clone()).await;
        Ok(())
    };

    Health::set(&health.stopping, true);
    servers_stop.cancel();
    let _ = servers.await;
    tracing::info!("stopped");
    result.map_err(RunError::from)
}

/// Reconciles while holding the Lease; releases it at shutdown.
async fn lead(
    elector: &mut LeaderElector,
    ctx: &Arc<Context>,
    health: &Arc<Health>,
    args: &Args,
    shutdown: &CancellationToken,
) -> Result<(), LeaderError> {
    Health::set(&health.leading, true);
    ctx.metrics.set_leader(true);
    tracing::info!(identity = %elector.identity(), "leading: reconciling");
    let stop = CancellationToken::new();
    let running = controllers(ctx.clone(), health.clone(), args, stop.clone());
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
