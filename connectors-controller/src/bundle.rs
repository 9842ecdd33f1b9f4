//! The trust bundles labelled pods mount: the ConfigMap `connectors-ca-bundle` in every
//! namespace (`ca-bundle.crt`: the controller image's system roots then the cluster roots;
//! `ca.crt`: the cluster roots only), and the pod webhook's `caBundle` (the cluster roots).
//!
//! The leader keeps them current (namespaces watched, every root change written at once, and a
//! full pass every [`RESYNC`] to repair edits); the webhook creates a missing ConfigMap on
//! demand before it answers, so a pod never waits for a volume that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::ca::store::CaReceiver;
use crate::metrics::Metrics;

/// The ConfigMap labelled pods mount, in every namespace.
pub const CONFIGMAP: &str = "connectors-ca-bundle";
/// System roots + cluster roots.
pub const BUNDLE_KEY: &str = "ca-bundle.crt";
/// Cluster roots only.
pub const ROOTS_KEY: &str = "ca.crt";
/// The MutatingWebhookConfiguration whose `caBundle` the leader keeps.
pub const WEBHOOK_CONFIGURATION: &str = "connectors-ca-trust";
/// A full pass over every namespace, at least this often.
pub const RESYNC: Duration = Duration::from_secs(300);
/// The webhook configuration is checked this often (it may be installed after the controller).
pub const WEBHOOK_RESYNC: Duration = Duration::from_secs(30);
/// How long the webhook trusts that a namespace has the ConfigMap.
const PRESENT_TTL: Duration = Duration::from_secs(10);
/// Namespaces written at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the cluster CA is not loaded yet")]
    NoCa,
    #[error("{CONFIGMAP} in namespace {namespace}: {source}")]
    Api {
        namespace: String,
        source: kube::Error,
    },
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

pub struct Bundles {
    client: Client,
    system_roots: String,
    ca: CaReceiver,
    metrics: Arc<Metrics>,
    present: quick_cache::sync::Cache<String, Instant>,
}

