//! Where the configuration comes from. A source (the standalone folder today, the Kubernetes
//! API in Kubernetes mode) publishes whole [`Snapshot`]s of objects on a watch channel; [`follow`]
//! turns each into a new catalog generation, which the data path picks up atomically.
//!
//! A source that cannot read its objects keeps retrying and says so in [`SourceHealth`]
//! (`/readyz` answers 503 and `/problems` names the cause) while the last good generation goes on
//! serving.

pub mod kube;
pub mod standalone;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::catalog::{self, Objects, Problem, RouteState};
use crate::proxy::Shared;
use crate::upstream::Upstreams;

/// Everything a source knows at one moment, and the problems it found reading it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub objects: Objects,
    pub problems: Vec<Problem>,
}

/// Whether the source is reading its objects, for `/readyz` and `/problems`.
#[derive(Debug, Default)]
pub struct SourceHealth {
    failing: Mutex<Option<Failure>>,
}

/// A source that has been failing.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Seconds since the Unix epoch of the first failed attempt.
    pub since: u64,
    pub attempts: u32,
    pub reason: String,
}

impl SourceHealth {
    /// Records a failed attempt to read.
    pub fn failed(&self, reason: String) {
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match f.as_mut() {
            Some(f) => {
                f.attempts += 1;
                f.reason = reason;
            }
            None => {
                *f = Some(Failure {
                    since: SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    attempts: 1,
                    reason,
                });
            }
        }
    }

    /// Records a successful read.
    pub fn ok(&self) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The current failure, if the source is failing.
    pub fn failure(&self) -> Option<Failure> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How long to wait before retrying after `attempts` failed reads: 1 s doubling to 30 s.
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// Builds and publishes a catalog generation from every snapshot the source sends, until the
/// sender goes or the agent stops. Returns the last generation applied.
pub async fn follow(
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut generation: u64,
) -> u64 {
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = shared.shutdown.cancelled() => break,
        }
        let snapshot = snapshots.borrow_and_update().clone();
        generation += 1;
        apply(&shared, &upstreams, &snapshot, generation);
    }
    generation
}

/// Builds generation `generation` of the catalog from a snapshot and swaps it in.
pub fn apply(shared: &Shared, upstreams: &Upstreams, snapshot: &Snapshot, generation: u64) {
    let objects = &snapshot.objects;
    let mut catalog = catalog::build(objects, upstreams, generation);
    let mut problems = snapshot.problems.clone();
    problems.append(&mut catalog.problems);
    catalog.problems = problems;
    for p in &catalog.problems {
        tracing::warn!(generation, "config problem: {p}");
    }
    let ready = catalog
        .routes()
        .iter()
        .filter(|r| matches!(r.state, RouteState::Ready(_)))
        .count();
    tracing::info!(
        generation,
        classes = objects.classes.len(),
        connectors = objects.connectors.len(),
        ready,
        secrets = objects.secrets.len(),
        problems = catalog.problems.len(),
        "configuration applied"
    );
    shared.metrics.config(generation, catalog.problems.len());
    shared.catalog.store(Arc::new(catalog));
    shared.generation.send_replace(generation);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(6), Duration::from_secs(30));
        assert_eq!(retry_delay(100), Duration::from_secs(30));
    }

    #[test]
    fn health_counts_attempts_until_ok() {
        let h = SourceHealth::default();
        assert!(h.failure().is_none());
        h.failed("a".into());
        h.failed("b".into());
        let f = h.failure().unwrap();
        assert_eq!((f.attempts, f.reason.as_str()), (2, "b"));
        h.ok();
        assert!(h.failure().is_none());
    }
}
