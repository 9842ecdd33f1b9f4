//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one reconciles.
//!
//! The holder renews the Lease every retry period. Another replica takes it over when it has seen
//! the same holder and renew time for longer than the lease duration, measured on its own clock
//! (so clock skew between replicas does not matter), or at once when the holder released it at
//! shutdown. Every write carries the `resourceVersion` it read, so two candidates cannot both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leadership lost: {0}")]
    Lost(String),
}

/// The result of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the Lease now.
    Holding,
    /// Another replica holds it, and it has not expired.
    HeldBy(String),
    /// Someone wrote the Lease between our read and our write.
    Conflict,
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    retry: Duration,
    /// The holder and renew time last seen, and when they were first seen.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        name: &str,
        identity: &str,
        duration: Duration,
        retry: Duration,
    ) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            retry,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Tries until this replica holds the Lease (true) or `shutdown` is cancelled (false).
    /// `reachable` is called after every answer from the API server.
    pub async fn acquire(&mut self, shutdown: &CancellationToken, reachable: impl Fn()) -> bool {
        let mut logged_holder = None;
        loop {
            match self.attempt().await {
                Ok(Attempt::Holding) => {
                    reachable();
                    return true;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    reachable();
                    if logged_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, lease = %self.name, "another replica leads; standing by");
                        logged_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => reachable(),
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "cannot read or write the Lease")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    /// Renews the Lease until `shutdown` (Ok) or until leadership is lost: another replica holds
    /// the Lease, or no renewal succeeded for two thirds of the lease duration.
    pub async fn hold(&mut self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        let deadline = self.duration.mul_f64(2.0 / 3.0);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.retry) => {}
            }
            match self.attempt().await {
                Ok(Attempt::Holding) => renewed = Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return Err(LeaderError::Lost(format!("the Lease is held by {holder}")));
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "cannot renew the Lease"),
            }
            if renewed.elapsed() > deadline {
                return Err(LeaderError::Lost(format!(
                    "no renewal for {:?}",
                    renewed.elapsed()
                )));
            }
        }
    }

    /// Gives the Lease up (at shutdown) so that a standby replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "Lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the Lease"),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "Lease created; leading");
                    Ok(Attempt::Holding)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if let Some(holder) = &holder
            && !mine
        {
            let record = format!("{holder}|{:?}", spec.renew_time.as_ref().map(|t| t.0));
            let first_seen = match &self.observed {
                Some((r, at)) if *r == record => *at,
                _ => {
                    let at = Instant::now();
                    self.observed = Some((record, at));
                    at
                }
            };
            let held_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.duration);
            if first_seen.elapsed() <= held_for {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            tracing::info!(%holder, "the Lease expired; taking it over");
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    tracing::info!(lease = %self.name, identity = %self.identity, "Lease acquired; leading");
                }
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }
}