impl Bundles {
    /// `system_roots`: the PEM bundle put before the cluster roots in `ca-bundle.crt`.
    pub fn new(
        client: Client,
        system_roots: String,
        ca: CaReceiver,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            system_roots,
            ca,
            metrics,
            present: quick_cache::sync::Cache::new(4096),
        }
    }

    /// The ConfigMap's data for the roots now published.
    pub fn data(&self) -> Result<BTreeMap<String, String>, BundleError> {
        let roots = self
            .ca
            .borrow()
            .as_ref()
            .map(|s| s.ca.bundle_pem())
            .ok_or(BundleError::NoCa)?;
        Ok(bundle_data(&self.system_roots, &roots))
    }

    fn object(&self, namespace: &str, data: BTreeMap<String, String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(
                    [
                        ("app.kubernetes.io/part-of", "connectors"),
                        ("app.kubernetes.io/managed-by", "connectors-controller"),
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
                ),
                annotations: Some(
                    [(
                        "connectors.io/description".to_owned(),
                        "Trust of the Connectors cluster CA for labelled pods; written by connectors-controller, edits are overwritten".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    /// Creates the ConfigMap in `namespace` if it is missing (the webhook, before it answers).
    /// An existing one is left to the leader.
    pub async fn ensure_present(&self, namespace: &str) -> Result<(), BundleError> {
        if self
            .present
            .get(namespace)
            .is_some_and(|at| at.elapsed() < PRESENT_TTL)
        {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let err = |source| BundleError::Api {
            namespace: namespace.to_owned(),
            source,
        };
        if api.get_opt(CONFIGMAP).await.map_err(err)?.is_none() {
            let object = self.object(namespace, self.data()?);
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {
                    self.metrics.bundle_write("created");
                    tracing::info!(%namespace, "created {CONFIGMAP} for a labelled pod");
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    self.metrics.bundle_write("error");
                    return Err(err(e));
                }
            }
        }
        self.present.insert(namespace.to_owned(), Instant::now());
        Ok(())
    }

    /// Creates or updates the ConfigMap in `namespace` (the leader).
    pub async fn sync(&self, namespace: &str) -> Result<Outcome, BundleError> {
        let data = self.data()?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let err = |source| BundleError::Api {
            namespace: namespace.to_owned(),
            source,
        };
        let outcome = match api.get_opt(CONFIGMAP).await.map_err(err)? {
            None => match api
                .create(&PostParams::default(), &self.object(namespace, data))
                .await
            {
                Ok(_) => Outcome::Created,
                Err(kube::Error::Api(e)) if e.code == 409 => Outcome::Unchanged,
                Err(e) => return Err(err(e)),
            },
            Some(existing)
                if existing.data.as_ref() == Some(&data) && existing.binary_data.is_none() =>
            {
                Outcome::Unchanged
            }
            Some(existing) => {
                let mut object = self.object(namespace, data);
                object.metadata.resource_version = existing.metadata.resource_version.clone();
                api.replace(CONFIGMAP, &PostParams::default(), &object)
                    .await
                    .map_err(err)?;
                Outcome::Updated
            }
        };
        match outcome {
            Outcome::Created => self.metrics.bundle_write("created"),
            Outcome::Updated => self.metrics.bundle_write("updated"),
            Outcome::Unchanged => {}
        }
        if outcome != Outcome::Unchanged {
            tracing::info!(%namespace, ?outcome, "{CONFIGMAP} written");
        }
        Ok(outcome)
    }

    /// Keeps the webhook configuration's `caBundle` equal to the cluster roots. A missing
    /// configuration is not an error (the webhook is optional to install).
    pub async fn sync_webhook(&self) -> Result<(), kube::Error> {
        let Some(roots) = self.ca.borrow().as_ref().map(|s| s.ca.bundle_pem()) else {
            return Ok(());
        };
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(config) = api.get_opt(WEBHOOK_CONFIGURATION).await? else {
            tracing::debug!(
                "no MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}; nothing to keep"
            );
            return Ok(());
        };
        let wanted = ByteString(roots.into_bytes());
        let mut webhooks = config.webhooks.clone().unwrap_or_default();
        let mut changed = false;
        for w in &mut webhooks {
            if w.client_config.ca_bundle.as_ref() != Some(&wanted) {
                w.client_config.ca_bundle = Some(wanted.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        // Conditional on the version read: a concurrent edit makes this fail, and the next pass
        // writes again.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": config.resource_version()},
            "webhooks": webhooks,
        });
        match api
            .patch(
                WEBHOOK_CONFIGURATION,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics.bundle_write("updated");
                tracing::info!("caBundle of {WEBHOOK_CONFIGURATION} set to the cluster roots");
                Ok(())
            }
            Err(e) => {
                self.metrics.bundle_write("error");
                Err(e)
            }
        }
    }
}

/// `ca-bundle.crt` (system roots, then cluster roots) and `ca.crt` (cluster roots).
pub fn bundle_data(system_roots: &str, cluster_roots: &str) -> BTreeMap<String, String> {
    let mut bundle = system_roots.to_owned();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(cluster_roots);
    [
        (BUNDLE_KEY.to_owned(), bundle),
        (ROOTS_KEY.to_owned(), cluster_roots.to_owned()),
    ]
    .into()
}

/// The leader's loop: every namespace gets the ConfigMap, every root change reaches all of
/// them and the webhook configuration, until `stop`.
pub async fn lead(bundles: Arc<Bundles>, stop: CancellationToken) {
    let mut ca = bundles.ca.clone();
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(bundles.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::pin!(namespaces);
    // Namespaces known, and those being listed (a relist replaces the set).
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut listing: BTreeSet<String> = BTreeSet::new();
    let mut roots = current_roots(&bundles);
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let mut webhook_resync = tokio::time::interval(WEBHOOK_RESYNC);
    let mut listed = false;
    loop {
        let mut pass = false;
        tokio::select! {
            () = stop.cancelled() => return,
            event = namespaces.next() => match event {
                None => return,
                Some(Ok(watcher::Event::Init)) => listing.clear(),
                Some(Ok(watcher::Event::InitApply(ns))) => { listing.insert(ns.name_any()); }
                Some(Ok(watcher::Event::InitDone)) => {
                    known = std::mem::take(&mut listing);
                    listed = true;
                    pass = true;
                }
                Some(Ok(watcher::Event::Apply(ns))) => {
                    let name = ns.name_any();
                    let terminating = ns.metadata.deletion_timestamp.is_some();
                    if known.insert(name.clone()) && !terminating && roots.is_some() {
                        write_one(&bundles, &name).await;
                    }
                }
                Some(Ok(watcher::Event::Delete(ns))) => { known.remove(&ns.name_any()); }
                Some(Err(e)) => tracing::warn!(error = %e, "watching namespaces"),
            },
            changed = ca.changed() => {
                if changed.is_err() { return; }
                let now_roots = current_roots(&bundles);
                if now_roots != roots {
                    roots = now_roots;
                    pass = true;
                }
            }
            _ = resync.tick() => pass = true,
            _ = webhook_resync.tick() => {
                if let Err(e) = bundles.sync_webhook().await {
                    tracing::warn!(error = %e, "cannot keep the caBundle of {WEBHOOK_CONFIGURATION}");
                }
            }
        }
        if pass && listed && roots.is_some() {
            write_all(&bundles, &known, &stop).await;
        }
    }
}

fn current_roots(bundles: &Bundles) -> Option<String> {
    bundles.ca.borrow().as_ref().map(|s| s.ca.bundle_pem())
}

async fn write_one(bundles: &Bundles, namespace: &str) {
    if let Err(e) = bundles.sync(namespace).await {
        bundles.metrics.bundle_write("error");
        log_write_error(&e);
    }
}

fn log_write_error(e: &BundleError) {
    match e {
        // A namespace being deleted refuses new objects.
        BundleError::Api {
            source: kube::Error::Api(s),
            ..
        } if s.code == 403 || s.code == 404 => {
            tracing::debug!(error = %e, "trust bundle not written")
        }
        _ => tracing::warn!(error = %e, "trust bundle not written"),
    }
}

async fn write_all(bundles: &Bundles, namespaces: &BTreeSet<String>, stop: &CancellationToken) {
    let started = Instant::now();
    let writes = futures_util::stream::iter(namespaces.iter().cloned())
        .map(|ns| async move { (ns.clone(), bundles.sync(&ns).await) })
        .buffer_unordered(CONCURRENCY);
    tokio::pin!(writes);
    let (mut written, mut failed) = (0usize, 0usize);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            n = writes.next() => n,
        };
        match next {
            None => break,
            Some((_, Ok(Outcome::Unchanged))) => {}
            Some((_, Ok(_))) => written += 1,
            Some((_, Err(e))) => {
                failed += 1;
                bundles.metrics.bundle_write("error");
                log_write_error(&e);
            }
        }
    }
    if let Err(e) = bundles.sync_webhook().await {
        tracing::warn!(error = %e, "cannot keep the caBundle of {WEBHOOK_CONFIGURATION}");
    }
    tracing::debug!(
        namespaces = namespaces.len(),
        written,
        failed,
        took_ms = started.elapsed().as_millis(),
        "trust bundles checked"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_holds_system_then_cluster_roots() {
        let d = bundle_data("SYSTEM", "CLUSTER\n");
        assert_eq!(d[BUNDLE_KEY], "SYSTEM\nCLUSTER\n");
        assert_eq!(d[ROOTS_KEY], "CLUSTER\n");
        let d = bundle_data("", "CLUSTER\n");
        assert_eq!(d[BUNDLE_KEY], "CLUSTER\n");
    }
}
